"""Device Self-test (admin 14h, OACS bit 4) and the Device Self-test log (06h).

A test runs in the background on an IOThread timer: the short test for
``SHORT_S`` seconds, the extended one for ``EXTENDED_S`` (Identify EDSTT, in
minutes, covers it), with the progress the log shows growing linearly. One test
at a time per controller (DSTO bit 0 clear: per controller, not per subsystem);
starting another while one runs is Device Self-test in Progress.

What is checked, so a result means something: the extended test reads the
tracked-unrecoverable state of every namespace in scope (``nvm_uncorrectable``)
and fails in segment 7 ("data integrity") with the first uncorrectable LBA and
Unrecovered Read Error as diagnostic; the short test checks the controller only
and passes. A fault rule (action ``self-test-fail``) makes the next started test
fail with a chosen result code, segment and failing LBA.

Ending early, as the specification lists: Abort (STC Fh) -> result 1; a
Controller Level Reset aborts a short test (result 2) but not an extended one;
the tested namespace detached or deleted -> 3; Format NVM of it -> 4
(``namespace_formatted``); Sanitize -> 9 (``sanitize_started``). The log keeps
the 20 newest results, newest first.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log
from nvshell.device.nvme import nvm_uncorrectable as unc
from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.spec import BROADCAST_NSID, AdminOpcode, LogPage
from nvshell.device.nvme.status import NvmeError, Status

STC_SHORT = 0x1
STC_EXTENDED = 0x2
STC_ABORT = 0xF
#: Seconds a test runs (plausible for an emulator; the host polls the log).
SHORT_S = 2.0
EXTENDED_S = 10.0
#: Identify EDSTT: extended test time in minutes (rounded up).
EDSTT_MINUTES = max(1, int(-(-EXTENDED_S // 60)))
PROGRESS_TICK_S = 0.25

# Result codes (DSTS bits 3:0).
RESULT_OK = 0x0
RESULT_ABORTED_COMMAND = 0x1
RESULT_ABORTED_RESET = 0x2
RESULT_ABORTED_NS_REMOVED = 0x3
RESULT_ABORTED_FORMAT = 0x4
RESULT_FATAL = 0x5
RESULT_UNKNOWN_SEGMENT = 0x6
RESULT_SEGMENT_FAILED = 0x7
RESULT_ABORTED_UNKNOWN = 0x8
RESULT_ABORTED_SANITIZE = 0x9
RESULT_UNUSED = 0xF
#: Segment of the extended test that checks the media ("data integrity").
SEGMENT_DATA_INTEGRITY = 7
MAX_RESULTS = 20

# Valid Diagnostic Information bits.
VDI_NSID, VDI_FLBA, VDI_SCT, VDI_SC = 1, 2, 4, 8

SELF_TEST_RESULT = Layout("SelfTestResult", [
    (0, "dsts", "B"), (1, "segment", "B"), (2, "vdi", "B"), (4, "poh", "Q"), (12, "nsid", "I"),
    (16, "flba", "Q"), (24, "sct", "B"), (25, "sc", "B"),
], size=28)
SELF_TEST_LOG_HEADER = Layout("SelfTestLogHeader", [(0, "current", "B"), (1, "completion", "B")], size=4)
SELF_TEST_LOG_SIZE = SELF_TEST_LOG_HEADER.size + MAX_RESULTS * SELF_TEST_RESULT.size
_UNUSED_ENTRY = SELF_TEST_RESULT.pack(dsts=RESULT_UNUSED)


@dataclass
class Failure:
    """How a test ends badly (from the media check or a fault rule)."""
    result: int = RESULT_SEGMENT_FAILED
    segment: int = SEGMENT_DATA_INTEGRITY
    nsid: int | None = None
    lba: int | None = None
    status: int | None = None


@dataclass
class _Running:
    code: int
    nsid: int
    started: float
    duration: float
    features: Any
    failure: Failure | None = None
    handle: Any = None


@dataclass
class _State:
    running: _Running | None = None
    results: deque = field(default_factory=lambda: deque(maxlen=MAX_RESULTS))
    #: Set by a fault rule: the next test started fails like this.
    injected: Failure | None = None


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()


def state(ctrl: Any) -> _State:
    st = _STATES.get(ctrl)
    if st is None:
        st = _STATES[ctrl] = _State()
    _check_reset(ctrl, st)
    return st


def _check_reset(ctrl: Any, st: _State) -> None:
    run = st.running
    if run is None or run.features is ctrl.features:
        return
    if run.code == STC_SHORT:
        _finish(ctrl, st, RESULT_ABORTED_RESET)
    else:
        run.features = ctrl.features      # an extended test survives a controller reset


def inject_failure(ctrl: Any, failure: Failure) -> None:
    """Fault rule: the next test started on ``ctrl`` ends with ``failure``."""
    state(ctrl).injected = failure


def _finish(ctrl: Any, st: _State, result: int, failure: Failure | None = None) -> None:
    run = st.running
    if run is None:
        return
    st.running = None
    if run.handle is not None:
        run.handle.cancel()
    vdi = 0
    nsid = flba = sct = sc = 0
    segment = 0
    if failure is not None:
        segment = failure.segment
        if failure.nsid is not None:
            vdi |= VDI_NSID
            nsid = failure.nsid
        if failure.lba is not None:
            vdi |= VDI_FLBA
            flba = failure.lba
        if failure.status is not None:
            vdi |= VDI_SCT | VDI_SC
            sct, sc = failure.status >> 8, failure.status & 0xFF
    elif run.nsid not in (0, BROADCAST_NSID):
        vdi |= VDI_NSID
        nsid = run.nsid
    st.results.appendleft(SELF_TEST_RESULT.pack(
        dsts=(run.code << 4) | result, segment=segment, vdi=vdi, poh=ctrl.stats.power_on_hours,
        nsid=nsid, flba=flba, sct=sct, sc=sc))


def _namespaces_in_scope(ctrl: Any, nsid: int) -> list[Any]:
    if nsid == BROADCAST_NSID:
        return [ctrl.namespaces[n] for n in sorted(ctrl.namespaces)]
    ns = ctrl.namespaces.get(nsid)
    return [ns] if ns is not None else []


def _media_check(ctrl: Any, nsid: int) -> Failure | None:
    """The extended test's data integrity segment: the first uncorrectable LBA, if any."""
    for ns in _namespaces_in_scope(ctrl, nsid):
        for start, _count in unc.uncorrectable(ns):
            return Failure(RESULT_SEGMENT_FAILED, SEGMENT_DATA_INTEGRITY, ns.nsid, start,
                           int(Status.UNRECOVERED_READ_ERROR))
    return None


def _tick(ctrl: Any) -> None:
    st = state(ctrl)
    run = st.running
    if run is None:
        return
    if run.nsid not in (0, BROADCAST_NSID) and run.nsid not in ctrl.namespaces:
        _finish(ctrl, st, RESULT_ABORTED_NS_REMOVED)
        return
    if time.monotonic() - run.started < run.duration:
        _schedule(ctrl, run)
        return
    failure = run.failure
    if failure is None and run.code == STC_EXTENDED:
        failure = _media_check(ctrl, run.nsid)
    _finish(ctrl, st, failure.result if failure else RESULT_OK, failure)
    if failure is not None:
        from nvshell.device.nvme.admin_telemetry import capture_controller
        capture_controller(ctrl, f"device self-test failed: result {failure.result}, segment {failure.segment}")


def _schedule(ctrl: Any, run: _Running) -> None:
    if ctrl.iothread is None:
        return
    remaining = run.duration - (time.monotonic() - run.started)
    run.handle = ctrl.iothread.call_later(max(0.0, min(PROGRESS_TICK_S, remaining)), lambda: _tick(ctrl))


def progress(ctrl: Any) -> tuple[int, int]:
    """(current operation, percent complete) for the log header."""
    st = state(ctrl)
    run = st.running
    if run is None:
        return 0, 0
    done = (time.monotonic() - run.started) / run.duration
    return run.code, min(99, int(done * 100))


def namespace_formatted(ctrl: Any, nsid: int) -> None:
    """Format NVM of ``nsid`` aborts a test that includes it (result 4)."""
    st = state(ctrl)
    if st.running is not None and st.running.nsid in (nsid, BROADCAST_NSID):
        _finish(ctrl, st, RESULT_ABORTED_FORMAT)


def sanitize_started(ctrl: Any) -> None:
    st = state(ctrl)
    if st.running is not None:
        _finish(ctrl, st, RESULT_ABORTED_SANITIZE)


@ADMIN.command(AdminOpcode.DEVICE_SELF_TEST, nsid="optional")
def device_self_test(ctrl: Any, cmd: Command) -> None:
    stc = cmd.cdw10 & 0xF
    nsid = cmd.nsid
    st = state(ctrl)
    if stc == STC_ABORT:
        if st.running is not None:
            _finish(ctrl, st, RESULT_ABORTED_COMMAND)
        return
    if stc not in (STC_SHORT, STC_EXTENDED):
        raise NvmeError(Status.INVALID_FIELD, msg=f"self-test code {stc:#x}")
    if nsid not in (0, BROADCAST_NSID) and cmd.ns is None:
        raise NvmeError(Status.INVALID_NSID)
    if st.running is not None:
        raise NvmeError(Status.DEVICE_SELF_TEST_IN_PROGRESS)
    run = _Running(stc, nsid, time.monotonic(), SHORT_S if stc == STC_SHORT else EXTENDED_S, ctrl.features)
    if st.injected is not None:
        run.failure, st.injected = st.injected, None
    st.running = run
    _schedule(ctrl, run)


def self_test_log(ctrl: Any, cmd: Command) -> bytes:
    st = state(ctrl)
    if st.running is not None and ctrl.iothread is None:
        _tick(ctrl)             # no timers (unit use): progress on demand
    current, percent = progress(ctrl)
    entries = list(st.results)
    return SELF_TEST_LOG_HEADER.pack(current=current, completion=percent) + b"".join(entries) \
        + _UNUSED_ENTRY * (MAX_RESULTS - len(entries))


admin_log.register(LogPage.DEVICE_SELF_TEST, "device-self-test", self_test_log, SELF_TEST_LOG_SIZE)
