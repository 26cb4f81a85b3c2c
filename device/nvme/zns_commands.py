"""Zoned Namespace command set I/O handlers: Zone Management Send/Receive, Zone
Append, and the NVM commands with the zone rules.

``ZONED`` starts as a copy of the NVM table (a zoned namespace supports every
NVM command) and overrides the commands that zones constrain:

* Write, Write Zeroes, Write Uncorrectable, Copy (destination): only at the write pointer of a
  writable zone, never past its capacity; the zone opens implicitly; the write
  pointer advances; a zone written up to its capacity is Full.
* Read, Compare, Verify, Copy (sources): not from an offline zone, not across a
  zone boundary unless the namespace allows cross-zone reads.

The order of checks is QEMU's hw/nvme: MDTS, LBA range, zone rules, then the
data pointer. A zone operation holds the namespace's zone lock from the check
to the write pointer move, so two controllers sharing the namespace cannot both
write at the same write pointer.

The zone commands exist only when the host selected all I/O command sets
(CC.CSS = 110b); with CC.CSS = NVM they are Invalid Opcode, as in the
Commands Supported and Effects log of the NVM command set.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.nvme import nvm, nvm_meta
from nvshell.device.nvme.commands import EFFECT_LBCC, NVM, Command, CommandTable
from nvshell.device.nvme.nvm import COPY_RANGE_F0, check_mdts, check_range, rw_fields
from nvshell.device.nvme.spec import NvmOpcode
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.nvme.zoned import ACTIVE_STATES, OPEN_STATES, REPORT_HEADER, ZoneState

#: Zoned Namespace command set: the NVM commands plus the zone commands.
ZONED = CommandTable("zoned", parent=NVM)

#: CC.CSS value selecting all supported I/O command sets.
CSS_ALL_IOCS = 6

# Zone Management Send: Zone Send Action (CDW13 bits 7:0), Select All (bit 8).
ZSA_CLOSE = 0x01
ZSA_FINISH = 0x02
ZSA_OPEN = 0x03
ZSA_RESET = 0x04
ZSA_OFFLINE = 0x05
ZSA_SET_ZDE = 0x10
SELECT_ALL = 1 << 8

# Zone Management Receive: Zone Receive Action (CDW13 7:0), its filter (15:8), Partial Report (16).
ZRA_REPORT = 0x00
ZRA_EXTENDED_REPORT = 0x01
PARTIAL_REPORT = 1 << 16
#: Reporting Options (ZRASF) -> the state a zone must be in (None: every zone).
REPORT_FILTERS: dict[int, ZoneState | None] = {
    0x0: None, 0x1: ZoneState.EMPTY, 0x2: ZoneState.IMPLICITLY_OPENED, 0x3: ZoneState.EXPLICITLY_OPENED,
    0x4: ZoneState.CLOSED, 0x5: ZoneState.FULL, 0x6: ZoneState.READ_ONLY, 0x7: ZoneState.OFFLINE,
}

#: Zone Send Action -> (model method name, the states Select All applies it to).
SEND_ACTIONS: dict[int, tuple[str, frozenset[ZoneState]]] = {
    ZSA_CLOSE: ("close_zone", OPEN_STATES),
    ZSA_FINISH: ("finish_zone", ACTIVE_STATES),
    ZSA_OPEN: ("open_zone", frozenset({ZoneState.CLOSED})),
    ZSA_RESET: ("reset_zone", ACTIVE_STATES | {ZoneState.FULL}),
    ZSA_OFFLINE: ("offline_zone", frozenset({ZoneState.READ_ONLY})),
}


_WU = NVM.get(NvmOpcode.WRITE_UNCORRECTABLE)
assert _WU is not None, "the NVM table lacks write-uncorrectable"
_NVM_WRITE_UNCORRECTABLE = _WU.handler


def _require_zoned_css(ctrl: Any) -> None:
    if (ctrl.cc >> 4) & 0x7 != CSS_ALL_IOCS:
        raise NvmeError(Status.INVALID_OPCODE, msg="zone commands need CC.CSS = 110b (all I/O command sets)")


def _slba(cmd: Command) -> int:
    return (cmd.cdw11 << 32) | cmd.cdw10


# ------------------------------------------------------------------ reads
def _read_checked(handler: Any, *, mdts: bool = True) -> Any:
    """An NVM read-type handler preceded by the zone read rules."""

    def zoned(ctrl: Any, cmd: Command) -> Any:
        ns = cmd.ns
        slba, nlb = rw_fields(cmd)
        if mdts:
            check_mdts(ctrl, nlb << ns.lbads)
        check_range(ns, slba, nlb)
        ns.zones.check_read(slba, nlb)
        return handler(ctrl, cmd)          # DEFERRED when the backend I/O runs off the IOThread

    zoned.__name__ = f"zoned_{handler.__name__}"
    zoned.__doc__ = f"{handler.__doc__ or handler.__name__} (zone read rules first)"
    return zoned


for _op, _name, _direction, _mdts in ((NvmOpcode.READ, "read", "to-host", True),
                                      (NvmOpcode.COMPARE, "compare", "from-host", True),
                                      (NvmOpcode.VERIFY, "verify", "none", False)):
    _info = NVM.get(_op)
    assert _info is not None, f"the NVM table lacks {_name}"
    ZONED.command(_op, _name, nsid="required", effects=_info.effects, direction=_direction)(
        _read_checked(_info.handler, mdts=_mdts))


# ------------------------------------------------------------------ writes
@ZONED.command(NvmOpcode.FLUSH, "flush", nsid="optional")
def zoned_flush(ctrl: Any, cmd: Command) -> Any:
    """Flush, and make the zone table durable with the data."""
    if cmd.ns is not None:
        cmd.ns.sync()
    return nvm.flush(ctrl, cmd)


def _check_size(ctrl: Any, ns: Any, cmd: Command, nlb: int) -> None:
    """MDTS, counting interleaved metadata of extended LBAs as the NVM handlers do."""
    check_mdts(ctrl, nvm_meta.transfer_length(ns, cmd, nlb) if ns.ms else nlb << ns.lbads)


@ZONED.command(NvmOpcode.WRITE, "write", nsid="required", effects=EFFECT_LBCC, direction="from-host")
def zoned_write(ctrl: Any, cmd: Command) -> Any:
    """Write at the write pointer; NVM's write moves the data (and metadata)."""
    ns = cmd.ns
    slba, nlb = rw_fields(cmd)
    _check_size(ctrl, ns, cmd, nlb)
    check_range(ns, slba, nlb)
    zones = ns.zones
    with zones.lock:
        zone = zones.begin_write(slba, nlb)
        outcome = nvm.write(ctrl, cmd)     # DEFERRED for a file backend: completes when stored
        zones.end_write(zone, nlb)
    return outcome


@ZONED.command(NvmOpcode.ZONE_APPEND, "zone-append", nsid="required", effects=EFFECT_LBCC, direction="from-host")
def zone_append(ctrl: Any, cmd: Command) -> Any:
    """Write at the zone's write pointer; the LBA written is DW0/DW1 of the CQE.

    ZASL is 0 (Identify CNS 06h): the size limit is MDTS, so an append too large
    is Invalid Field like any transfer over MDTS. The write itself is NVM's, at
    the write pointer (PIREMAP needs no action: zoned namespaces carry no PI)."""
    _require_zoned_css(ctrl)
    ns = cmd.ns
    zslba, nlb = rw_fields(cmd)
    _check_size(ctrl, ns, cmd, nlb)
    check_range(ns, zslba, nlb)
    zones = ns.zones
    with zones.lock:
        zone = zones.begin_write(zslba, nlb, append=True)
        slba = zone.wp
        cmd.result, cmd.result_dw1 = slba & 0xFFFFFFFF, slba >> 32   # before: the write may complete later
        cmd.cdw10, cmd.cdw11 = slba & 0xFFFFFFFF, slba >> 32
        try:
            outcome = nvm.write(ctrl, cmd)
        finally:
            cmd.cdw10, cmd.cdw11 = zslba & 0xFFFFFFFF, zslba >> 32
        zones.end_write(zone, nlb)
    return outcome


@ZONED.command(NvmOpcode.WRITE_ZEROES, "write-zeroes", nsid="required", effects=EFFECT_LBCC)
def zoned_write_zeroes(ctrl: Any, cmd: Command) -> Any:
    """Write Zeroes is a write for the zone rules: at the write pointer, which moves."""
    return _write_at_pointer(ctrl, cmd, nvm.write_zeroes)


@ZONED.command(NvmOpcode.WRITE_UNCORRECTABLE, "write-uncorrectable", nsid="required", effects=EFFECT_LBCC)
def zoned_write_uncorrectable(ctrl: Any, cmd: Command) -> Any:
    """Write Uncorrectable writes the blocks (as invalid): at the write pointer, which moves."""
    return _write_at_pointer(ctrl, cmd, _NVM_WRITE_UNCORRECTABLE)


def _write_at_pointer(ctrl: Any, cmd: Command, handler: Any) -> Any:
    """Run the NVM ``handler`` for a command that writes at its zone's write pointer, under the zone
    rules: the zone admits the write first and its pointer moves after it."""
    ns = cmd.ns
    slba, nlb = rw_fields(cmd)
    check_range(ns, slba, nlb)
    zones = ns.zones
    with zones.lock:
        zone = zones.begin_write(slba, nlb)
        outcome = handler(ctrl, cmd)
        zones.end_write(zone, nlb)
    return outcome


@ZONED.command(NvmOpcode.COPY, "copy", nsid="required", effects=EFFECT_LBCC, direction="from-host")
def zoned_copy(ctrl: Any, cmd: Command) -> Any:
    """Copy: the source ranges follow the read rules, the destination the write rules.

    The source range list is read here to learn the total length and check the
    sources; NVM's copy then validates its limits and moves the data."""
    ns = cmd.ns
    sdlba = _slba(cmd)
    nr = (cmd.cdw12 & 0xFF) + 1
    if (cmd.cdw12 >> 8) & 0xF != 0 or nr > ns.msrc:
        return nvm.copy(ctrl, cmd)     # the NVM handler reports the descriptor format / MSRC error
    raw = ctrl.transfer(cmd, nr * COPY_RANGE_F0.size).from_guest()
    total = 0
    zones = ns.zones
    for i in range(nr):
        r = COPY_RANGE_F0.unpack(raw, i * COPY_RANGE_F0.size)
        check_range(ns, r.slba, r.nlb + 1)
        zones.check_read(r.slba, r.nlb + 1)
        total += r.nlb + 1
    check_range(ns, sdlba, total)
    with zones.lock:
        zone = zones.begin_write(sdlba, total)
        outcome = nvm.copy(ctrl, cmd)
        zones.end_write(zone, total)
    return outcome


# ------------------------------------------------------------------ zone management
@ZONED.command(NvmOpcode.ZONE_MANAGEMENT_SEND, "zone-management-send", nsid="required", effects=EFFECT_LBCC,
               direction="from-host")
def zone_mgmt_send(ctrl: Any, cmd: Command) -> None:
    """Close, Finish, Open, Reset, Offline (one zone, or Select All), Set Zone
    Descriptor Extension (one empty zone)."""
    _require_zoned_css(ctrl)
    ns = cmd.ns
    zones = ns.zones
    zsa = cmd.cdw13 & 0xFF
    select_all = bool(cmd.cdw13 & SELECT_ALL)
    slba = _slba(cmd)
    if zsa == ZSA_SET_ZDE:
        if select_all or not zones.zdes:
            raise NvmeError(Status.INVALID_FIELD, msg="set zone descriptor extension: none configured, or Select All")
        zone = zones.zone_at_start(slba)
        data = bytes(ctrl.transfer(cmd, zones.zdes).from_guest())
        with zones.lock:
            zones.set_extension(zone, data)
        return
    entry = SEND_ACTIONS.get(zsa)
    if entry is None:
        raise NvmeError(Status.INVALID_FIELD, msg=f"zone send action {zsa:#x} not supported")
    method, eligible = entry
    act = getattr(zones, method)
    with zones.lock:
        if not select_all:
            zone = zones.zone_at_start(slba)
            if act(zone) is True:           # a reset zone that held data
                ns.release_zone(zone)
            return
        targets = [z for z in zones.zones if z.state in eligible]
        if zsa == ZSA_OPEN and zones.max_open and zones.n_open + len(targets) > zones.max_open:
            raise NvmeError(Status.TOO_MANY_OPEN_ZONES,
                            msg=f"opening {len(targets)} closed zones needs more than {zones.max_open} open")
        for zone in targets:
            if act(zone) is True:
                ns.release_zone(zone)


@ZONED.command(NvmOpcode.ZONE_MANAGEMENT_RECEIVE, "zone-management-receive", nsid="required", direction="to-host")
def zone_mgmt_recv(ctrl: Any, cmd: Command) -> None:
    """Report Zones / Extended Report Zones, filtered by state, partial or not."""
    _require_zoned_css(ctrl)
    ns = cmd.ns
    zones = ns.zones
    slba = _slba(cmd)
    if slba >= ns.nlbas:
        raise NvmeError(Status.LBA_OUT_OF_RANGE, msg=f"report from LBA {slba:#x} beyond {ns.nlbas:#x}")
    zra = cmd.cdw13 & 0xFF
    zrasf = (cmd.cdw13 >> 8) & 0xFF
    if zra not in (ZRA_REPORT, ZRA_EXTENDED_REPORT) or (zra == ZRA_EXTENDED_REPORT and not zones.zdes):
        raise NvmeError(Status.INVALID_FIELD, msg=f"zone receive action {zra:#x} not supported")
    if zrasf not in REPORT_FILTERS:
        raise NvmeError(Status.INVALID_FIELD, msg=f"reporting option {zrasf:#x} not supported")
    size = (cmd.cdw12 + 1) * 4
    if size < REPORT_HEADER.size:
        raise NvmeError(Status.INVALID_FIELD, msg=f"report buffer of {size} bytes is smaller than its header")
    check_mdts(ctrl, size)
    data = zones.report(slba, REPORT_FILTERS[zrasf], bool(cmd.cdw13 & PARTIAL_REPORT),
                        zra == ZRA_EXTENDED_REPORT, size)
    ctrl.transfer(cmd, size).to_guest(data)
