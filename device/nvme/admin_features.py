"""Set Features (09h) and Get Features (0Ah).

Every feature is one ``Feature`` entry in ``FEATURES`` (its getter, setter,
whether it is namespace specific, how many data bytes it moves), so the
capabilities Get Features SEL=3 reports, the NSID checks and the values come
from the same declaration. Other modules register their own features with
``register`` (Keep Alive Timer in ``admin_keepalive``).

Values live in ``ctrl.features`` (a ``Features`` dataclass) so other handlers
read them directly. Nothing is saveable: SV=1 on Set is Feature Identifier Not
Saveable and SEL=saved reports the default (nothing was ever saved). A
controller-wide feature set with an NSID other than 0/FFFFFFFFh is Feature Not
Namespace Specific; Get Features ignores the NSID for those (the spec lets
hosts such as nvme-cli send the block device's NSID). An unknown FID is
Invalid Field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from nvshell.device.layout import Layout
from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.controller import Features
from nvshell.device.nvme.spec import BROADCAST_NSID, AdminOpcode, AsyncEventType, LogPage
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller

FID_ARBITRATION = 0x01
FID_POWER_MANAGEMENT = 0x02
FID_TEMPERATURE_THRESHOLD = 0x04
FID_ERROR_RECOVERY = 0x05
FID_VOLATILE_WRITE_CACHE = 0x06
FID_NUMBER_OF_QUEUES = 0x07
FID_INTERRUPT_COALESCING = 0x08
FID_INTERRUPT_VECTOR_CONFIG = 0x09
FID_WRITE_ATOMICITY = 0x0A
FID_ASYNC_EVENT_CONFIG = 0x0B
FID_TIMESTAMP = 0x0E
FID_KEEP_ALIVE_TIMER = 0x0F
FID_HOST_BEHAVIOR = 0x16
FID_IO_COMMAND_SET_PROFILE = 0x19

SEL_CURRENT, SEL_DEFAULT, SEL_SAVED, SEL_SUPPORTED = 0, 1, 2, 3
#: Get Features SEL=3 result bits.
CAP_SAVEABLE = 1 << 0
CAP_NS_SPECIFIC = 1 << 1
CAP_CHANGEABLE = 1 << 2

#: Timestamp feature data (8 bytes): 48-bit milliseconds, then attributes.
TIMESTAMP = Layout("Timestamp", [("ms_lo", "I"), ("ms_hi", "H"), ("attributes", "B"), ("rsvd", "B")])
HOST_BEHAVIOR_SIZE = 512

#: SMART critical warning bit for temperature, and its AEN information value.
SMART_WARN_TEMPERATURE = 1 << 1
SMART_INFO_TEMPERATURE = 0x01
#: Async Event Configuration bits we can act on: SMART warnings 7:0, NS attribute
#: notices (8), firmware activation (9), telemetry (10), ANA change (11).
AEC_SUPPORTED = 0x0FFF

# ------------------------------------------------------------------ registry
#: ``getter(ctrl, cmd, features, ns) -> DW0``: ``features`` is the current or the
#: default set (SEL), ``ns`` the addressed namespace for namespace-specific ones.
Getter = Callable[["Controller", Command, Features, object], int]
#: ``setter(ctrl, cmd, targets)``: ``targets`` the namespaces a namespace-specific
#: feature applies to (empty for controller-wide ones).
Setter = Callable[["Controller", Command, list], None]
#: Data a feature moves: ``(ctrl, cmd, features) -> bytes`` for Get.
DataGetter = Callable[["Controller", Command, Features], bytes]


@dataclass(frozen=True)
class Feature:
    fid: int
    name: str
    get: Getter
    set: Setter | None
    ns_specific: bool = False
    data: DataGetter | None = None

    @property
    def capabilities(self) -> int:
        return (CAP_NS_SPECIFIC if self.ns_specific else 0) | (CAP_CHANGEABLE if self.set else 0)


FEATURES: dict[int, Feature] = {}


def register(fid: int, name: str, get: Getter, set: Setter | None, *, ns_specific: bool = False,
             data: DataGetter | None = None) -> Feature:
    """Declare a feature (this module, and other modules for theirs)."""
    feature = FEATURES[fid] = Feature(fid, name, get, set, ns_specific, data)
    return feature


def _fid_sel(cmd: Command) -> tuple[int, int]:
    return cmd.cdw10 & 0xFF, (cmd.cdw10 >> 8) & 0x7


def _valid_nsid(ctrl: "Controller", nsid: int) -> bool:
    subsystem = ctrl.subsystem
    limit = subsystem.max_nsid if subsystem is not None else 0xFFFFFFFE
    return 1 <= nsid <= limit


@ADMIN.command(AdminOpcode.GET_FEATURES, direction="to-host")
def get_features(ctrl: "Controller", cmd: Command) -> None:
    fid, sel = _fid_sel(cmd)
    feature = FEATURES.get(fid)
    if feature is None or sel > SEL_SUPPORTED:
        raise NvmeError(Status.INVALID_FIELD)
    ns = None
    if feature.ns_specific:
        if cmd.nsid == BROADCAST_NSID or not _valid_nsid(ctrl, cmd.nsid):
            raise NvmeError(Status.INVALID_NSID)
        ns = ctrl.namespaces.get(cmd.nsid)
        if ns is None:
            raise NvmeError(Status.INVALID_FIELD)
    if sel == SEL_SUPPORTED:
        cmd.result = feature.capabilities
        return
    # Nothing is ever saved, so the saved value is the default one.
    features = ctrl.features if sel == SEL_CURRENT else Features()
    cmd.result = feature.get(ctrl, cmd, features, ns)
    if feature.data is not None:
        payload = feature.data(ctrl, cmd, features)
        ctrl.transfer(cmd, len(payload)).to_guest(payload)


@ADMIN.command(AdminOpcode.SET_FEATURES, direction="from-host")
def set_features(ctrl: "Controller", cmd: Command) -> None:
    fid = cmd.cdw10 & 0xFF
    feature = FEATURES.get(fid)
    if feature is None:
        raise NvmeError(Status.INVALID_FIELD)
    if cmd.cdw10 & (1 << 31):
        raise NvmeError(Status.FEATURE_ID_NOT_SAVEABLE)
    targets: list = []
    if feature.ns_specific:
        if cmd.nsid == BROADCAST_NSID:
            targets = [ctrl.namespaces[n] for n in sorted(ctrl.namespaces)]
        else:
            if not _valid_nsid(ctrl, cmd.nsid):
                raise NvmeError(Status.INVALID_NSID)
            ns = ctrl.namespaces.get(cmd.nsid)
            if ns is None:
                raise NvmeError(Status.INVALID_FIELD)
            targets = [ns]
    elif cmd.nsid not in (0, BROADCAST_NSID):
        if not _valid_nsid(ctrl, cmd.nsid):
            raise NvmeError(Status.INVALID_NSID)
        raise NvmeError(Status.FEATURE_NOT_NS_SPECIFIC)
    if feature.set is None:
        raise NvmeError(Status.FEATURE_NOT_CHANGEABLE)
    feature.set(ctrl, cmd, targets)


# ------------------------------------------------------------ the features
def _num_queues_result(ctrl: "Controller") -> int:
    n = ctrl.config.max_ioqpairs - 1
    return (n << 16) | n


def _get_temp(ctrl: "Controller", cmd: Command, f: Features, ns: object) -> int:
    tmpsel = (cmd.cdw11 >> 16) & 0xF
    thsel = (cmd.cdw11 >> 20) & 0x3
    if thsel > 1:
        raise NvmeError(Status.INVALID_FIELD)
    base = thsel << 20 | tmpsel << 16
    if tmpsel != 0:
        return base   # only the composite temperature has thresholds
    return base | (f.temp_over if thsel == 0 else f.temp_under)


def _get_ivc(ctrl: "Controller", cmd: Command, f: Features, ns: object) -> int:
    iv = cmd.cdw11 & 0xFFFF
    if iv >= ctrl.config.max_intr_vectors:
        raise NvmeError(Status.INVALID_FIELD)
    return iv | (int(f.int_vector_cd.get(iv, False)) << 16)


def _get_error_recovery(ctrl: "Controller", cmd: Command, f: Features, ns: object) -> int:
    return f.error_recovery.get(getattr(ns, "nsid", 0), 0)


def _timestamp_data(ctrl: "Controller", cmd: Command, f: Features) -> bytes:
    ms, origin = f.timestamp_now() if f is ctrl.features else (0, 0)
    return TIMESTAMP.pack(ms_lo=ms & 0xFFFFFFFF, ms_hi=ms >> 32, attributes=origin << 1)


def _set_arbitration(ctrl: "Controller", cmd: Command, targets: list) -> None:
    ctrl.features.arbitration = cmd.cdw11 & 0xFFFFFF07


def _set_power(ctrl: "Controller", cmd: Command, targets: list) -> None:
    ps = cmd.cdw11 & 0x1F
    if ps != 0:      # NPSS = 0: power state 0 only
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.power_state = cmd.cdw11 & 0xFF


def _set_temp(ctrl: "Controller", cmd: Command, targets: list) -> None:
    tmpth = cmd.cdw11 & 0xFFFF
    tmpsel = (cmd.cdw11 >> 16) & 0xF
    thsel = (cmd.cdw11 >> 20) & 0x3
    if thsel > 1:
        raise NvmeError(Status.INVALID_FIELD)
    if tmpsel != 0:
        return   # no separate sensors: accepted and ignored, as QEMU does
    f = ctrl.features
    if thsel == 0:
        f.temp_over = tmpth
    else:
        f.temp_under = tmpth
    stats = ctrl.stats
    if stats.temperature >= f.temp_over or stats.temperature <= f.temp_under:
        stats.critical_warning |= SMART_WARN_TEMPERATURE
        if f.async_event_config & SMART_WARN_TEMPERATURE:
            ctrl.post_async_event(AsyncEventType.SMART, SMART_INFO_TEMPERATURE, LogPage.SMART)
    else:
        stats.critical_warning &= ~SMART_WARN_TEMPERATURE


def _set_error_recovery(ctrl: "Controller", cmd: Command, targets: list) -> None:
    if cmd.cdw11 & (1 << 16):       # DULBE: deallocated blocks are not reported as errors
        raise NvmeError(Status.INVALID_FIELD)
    for ns in targets:
        ctrl.features.error_recovery[ns.nsid] = cmd.cdw11 & 0xFFFF


def _set_vwc(ctrl: "Controller", cmd: Command, targets: list) -> None:
    """Turning the cache off makes every later write durable before its CQE (nvm.py);
    what the cache held so far is flushed now."""
    enable = bool(cmd.cdw11 & 1)
    if ctrl.features.volatile_wc and not enable:
        from nvshell.device.nvme.nvm import flush_ns
        for ns in list(ctrl.namespaces.values()):
            flush_ns(ns)
    ctrl.features.volatile_wc = enable


def _set_num_queues(ctrl: "Controller", cmd: Command, targets: list) -> None:
    nsqr, ncqr = cmd.cdw11 & 0xFFFF, cmd.cdw11 >> 16
    if nsqr == 0xFFFF or ncqr == 0xFFFF:
        raise NvmeError(Status.INVALID_FIELD)
    # Only before any I/O queue exists (the allocation is fixed from then on).
    if ctrl.io_queues_exist:
        raise NvmeError(Status.COMMAND_SEQUENCE_ERROR)
    ctrl.features.num_queues_requested = (nsqr, ncqr)
    cmd.result = _num_queues_result(ctrl)


def _set_coalescing(ctrl: "Controller", cmd: Command, targets: list) -> None:
    ctrl.features.int_coalescing = cmd.cdw11 & 0xFFFF


def _set_ivc(ctrl: "Controller", cmd: Command, targets: list) -> None:
    iv = cmd.cdw11 & 0xFFFF
    if iv >= ctrl.config.max_intr_vectors:
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.int_vector_cd[iv] = bool(cmd.cdw11 & (1 << 16))


def _set_atomicity(ctrl: "Controller", cmd: Command, targets: list) -> None:
    ctrl.features.write_atomicity = cmd.cdw11 & 1


def _set_aec(ctrl: "Controller", cmd: Command, targets: list) -> None:
    ctrl.features.async_event_config = cmd.cdw11 & AEC_SUPPORTED


def _set_timestamp(ctrl: "Controller", cmd: Command, targets: list) -> None:
    data = ctrl.transfer(cmd, TIMESTAMP.size).from_guest()
    ts = TIMESTAMP.unpack(data)
    f = ctrl.features
    f.timestamp_ms = ts.ms_lo | (ts.ms_hi << 32)
    f.timestamp_set_at = time.monotonic()


def _set_host_behavior(ctrl: "Controller", cmd: Command, targets: list) -> None:
    data = bytes(ctrl.transfer(cmd, HOST_BEHAVIOR_SIZE).from_guest())
    if data[0] > 1:     # ACRE: 0 or 1
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.host_behavior = data


register(FID_ARBITRATION, "arbitration", lambda c, cmd, f, ns: f.arbitration, _set_arbitration)
register(FID_POWER_MANAGEMENT, "power-management", lambda c, cmd, f, ns: f.power_state, _set_power)
register(FID_TEMPERATURE_THRESHOLD, "temperature-threshold", _get_temp, _set_temp)
register(FID_ERROR_RECOVERY, "error-recovery", _get_error_recovery, _set_error_recovery, ns_specific=True)
register(FID_VOLATILE_WRITE_CACHE, "volatile-write-cache", lambda c, cmd, f, ns: int(f.volatile_wc), _set_vwc)
register(FID_NUMBER_OF_QUEUES, "number-of-queues", lambda c, cmd, f, ns: _num_queues_result(c), _set_num_queues)
register(FID_INTERRUPT_COALESCING, "interrupt-coalescing", lambda c, cmd, f, ns: f.int_coalescing,
         _set_coalescing)
register(FID_INTERRUPT_VECTOR_CONFIG, "interrupt-vector-config", _get_ivc, _set_ivc)
register(FID_WRITE_ATOMICITY, "write-atomicity", lambda c, cmd, f, ns: f.write_atomicity, _set_atomicity)
register(FID_ASYNC_EVENT_CONFIG, "async-event-config", lambda c, cmd, f, ns: f.async_event_config, _set_aec)
register(FID_TIMESTAMP, "timestamp", lambda c, cmd, f, ns: 0, _set_timestamp, data=_timestamp_data)
register(FID_HOST_BEHAVIOR, "host-behavior", lambda c, cmd, f, ns: 0, _set_host_behavior,
         data=lambda c, cmd, f: f.host_behavior)


def _set_iocs_profile(ctrl: "Controller", cmd: Command, targets: list) -> None:
    """Only combination 0 exists (Identify CNS 1Ch: NVM + Zoned), so it is selected already."""
    if cmd.cdw11 & 0x1FF:
        raise NvmeError(Status.IO_COMMAND_SET_COMBINATION_REJECTED)


register(FID_IO_COMMAND_SET_PROFILE, "io-command-set-profile", lambda c, cmd, f, ns: 0, _set_iocs_profile)
