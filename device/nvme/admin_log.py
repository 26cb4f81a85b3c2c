"""Get Log Page (admin opcode 02h) and the pages every controller has: Supported
Log Pages, Error, SMART/Health (controller-wide and per namespace), Firmware
Slot, Changed Namespace List and Commands Supported and Effects.

Pages are declared in ``LOG_PAGES`` (``register``) with their size and NSID
scope; the modules of optional commands register theirs (self-test, sanitize,
telemetry...), so the Supported Log Pages page and Identify LPA follow from
what is registered.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from nvshell.device.layout import Layout
from nvshell.device.nvme.commands import ADMIN, EFFECT_CSUPP, NVM, Command, CommandTable
from nvshell.device.nvme.spec import BROADCAST_NSID, CSI, AdminOpcode, LogPage
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:  # pragma: no cover
    from nvshell.device.nvme.context import ControllerContext, Namespace
    from nvshell.device.nvme.controller import ErrorLogEntry

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
SUPPORTED_LOG_PAGES_SIZE = 1024
#: Identify LPA bit 0: SMART / Health Information per namespace.
LPA_SMART_PER_NS = 1 << 0

#: No wear model: the spare stays full and nothing is ever used up.
AVAILABLE_SPARE = 100
SPARE_THRESHOLD = 10


def u128(value: int) -> bytes:
    return max(0, int(value)).to_bytes(16, "little")


# ----------------------------------------------------------------- pages
def error_log(ctrl: "ControllerContext") -> bytes:
    """Error Information entries, newest (highest error count) first, as
    ``ErrorLog.entries()`` lists them."""
    return b"".join(_error_entry(e) for e in ctrl.error_log.entries())


def _error_entry(entry: ErrorLogEntry) -> bytes:
    """The 64-byte Error Information entry of a recorded error."""
    # Status Field: bits 15:1 as in a CQE (SC 8:1, SCT 11:9, DNR 15).
    status_field = ((entry.status & 0x7FF) << 1) | (int(entry.dnr) << 15)
    return ERROR_ENTRY.pack(
        error_count=entry.error_count, sqid=entry.sqid, cid=entry.cid, status=status_field,
        param_loc=entry.param_loc, lba=entry.lba, nsid=entry.nsid, cs=entry.cmd_specific)


def smart_log(ctrl: "ControllerContext") -> bytes:
    """SMART / Health Information for the whole controller."""
    stats = ctrl.stats
    return SMART_LOG.pack(
        critical_warning=stats.critical_warning & 0xFF,
        temperature=stats.temperature,
        available_spare=AVAILABLE_SPARE,
        spare_threshold=SPARE_THRESHOLD,
        percentage_used=0,
        data_units_read=u128(stats.data_units_read),
        data_units_written=u128(stats.data_units_written),
        host_read_commands=u128(stats.host_read_commands),
        host_write_commands=u128(stats.host_write_commands),
        controller_busy_time=u128(stats.busy_minutes),
        power_cycles=u128(stats.power_cycles),
        power_on_hours=u128(stats.power_on_hours),
        unsafe_shutdowns=u128(stats.unsafe_shutdowns),
        media_errors=u128(stats.media_errors),
        error_log_entries=u128(ctrl.error_log.error_count),
    )


def fw_slot_log(ctrl: "ControllerContext") -> bytes:
    """Slot 1 (read-only, active) holds the controller's firmware revision."""
    fr = ctrl.config.firmware.encode("ascii", "replace")[:8].ljust(8, b" ")
    return FW_SLOT_LOG.pack(afi=1, frs1=fr)


def changed_ns_list(nsids: Iterable[int]) -> bytes:
    """Up to 1024 changed NSIDs; more than that is reported as FFFFFFFFh alone."""
    chosen = sorted(set(nsids))
    if len(chosen) > CHANGED_NS_MAX:
        chosen = [BROADCAST_NSID]
    return struct.pack(f"<{len(chosen)}I", *chosen).ljust(CHANGED_NS_LIST_SIZE, b"\0")


def effects_log(io: CommandTable | None, admin: CommandTable = ADMIN) -> bytes:
    """Commands Supported and Effects: ACS[256] then IOCS[256], one dword per opcode.

    ``io`` is the I/O command table of the requested command set (None: no I/O
    commands, so IOCS is all zero)."""
    acs = [0] * 256
    iocs = [0] * 256
    for info in admin:
        acs[info.opcode] = EFFECT_CSUPP | info.effects
    if io is not None:
        for info in io:
            iocs[info.opcode] = EFFECT_CSUPP | info.effects
    return struct.pack("<256I256I", *acs, *iocs).ljust(CMD_EFFECTS_SIZE, b"\0")


def io_table(ctrl: "ControllerContext", csi: int) -> CommandTable | None:
    """The I/O commands of command set ``csi`` on ``ctrl``: the NVM or Zoned table,
    else the table of an active namespace of that command set (None if it has none)."""
    if csi == CSI.NVM:
        return NVM
    if csi == CSI.ZONED:
        from nvshell.device.nvme.zns_commands import ZONED   # late: it imports the NVM handlers, which import us
        return ZONED
    return next((ns.commands for ns in ctrl.namespaces.values() if ns.csi == csi), None)


# ---------------------------------------------------------------- registry
#: NSID scopes of a log page: "controller" (NSID 0 or FFFFFFFFh only, anything
#: else is Invalid Field), "namespace" (an active NSID, or FFFFFFFFh for the whole
#: controller; LPA bit 0 for SMART).
SCOPES = ("controller", "namespace")


@dataclass(frozen=True)
class LogPageInfo:
    """One log page: how to build it and what the handler checks before."""

    lid: int
    name: str
    #: ``build(ctrl, cmd) -> bytes``: the whole page (cut by offset and length).
    build: Callable[[Any, Command], bytes]
    #: Nominal size in bytes (an offset at or beyond it is Invalid Field), or a
    #: function of the controller for pages whose size varies.
    size: int | Callable[[Any], int]
    scope: str = "controller"
    #: LPA bits a host may rely on once this page exists.
    lpa: int = 0
    #: ``after(ctrl, cmd, rae)``: what reading the page does (clear it...).
    after: Callable[[Any, Command, bool], None] | None = None
    #: A read without RAE empties the page, so events still queued for it are
    #: answered by that read (``Controller.log_page_read``).
    cleared_by_read: bool = False
    #: ``available(ctrl)``: whether this controller offers the page (OCP pages need ocp=on).
    available: Callable[[Any], bool] | None = None

    def page_size(self, ctrl: "ControllerContext") -> int:
        return self.size(ctrl) if callable(self.size) else self.size


LOG_PAGES: dict[int, LogPageInfo] = {}


def register(lid: int, name: str, build: Callable[[Any, Command], bytes], size: int | Callable[[Any], int], *,
             scope: str = "controller", lpa: int = 0,
             after: Callable[[Any, Command, bool], None] | None = None,
             cleared_by_read: bool = False, available: Callable[[Any], bool] | None = None) -> LogPageInfo:
    """Declare a log page (this module and the modules of other commands' pages)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    info = LOG_PAGES[lid] = LogPageInfo(lid, name, build, size, scope, lpa, after, cleared_by_read, available)
    return info


def lpa_bits() -> int:
    """Identify LPA bits of the registered pages."""
    bits = 0
    for info in LOG_PAGES.values():
        bits |= info.lpa
    return bits


# ---------------------------------------------------------------- handler
@ADMIN.command(AdminOpcode.GET_LOG_PAGE, nsid="optional", direction="to-host")
def get_log_page(ctrl: "ControllerContext", cmd: Command) -> None:
    lid = cmd.cdw10 & 0xFF
    rae = bool(cmd.cdw10 & (1 << 15))
    numd = ((cmd.cdw10 >> 16) & 0xFFFF) | ((cmd.cdw11 & 0xFFFF) << 16)
    length = (numd + 1) * 4
    offset = cmd.cdw12 | (cmd.cdw13 << 32)
    if offset & 3:
        raise NvmeError(Status.INVALID_FIELD)

    info = LOG_PAGES.get(lid)
    if info is None or (info.available is not None and not info.available(ctrl)):
        raise NvmeError(Status.INVALID_LOG_PAGE)
    if cmd.nsid not in (0, BROADCAST_NSID):
        if info.scope == "controller":
            raise NvmeError(Status.INVALID_FIELD, msg=f"log page {lid:#x} is not namespace specific")
        if cmd.ns is None:
            raise NvmeError(Status.INVALID_NSID if not 1 <= cmd.nsid <= _max_nsid(ctrl)
                            else Status.INVALID_FIELD)
    if offset >= info.page_size(ctrl):
        raise NvmeError(Status.INVALID_FIELD)
    # Map (and so check against MDTS) before touching any data: NUMD is 32 bits
    # wide, and a page padded to NUMD would be a 16 GiB allocation for a command
    # that then fails. Past this point ``length`` is within MDTS.
    xfer = ctrl.transfer(cmd, length, allow_sgl=False)
    page = info.build(ctrl, cmd)
    data = page[offset:offset + length]
    xfer.to_guest(data + bytes(length - len(data)))
    if info.after is not None:
        info.after(ctrl, cmd, rae)
    if not rae:
        ctrl.log_page_read(lid, cleared=info.cleared_by_read)


def _max_nsid(ctrl: "ControllerContext") -> int:
    subsystem = ctrl.subsystem
    return subsystem.max_nsid if subsystem is not None else 0xFFFFFFFE


def supported_log_pages(ctrl: "ControllerContext", cmd: Command) -> bytes:
    """Supported Log Pages (00h): one dword per LID, bit 0 LSUPP, bit 1 IOS (the Log
    Page Offset is an offset in bytes for every page here, not an index)."""
    entries = [0] * 256
    for lid, info in LOG_PAGES.items():
        if info.available is None or info.available(ctrl):
            entries[lid] = 1
    return struct.pack("<256I", *entries)


def _changed_ns_after(ctrl: "ControllerContext", cmd: Command, rae: bool) -> None:
    if not rae:
        ctrl.take_changed_namespaces(clear=True)


def _smart(ctrl: "ControllerContext", cmd: Command) -> bytes:
    if cmd.ns is not None:
        from nvshell.device.nvme.admin_smart_ns import namespace_smart_log
        return namespace_smart_log(ctrl, cmd.ns)
    return smart_log(ctrl)


register(LogPage.SUPPORTED_LOG_PAGES, "supported-log-pages", supported_log_pages, SUPPORTED_LOG_PAGES_SIZE)
register(LogPage.ERROR, "error", lambda ctrl, cmd: error_log(ctrl), lambda ctrl: 64 * ctrl.error_log.capacity)
register(LogPage.SMART, "smart", _smart, SMART_LOG.size, scope="namespace", lpa=LPA_SMART_PER_NS)
register(LogPage.FW_SLOT, "firmware-slot", lambda ctrl, cmd: fw_slot_log(ctrl), FW_SLOT_LOG.size)
# Peek at the list when building; clear it only once the data reached the host.
register(LogPage.CHANGED_NS_LIST, "changed-namespace-list",
         lambda ctrl, cmd: changed_ns_list(ctrl.take_changed_namespaces(clear=False)), CHANGED_NS_LIST_SIZE,
         after=_changed_ns_after, cleared_by_read=True)
register(LogPage.CMD_EFFECTS, "commands-supported-and-effects",
         lambda ctrl, cmd: effects_log(io_table(ctrl, (cmd.cdw14 >> 24) & 0xFF)), CMD_EFFECTS_SIZE)
