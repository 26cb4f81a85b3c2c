"""Keep Alive: the Keep Alive Timer feature (0Fh) and the Keep Alive command (18h).

Optional on PCIe, but clients and test suites written for fabrics-capable
targets use it (and an NVMe/TCP transport needs it). Identify KAS = 1 says the
timer has a granularity of 100 ms; a KATO the host sets is rounded up to it
and Get Features reports the rounded value. CTRATT.TBKAS is clear: only Keep
Alive commands restart the timer, not other traffic.

On PCIe (no transport connection to tear down) an expired timer does what the
specification asks of every controller: an Error Information entry with status
Keep Alive Timer Expired, and the controller stops processing commands with
CSTS.CFS set, so the host notices and resets it. The timer starts when the host
sets a non-zero KATO (there is no Connect command on PCIe), restarts with each
Keep Alive command, and stops with KATO = 0 or a controller reset. The fault
action ``keep-alive-expire`` (``fault_injector``) expires it on purpose.

The timer is an IOThread timer that checks a deadline, so the Keep Alive
command itself costs a clock read. The state of one controller is tied to the
``Features`` object it was armed for: a controller reset replaces that object,
which disarms the timer without the reset path knowing about keep alive.
"""

from __future__ import annotations

import logging
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nvshell.device.nvme import admin_features
from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.nvme.status import Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller, Features

log = logging.getLogger(__name__)

#: Identify KAS: Keep Alive granularity in 100 ms units.
KAS = 1
KAS_MS = 100 * KAS
#: Largest KATO (ms) the 32-bit field can carry after rounding up.
KATO_MAX = 0xFFFFFFFF // KAS_MS * KAS_MS


@dataclass
class _Timer:
    features: "Features"
    deadline: float
    handle: Any = None


_TIMERS: "weakref.WeakKeyDictionary[Controller, _Timer]" = weakref.WeakKeyDictionary()


def round_kato(kato_ms: int) -> int:
    """KATO rounded up to the KAS granularity (0 stays 0: no timer)."""
    return min(-(-kato_ms // KAS_MS) * KAS_MS, KATO_MAX)


def _arm(ctrl: "Controller") -> None:
    timer = _TIMERS.get(ctrl)
    if timer is not None and timer.handle is not None:
        timer.handle.cancel()
    kato = ctrl.features.keep_alive_ms
    if not kato:
        _TIMERS.pop(ctrl, None)
        return
    timer = _Timer(ctrl.features, time.monotonic() + kato / 1000.0)
    _TIMERS[ctrl] = timer
    _schedule(ctrl, timer)


def _schedule(ctrl: "Controller", timer: _Timer) -> None:
    if ctrl.iothread is None:
        return      # no timers without an IOThread (unit tests): ``check`` does it on demand
    delay = max(0.0, timer.deadline - time.monotonic())
    timer.handle = ctrl.iothread.call_later(delay, lambda: check(ctrl))


def check(ctrl: "Controller") -> bool:
    """Timer callback: expire if the deadline passed; True if it expired now."""
    timer = _TIMERS.get(ctrl)
    if timer is None:
        return False
    if timer.features is not ctrl.features or not ctrl.enabled or ctrl.fatal_reason:
        _TIMERS.pop(ctrl, None)     # reset (new Features), disabled, or already failed
        return False
    if time.monotonic() < timer.deadline:
        _schedule(ctrl, timer)
        return False
    expire(ctrl, "keep alive timer expired")
    return True


def expire(ctrl: "Controller", reason: str) -> None:
    """What an expired Keep Alive Timer does on PCIe: error log entry, CSTS.CFS."""
    timer = _TIMERS.pop(ctrl, None)
    if timer is not None and timer.handle is not None:
        timer.handle.cancel()
    ctrl.error_log.record(0, 0xFFFF, Status.KEEP_ALIVE_EXPIRED, True)
    from nvshell.device.nvme.admin_telemetry import capture_controller
    capture_controller(ctrl, reason)
    ctrl.fatal(reason)


def armed(ctrl: "Controller") -> bool:
    timer = _TIMERS.get(ctrl)
    return timer is not None and timer.features is ctrl.features


def _set_kato(ctrl: "Controller", cmd: Command, targets: list) -> None:
    ctrl.features.keep_alive_ms = round_kato(cmd.cdw11)
    _arm(ctrl)


admin_features.register(admin_features.FID_KEEP_ALIVE_TIMER, "keep-alive-timer",
                        lambda c, cmd, f, ns: f.keep_alive_ms, _set_kato)


@ADMIN.command(AdminOpcode.KEEP_ALIVE, "keep-alive")
def keep_alive(ctrl: "Controller", cmd: Command) -> None:
    """Restart the timer (a no-op while KATO is 0)."""
    timer = _TIMERS.get(ctrl)
    if timer is not None and timer.features is ctrl.features:
        timer.deadline = time.monotonic() + ctrl.features.keep_alive_ms / 1000.0
