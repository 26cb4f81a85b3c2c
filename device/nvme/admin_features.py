"""Set Features (09h) and Get Features (0Ah).

Values live in ``ctrl.features`` (a ``Features`` dataclass) so other handlers
read them directly. Nothing is saveable: SV=1 on Set is Feature Identifier Not
Saveable, SEL=saved on Get reports the current value, SEL=supported
capabilities reports "changeable" for every feature we implement. An unknown
or unsupported FID is Invalid Field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from nvshell.device.layout import Layout
from nvshell.device.nvme.commands import ADMIN, EFFECT_CCC, Command
from nvshell.device.nvme.controller import Features
from nvshell.device.nvme.spec import AdminOpcode, AsyncEventType, LogPage
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
FID_HOST_BEHAVIOR = 0x16

SEL_CURRENT, SEL_DEFAULT, SEL_SAVED, SEL_SUPPORTED = 0, 1, 2, 3
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

# ------------------------------------------------------------------ getters
Getter = Callable[["Controller", Command, Features], int]
Setter = Callable[["Controller", Command], None]


def _num_queues_result(ctrl: "Controller") -> int:
    n = ctrl.config.max_ioqpairs - 1
    return (n << 16) | n


def _get_temp(ctrl: "Controller", cmd: Command, f: Features) -> int:
    tmpsel = (cmd.cdw11 >> 16) & 0xF
    thsel = (cmd.cdw11 >> 20) & 0x3
    if thsel > 1:
        raise NvmeError(Status.INVALID_FIELD)
    base = thsel << 20 | tmpsel << 16
    if tmpsel != 0:
        return base   # only the composite temperature has thresholds
    return base | (f.temp_over if thsel == 0 else f.temp_under)


def _get_ivc(ctrl: "Controller", cmd: Command, f: Features) -> int:
    iv = cmd.cdw11 & 0xFFFF
    if iv >= ctrl.config.max_intr_vectors:
        raise NvmeError(Status.INVALID_FIELD)
    return iv | (int(f.int_vector_cd.get(iv, False)) << 16)


GETTERS: dict[int, Getter] = {
    FID_ARBITRATION: lambda c, cmd, f: f.arbitration,
    FID_POWER_MANAGEMENT: lambda c, cmd, f: f.power_state,
    FID_TEMPERATURE_THRESHOLD: _get_temp,
    FID_ERROR_RECOVERY: lambda c, cmd, f: f.error_recovery,
    FID_VOLATILE_WRITE_CACHE: lambda c, cmd, f: int(f.volatile_wc),
    FID_NUMBER_OF_QUEUES: lambda c, cmd, f: _num_queues_result(c),
    FID_INTERRUPT_COALESCING: lambda c, cmd, f: f.int_coalescing,
    FID_INTERRUPT_VECTOR_CONFIG: _get_ivc,
    FID_WRITE_ATOMICITY: lambda c, cmd, f: f.write_atomicity,
    FID_ASYNC_EVENT_CONFIG: lambda c, cmd, f: f.async_event_config,
    FID_TIMESTAMP: lambda c, cmd, f: 0,
    FID_HOST_BEHAVIOR: lambda c, cmd, f: 0,
}


def _fid_sel(cmd: Command) -> tuple[int, int]:
    return cmd.cdw10 & 0xFF, (cmd.cdw10 >> 8) & 0x7


@ADMIN.command(AdminOpcode.GET_FEATURES, direction="to-host")
def get_features(ctrl: "Controller", cmd: Command) -> None:
    fid, sel = _fid_sel(cmd)
    getter = GETTERS.get(fid)
    if getter is None or sel > SEL_SUPPORTED:
        raise NvmeError(Status.INVALID_FIELD)
    if sel == SEL_SUPPORTED:
        cmd.result = CAP_CHANGEABLE
        return
    features = Features() if sel == SEL_DEFAULT else ctrl.features   # saved: nothing saved, current
    cmd.result = getter(ctrl, cmd, features)
    if fid == FID_TIMESTAMP:
        ms, origin = features.timestamp_now() if sel != SEL_DEFAULT else (0, 0)
        data = TIMESTAMP.pack(ms_lo=ms & 0xFFFFFFFF, ms_hi=ms >> 32, attributes=origin << 1)
        ctrl.transfer(cmd, TIMESTAMP.size).to_guest(data)
    elif fid == FID_HOST_BEHAVIOR:
        ctrl.transfer(cmd, HOST_BEHAVIOR_SIZE).to_guest(features.host_behavior)


# ------------------------------------------------------------------ setters
def _set_arbitration(ctrl: "Controller", cmd: Command) -> None:
    ctrl.features.arbitration = cmd.cdw11 & 0xFFFFFF07


def _set_power(ctrl: "Controller", cmd: Command) -> None:
    ps = cmd.cdw11 & 0x1F
    if ps != 0:      # NPSS = 0: power state 0 only
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.power_state = cmd.cdw11 & 0xFF


def _set_temp(ctrl: "Controller", cmd: Command) -> None:
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


def _set_error_recovery(ctrl: "Controller", cmd: Command) -> None:
    if cmd.cdw11 & (1 << 16):       # DULBE: deallocated blocks are not reported as errors
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.error_recovery = cmd.cdw11 & 0xFFFF


def _set_vwc(ctrl: "Controller", cmd: Command) -> None:
    ctrl.features.volatile_wc = bool(cmd.cdw11 & 1)


def _set_num_queues(ctrl: "Controller", cmd: Command) -> None:
    nsqr, ncqr = cmd.cdw11 & 0xFFFF, cmd.cdw11 >> 16
    if nsqr == 0xFFFF or ncqr == 0xFFFF:
        raise NvmeError(Status.INVALID_FIELD)
    # Always answer with what is allocated (max_ioqpairs), also after queues exist.
    ctrl.features.num_queues_requested = (nsqr, ncqr)
    cmd.result = _num_queues_result(ctrl)


def _set_coalescing(ctrl: "Controller", cmd: Command) -> None:
    ctrl.features.int_coalescing = cmd.cdw11 & 0xFFFF


def _set_ivc(ctrl: "Controller", cmd: Command) -> None:
    iv = cmd.cdw11 & 0xFFFF
    if iv >= ctrl.config.max_intr_vectors:
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.int_vector_cd[iv] = bool(cmd.cdw11 & (1 << 16))


def _set_atomicity(ctrl: "Controller", cmd: Command) -> None:
    ctrl.features.write_atomicity = cmd.cdw11 & 1


def _set_aec(ctrl: "Controller", cmd: Command) -> None:
    ctrl.features.async_event_config = cmd.cdw11 & AEC_SUPPORTED


def _set_timestamp(ctrl: "Controller", cmd: Command) -> None:
    import time
    data = ctrl.transfer(cmd, TIMESTAMP.size).from_guest()
    ts = TIMESTAMP.unpack(data)
    f = ctrl.features
    f.timestamp_ms = ts.ms_lo | (ts.ms_hi << 32)
    f.timestamp_set_at = time.monotonic()


def _set_host_behavior(ctrl: "Controller", cmd: Command) -> None:
    data = bytes(ctrl.transfer(cmd, HOST_BEHAVIOR_SIZE).from_guest())
    if data[0] > 1:     # ACRE: 0 or 1
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.features.host_behavior = data


SETTERS: dict[int, Setter] = {
    FID_ARBITRATION: _set_arbitration,
    FID_POWER_MANAGEMENT: _set_power,
    FID_TEMPERATURE_THRESHOLD: _set_temp,
    FID_ERROR_RECOVERY: _set_error_recovery,
    FID_VOLATILE_WRITE_CACHE: _set_vwc,
    FID_NUMBER_OF_QUEUES: _set_num_queues,
    FID_INTERRUPT_COALESCING: _set_coalescing,
    FID_INTERRUPT_VECTOR_CONFIG: _set_ivc,
    FID_WRITE_ATOMICITY: _set_atomicity,
    FID_ASYNC_EVENT_CONFIG: _set_aec,
    FID_TIMESTAMP: _set_timestamp,
    FID_HOST_BEHAVIOR: _set_host_behavior,
}


@ADMIN.command(AdminOpcode.SET_FEATURES, effects=EFFECT_CCC, direction="from-host")
def set_features(ctrl: "Controller", cmd: Command) -> None:
    fid = cmd.cdw10 & 0xFF
    setter = SETTERS.get(fid)
    if setter is None:
        raise NvmeError(Status.INVALID_FIELD)
    if cmd.cdw10 & (1 << 31):
        raise NvmeError(Status.FEATURE_ID_NOT_SAVEABLE)
    setter(ctrl, cmd)
