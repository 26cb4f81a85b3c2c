"""Get Log Page (admin opcode 02h): Error, SMART/Health, Firmware Slot, Changed
Namespace List and Commands Supported and Effects.

Every page is built whole as bytes (they are small) and then cut by the Log
Page Offset and the requested length: LPA bit 2 (extended data) promises hosts
they may read a page in pieces. Bytes requested beyond the end of a page read
as zero, which is what hosts reading a fixed-size buffer expect.

Reading a page is also what re-enables an Asynchronous Event of the matching
type (the spec's "event masked until the log page is read"), so each handler
tells the controller via ``ctrl.log_page_read(lid)`` unless the host set RAE
(Retain Asynchronous Event). The Changed Namespace List is cleared by a read
without RAE.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Iterable

from device.layout import Layout
from device.nvme.commands import ADMIN, EFFECT_CSUPP, NVM, Command, CommandTable
from device.nvme.spec import CSI, LogPage
from device.nvme.status import NvmeError, Status

BROADCAST_NSID = 0xFFFFFFFF

ERROR_ENTRY = Layout("ErrorInformationEntry", [
    (0, "error_count", "Q"), (8, "sqid", "H"), (10, "cid", "H"), (12, "status", "H"),
    (14, "param_loc", "H"), (16, "lba", "Q"), (24, "nsid", "I"), (28, "vs", "B"),
    (29, "trtype", "B"), (32, "cs", "Q"), (40, "trtype_specific", "H"),
], size=64)

SMART_LOG = Layout("SmartHealthLog", [
    (0, "critical_warning", "B"), (1, "temperature", "H"), (3, "available_spare", "B"),
    (4, "spare_threshold", "B"), (5, "percentage_used", "B"), (6, "endurance_cw", "B"),
    (32, "data_units_read", "16s"), (48, "data_units_written", "16s"),
    (64, "host_read_commands", "16s"), (80, "host_write_commands", "16s"),
    (96, "controller_busy_time", "16s"), (112, "power_cycles", "16s"),
    (128, "power_on_hours", "16s"), (144, "unsafe_shutdowns", "16s"),
    (160, "media_errors", "16s"), (176, "error_log_entries", "16s"),
    (192, "warning_temp_time", "I"), (196, "critical_temp_time", "I"),
    (200, "temp_sensors", "16s"),
], size=512)

FW_SLOT_LOG = Layout("FirmwareSlotLog", [
    (0, "afi", "B"), (8, "frs1", "8s"), (16, "frs2", "8s"), (24, "frs3", "8s"), (32, "frs4", "8s"),
    (40, "frs5", "8s"), (48, "frs6", "8s"), (56, "frs7", "8s"),
], size=512)

CHANGED_NS_LIST_SIZE = 4096
CHANGED_NS_MAX = CHANGED_NS_LIST_SIZE // 4
CMD_EFFECTS_SIZE = 4096

#: Composite temperature reported (kelvin): 50 C, below WCTEMP (0x157).
COMPOSITE_TEMPERATURE = 0x143
AVAILABLE_SPARE = 100
SPARE_THRESHOLD = 10


def u128(value: int) -> bytes:
    return max(0, int(value)).to_bytes(16, "little")


def _stat(stats: Any, *names: str, default: int = 0) -> int:
    """First of ``names`` present on the controller's stats (attribute or dict key)."""
    for name in names:
        if isinstance(stats, dict):
            if name in stats:
                return int(stats[name])
            continue
        value = getattr(stats, name, None)
        if value is not None and not callable(value):
            return int(value)
    return default


# ----------------------------------------------------------------- pages
def error_log(ctrl: Any) -> bytes:
    """Error Information entries, newest (highest error count) first."""
    entries = [_error_entry(e) for e in _iter_errors(getattr(ctrl, "error_log", None))]
    entries.sort(key=lambda e: e[0], reverse=True)
    return b"".join(raw for _, raw in entries)


def _iter_errors(log: Any) -> Iterable[Any]:
    if log is None:
        return []
    for name in ("entries", "records"):
        value = getattr(log, name, None)
        if value is not None:
            return list(value() if callable(value) else value)
    try:
        return list(log)
    except TypeError:
        return []


def _error_entry(entry: Any) -> tuple[int, bytes]:
    """(error count, 64 bytes) from a recorded error: raw bytes, a dict or an object."""
    if isinstance(entry, (bytes, bytearray, memoryview)):
        raw = bytes(entry[:64]).ljust(64, b"\0")
        return ERROR_ENTRY.unpack(raw).error_count, raw
    get: Callable[[str], Any]
    if isinstance(entry, dict):
        get = entry.get
    else:
        get = lambda name: getattr(entry, name, None)  # noqa: E731

    def field(*names: str, default: int = 0) -> int:
        for name in names:
            value = get(name)
            if value is not None:
                return int(value)
        return default
    count = field("error_count", "count", "seq")
    status = field("status")
    status_field = field("status_field")
    if not status_field:
        # Error entry Status Field: bits 15:1 as in a CQE (SC 8:1, SCT 11:9, DNR 15).
        status_field = ((status & 0x7FF) << 1) | (int(bool(get("dnr"))) << 15)
    raw = ERROR_ENTRY.pack(
        error_count=count, sqid=field("sqid"), cid=field("cid"), status=status_field & 0xFFFF,
        param_loc=field("param_loc", "parameter_error_location", default=0xFFFF),
        lba=field("lba"), nsid=field("nsid"), cs=field("cmd_specific", "cs", "command_specific"))
    return count, raw


def smart_log(ctrl: Any) -> bytes:
    """SMART / Health Information for the whole controller."""
    stats = getattr(ctrl, "stats", None)
    bytes_read = _stat(stats, "bytes_read", "read_bytes")
    bytes_written = _stat(stats, "bytes_written", "write_bytes")
    # Data Units: thousands of 512-byte units, rounded up.
    units_read = _stat(stats, "data_units_read", default=-(-bytes_read // 512_000))
    units_written = _stat(stats, "data_units_written", default=-(-bytes_written // 512_000))
    warning = _stat(stats, "critical_warning")
    if not warning:
        warning = int(getattr(getattr(ctrl, "config", None), "smart_critical_warning", 0) or 0)
    errors = _stat(stats, "error_log_entries", "errors", "error_count")
    if not errors:
        log = getattr(ctrl, "error_log", None)
        errors = _stat(log, "total", "count", "error_count")
    return SMART_LOG.pack(
        critical_warning=warning & 0xFF,
        temperature=_stat(stats, "temperature", default=COMPOSITE_TEMPERATURE),
        available_spare=_stat(stats, "available_spare", default=AVAILABLE_SPARE),
        spare_threshold=SPARE_THRESHOLD,
        percentage_used=min(_stat(stats, "percentage_used"), 255),
        data_units_read=u128(units_read),
        data_units_written=u128(units_written),
        host_read_commands=u128(_stat(stats, "host_read_commands", "read_commands")),
        host_write_commands=u128(_stat(stats, "host_write_commands", "write_commands")),
        controller_busy_time=u128(_stat(stats, "controller_busy_time", "busy_minutes")),
        power_cycles=u128(_stat(stats, "power_cycles", default=1)),
        power_on_hours=u128(_stat(stats, "power_on_hours")),
        unsafe_shutdowns=u128(_stat(stats, "unsafe_shutdowns")),
        media_errors=u128(_stat(stats, "media_errors")),
        error_log_entries=u128(errors),
    )


def fw_slot_log(ctrl: Any) -> bytes:
    """Slot 1 (read-only, active) holds the controller's firmware revision."""
    fr = str(getattr(ctrl.config, "firmware", "1.0")).encode("ascii", "replace")[:8].ljust(8, b" ")
    return FW_SLOT_LOG.pack(afi=1, frs1=fr)


def changed_ns_list(nsids: Iterable[int]) -> bytes:
    """Up to 1024 changed NSIDs; more than that is reported as FFFFFFFFh alone."""
    chosen = sorted(set(nsids))
    if len(chosen) > CHANGED_NS_MAX:
        chosen = [BROADCAST_NSID]
    return struct.pack(f"<{len(chosen)}I", *chosen).ljust(CHANGED_NS_LIST_SIZE, b"\0")


def _changed_namespaces(ctrl: Any, clear: bool) -> list[int]:
    """The controller's Changed NS List, optionally cleared (no RAE)."""
    take = getattr(ctrl, "take_changed_namespaces", None)
    if callable(take):
        return list(take(clear))
    for name in ("changed_namespaces", "changed_nsids", "changed_ns"):
        store = getattr(ctrl, name, None)
        if store is not None:
            nsids = list(store)
            if clear:
                store.clear()
            return nsids
    return []


def effects_log(csi: int, admin: CommandTable = ADMIN, io: CommandTable | None = None) -> bytes:
    """Commands Supported and Effects: ACS[256] then IOCS[256], one dword per opcode."""
    acs = [0] * 256
    iocs = [0] * 256
    for info in admin:
        acs[info.opcode] = EFFECT_CSUPP | info.effects
    table = io if io is not None else _io_table(csi)
    if table is not None:
        for info in table:
            iocs[info.opcode] = EFFECT_CSUPP | info.effects
    return struct.pack("<256I256I", *acs, *iocs).ljust(CMD_EFFECTS_SIZE, b"\0")


def _io_table(csi: int) -> CommandTable | None:
    if csi == CSI.NVM:
        return NVM
    if csi == CSI.ZONED:
        try:
            from device.nvme import zoned  # type: ignore[attr-defined]
        except ImportError:
            return None
        return getattr(zoned, "ZONED", None)
    return None


# ---------------------------------------------------------------- handler
@ADMIN.command(0x02, "get-log-page", nsid="optional", direction="to-host")
def get_log_page(ctrl: Any, cmd: Command) -> None:
    lid = cmd.cdw10 & 0xFF
    rae = bool(cmd.cdw10 & (1 << 15))
    numd = ((cmd.cdw10 >> 16) & 0xFFFF) | ((cmd.cdw11 & 0xFFFF) << 16)
    length = (numd + 1) * 4
    offset = cmd.cdw12 | (cmd.cdw13 << 32)
    csi = (cmd.cdw14 >> 24) & 0xFF
    if offset & 3:
        raise NvmeError(Status.INVALID_FIELD)

    if lid == LogPage.ERROR:
        page = error_log(ctrl)
        size = 64 * max(1, error_log_capacity(ctrl))
    elif lid == LogPage.SMART:
        if cmd.nsid not in (0, BROADCAST_NSID):  # LPA bit 0 clear: no per-namespace SMART
            raise NvmeError(Status.INVALID_FIELD)
        page = smart_log(ctrl)
        size = SMART_LOG.size
    elif lid == LogPage.FW_SLOT:
        page = fw_slot_log(ctrl)
        size = FW_SLOT_LOG.size
    elif lid == LogPage.CHANGED_NS_LIST:
        size = CHANGED_NS_LIST_SIZE
        # Peek now, clear only once the data reached the host.
        page = changed_ns_list(_changed_namespaces(ctrl, clear=False))
    elif lid == LogPage.CMD_EFFECTS:
        page = effects_log(csi)
        size = CMD_EFFECTS_SIZE
    else:
        raise NvmeError(Status.INVALID_LOG_PAGE)
    if offset >= size:
        raise NvmeError(Status.INVALID_FIELD)

    data = page[offset:offset + length]
    data = data + bytes(length - len(data))
    ctrl.transfer(cmd, length, allow_sgl=False).to_guest(data)
    if not rae:
        if lid == LogPage.CHANGED_NS_LIST:
            _changed_namespaces(ctrl, clear=True)
        ctrl.log_page_read(lid)


def error_log_capacity(ctrl: Any) -> int:
    """Entries the Error Information log holds (Identify reports ELPE = this - 1)."""
    log = getattr(ctrl, "error_log", None)
    for name in ("capacity", "size", "maxlen"):
        value = getattr(log, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 64
