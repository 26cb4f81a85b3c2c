"""Sanitize (admin 84h, SANICAP) and the Sanitize Status log page (81h).

Supported: Block Erase (every LBA of every namespace of the subsystem
deallocated: it reads as zeroes) and Overwrite (the 32-bit pattern OVRPAT,
``OWPASS`` passes, inverted between passes with OIPBP). Crypto Erase is not
offered: nothing is encrypted, so claiming it would be untrue. No-Deallocate
After Sanitize (NDAS) is accepted for Overwrite (nothing is deallocated
anyway) and refused for Block Erase, which is deallocation (SANICAP.NDI).

The operation is subsystem wide and runs in the background on the IOThread of
the controller that started it, a chunk per tick, at least ``MIN_SECONDS``
long so a host sees it in progress. While it runs every controller of the
subsystem refuses I/O and the admin commands the specification does not
allow, with Sanitize In Progress (``ctrl.admission``); the Sanitize Status log
shows SPROG (progress in 1/65536) and SSTAT. A Controller Level Reset does not
stop it: the operation restarts where it was (the specification's "resumes
after a reset"), and the log keeps saying "in progress" until it completes.
A second Sanitize while one runs is Sanitize In Progress; Exit Failure Mode
with no failure recorded completes without action.

Completion: SSTAT "completed successfully" with the overwrite pass count,
SPROG FFFFh, the Persistent Event Log's Sanitize Start/Completion events, the
tracked-unrecoverable LBAs cleared, and a self-test in progress aborted
(result 9).

Global Data Erased (SSTAT bit 8) says that no user data has been written since
the most recent successful sanitize, or, if there was none, since the NVM
subsystem was made (for nvshell: since it started; a namespace brought in with
data, such as a file written by an earlier run, counts as written). It is worked
out when the log is read, so the data path pays nothing: a successful sanitize
records each controller's SMART Host Write Commands count (every command that
writes user data: Write, Write Zeroes, Write Uncorrectable, Copy, Zone Append) and
the namespaces it erased; the bit is set while no controller's count has moved
since and no namespace added since holds data. Controllers are remembered from
their first enable, so one that wrote and was removed still clears the bit.
Commands that only remove data (Format NVM, Deallocate, Namespace Management)
write none and leave the bit as it was. Nothing of this survives a restart of
nvshell (a power cycle): the log then says "never sanitized" and the bit is
recomputed from the namespaces' contents.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log, admin_pel, admin_selftest
from nvshell.device.nvme import nvm_uncorrectable as unc
from nvshell.device.nvme.commands import ADMIN, EFFECT_LBCC, EFFECT_NCC, Command
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import AdminOpcode, LogPage
from nvshell.device.nvme.status import NvmeError, Status

SANACT_EXIT_FAILURE = 0b001
SANACT_BLOCK_ERASE = 0b010
SANACT_OVERWRITE = 0b011
SANACT_CRYPTO_ERASE = 0b100
#: Identify SANICAP: Block Erase (1), Overwrite (2); NDI (29): no-deallocate is
#: inhibited for Block Erase (refused, below).
SANICAP = (1 << 1) | (1 << 2)
#: Bytes a tick erases or overwrites, and the shortest operation (seconds).
CHUNK = 8 << 20
TICK_S = 0.05
MIN_SECONDS = 1.0

SSTAT_NEVER, SSTAT_OK, SSTAT_IN_PROGRESS, SSTAT_FAILED, SSTAT_OK_NDAS = 0, 1, 2, 3, 4
#: SSTAT bit 8, Global Data Erased.
SSTAT_GDE = 1 << 8

SANITIZE_LOG = Layout("SanitizeStatusLog", [
    (0, "sprog", "H"), (2, "sstat", "H"), (4, "scdw10", "I"), (8, "eto", "I"), (12, "etbe", "I"),
    (16, "etce", "I"), (20, "etond", "I"), (24, "etbend", "I"), (28, "etcend", "I"),
], size=512)
NO_ESTIMATE = 0xFFFFFFFF

#: Admin commands a controller still processes while a sanitize runs (the rest, and
#: every I/O command, get Sanitize In Progress).
ALLOWED_ADMIN = frozenset({
    AdminOpcode.DELETE_IO_SQ, AdminOpcode.CREATE_IO_SQ, AdminOpcode.GET_LOG_PAGE, AdminOpcode.DELETE_IO_CQ,
    AdminOpcode.CREATE_IO_CQ, AdminOpcode.IDENTIFY, AdminOpcode.ABORT, AdminOpcode.SET_FEATURES,
    AdminOpcode.GET_FEATURES, AdminOpcode.ASYNC_EVENT_REQUEST, AdminOpcode.KEEP_ALIVE, AdminOpcode.SANITIZE,
    AdminOpcode.DOORBELL_BUFFER_CONFIG,
})


@dataclass
class _Operation:
    sanact: int
    cdw10: int
    pattern: bytes
    passes: int
    invert: bool
    #: (namespace, byte offset done) still to do, and bytes in total.
    todo: list = field(default_factory=list)
    total: int = 0
    done: int = 0
    started: float = 0.0
    ctrl: Any = None


@dataclass
class _SubsystemState:
    sstat: int = SSTAT_NEVER
    sprog: int = 0xFFFF
    scdw10: int = 0
    passes_done: int = 0
    running: _Operation | None = None
    #: Global Data Erased bookkeeping since the last successful sanitize (or power-on):
    #: id(SmartStats) -> (stats, Host Write Commands then), for every controller seen;
    #: the namespaces that held no user data then; and whether data has been seen since.
    writes: dict = field(default_factory=dict)
    erased: "weakref.WeakSet[Any]" = field(default_factory=weakref.WeakSet)
    data_written: bool = False


_STATES: "weakref.WeakKeyDictionary[Any, _SubsystemState]" = weakref.WeakKeyDictionary()


def _owner(ctrl: Any) -> Any:
    return ctrl.subsystem if ctrl.subsystem is not None else ctrl


def _state(ctrl: Any) -> _SubsystemState:
    owner = _owner(ctrl)
    st = _STATES.get(owner)
    if st is None:
        st = _STATES[owner] = _SubsystemState()
    return st


def _controllers(ctrl: Any) -> list[Any]:
    subsys = ctrl.subsystem
    return list(subsys.controllers.values()) if subsys is not None else [ctrl]


def _admission(cmd: Command) -> int:
    """``ctrl.admission`` while a sanitize runs: the status to refuse ``cmd`` with, or 0."""
    if cmd.sqid == 0 and cmd.opcode in ALLOWED_ADMIN:
        return 0
    return int(Status.SANITIZE_IN_PROGRESS)


def _set_admission(ctrl: Any, on: bool) -> None:
    for c in _controllers(ctrl):
        value = _admission if on else None
        if c.iothread is None or c.iothread.in_thread() or not c.iothread.running:
            c.admission = value
        else:
            c.iothread.submit(setattr, c, "admission", value)


def in_progress(ctrl: Any) -> bool:
    return _state(ctrl).running is not None


@ADMIN.command(AdminOpcode.SANITIZE, effects=EFFECT_LBCC | EFFECT_NCC)
def sanitize(ctrl: Any, cmd: Command) -> None:
    cdw10 = cmd.cdw10
    sanact = cdw10 & 0x7
    owpass = (cdw10 >> 4) & 0xF
    oipbp = bool(cdw10 & (1 << 8))
    ndas = bool(cdw10 & (1 << 9))
    st = _state(ctrl)
    if st.running is not None:
        raise NvmeError(Status.SANITIZE_IN_PROGRESS)
    if sanact == SANACT_EXIT_FAILURE:
        if st.sstat == SSTAT_FAILED:
            st.sstat = SSTAT_NEVER
        return
    if sanact == SANACT_CRYPTO_ERASE or sanact not in (SANACT_BLOCK_ERASE, SANACT_OVERWRITE):
        raise NvmeError(Status.INVALID_FIELD, msg=f"sanitize action {sanact:#b} not supported")
    if sanact == SANACT_BLOCK_ERASE and ndas:
        raise NvmeError(Status.INVALID_FIELD, msg="block erase deallocates: no-deallocate refused (NDI)")
    passes = (owpass or 16) if sanact == SANACT_OVERWRITE else 0
    pattern = cmd.cdw11.to_bytes(4, "little")
    subsys = ctrl.subsystem
    namespaces = list(subsys.namespaces.values()) if subsys is not None else list(ctrl.namespaces.values())
    op = _Operation(sanact, cdw10, pattern, passes, oipbp, started=time.monotonic(), ctrl=ctrl)
    for p in range(max(1, passes)):
        for ns in namespaces:
            op.todo.append([ns, 0, p])
            op.total += ns.size
    st.running, st.sstat, st.sprog, st.scdw10, st.passes_done = op, SSTAT_IN_PROGRESS, 0, cdw10, 0
    _set_admission(ctrl, True)
    for c in _controllers(ctrl):
        admin_selftest.sanitize_started(c)
    admin_pel.sanitize_start(ctrl, SANICAP, cdw10, cmd.cdw11)
    _schedule(op)


def _schedule(op: _Operation) -> None:
    iothread = op.ctrl.iothread
    if iothread is None:
        while _step(op):
            pass
        return
    iothread.call_later(TICK_S, lambda: _tick(op))


def _tick(op: _Operation) -> None:
    if _step(op):
        _schedule(op)


def _step(op: _Operation) -> bool:
    """Do one chunk; True while there is more (or the minimum time is not over)."""
    st = _state(op.ctrl)
    if op.todo:
        item = op.todo[0]
        ns, offset, p = item
        n = min(CHUNK, ns.size - offset)
        try:
            if op.sanact == SANACT_BLOCK_ERASE:
                ns.backend.discard(offset, n)
            else:
                pattern = bytes(b ^ 0xFF for b in op.pattern) if op.invert and p % 2 else op.pattern
                if pattern == bytes(4):
                    ns.backend.write_zeroes(offset, n)
                else:
                    ns.backend.write(offset, pattern * (n // 4))
        except Exception:
            _complete(op, st, SSTAT_FAILED)
            return False
        item[1] += n
        op.done += n
        if item[1] >= ns.size:
            op.todo.pop(0)
            if op.todo and op.todo[0][2] != p:
                st.passes_done = p + 1
        elapsed = time.monotonic() - op.started
        st.sprog = min(0xFFFE, int(min(op.done / max(op.total, 1), elapsed / MIN_SECONDS) * 0x10000))
        return True
    if time.monotonic() - op.started < MIN_SECONDS:
        st.sprog = min(0xFFFE, int((time.monotonic() - op.started) / MIN_SECONDS * 0x10000))
        return True
    _complete(op, st, SSTAT_OK)
    return False


def _complete(op: _Operation, st: _SubsystemState, sstat: int) -> None:
    st.running = None
    st.sstat = sstat
    if sstat == SSTAT_OK:
        st.passes_done = op.passes
        st.sprog = 0xFFFF
        _rebaseline(op.ctrl, st)
        for ns in _namespaces(op.ctrl):
            unc.erased(ns)
            if op.sanact == SANACT_BLOCK_ERASE and getattr(ns, "ms", 0):
                from nvshell.device.nvme import nvm_meta
                nvm_meta.deallocate(ns, 0, ns.nlbas)
    _set_admission(op.ctrl, False)
    admin_pel.sanitize_completion(op.ctrl, st.sprog,
                                  _sstat(st) | (SSTAT_GDE if global_data_erased(op.ctrl) else 0))


def _sstat(st: _SubsystemState) -> int:
    return st.sstat | (min(st.passes_done, 31) << 3)


def _namespaces(ctrl: Any) -> list[Any]:
    subsys = ctrl.subsystem
    return list(subsys.namespaces.values()) if subsys is not None else list(ctrl.namespaces.values())


def _holds_data(ns: Any) -> bool:
    """Whether ``ns`` may hold user data: a block device or a file with blocks on disk,
    a memory namespace with a chunk written (the null backend keeps nothing)."""
    backend = ns.backend
    return bool(getattr(backend, "block_device", False)) or backend.allocated > 0


def _remember(st: _SubsystemState, ctrl: Any, count: int) -> None:
    st.writes.setdefault(id(ctrl.stats), (ctrl.stats, count))


def _note_enabled(ctrl: Any) -> None:
    """Controller enable hook: from now on this controller can write; remember it (with
    the count it had when it joined: 0, or the baseline already taken)."""
    _remember(_state(ctrl), ctrl, 0)


def _rebaseline(ctrl: Any, st: _SubsystemState) -> None:
    """A sanitize completed: nothing written from here on yet."""
    st.writes = {}
    for c in _controllers(ctrl):
        _remember(st, c, c.stats.host_write_commands)
    st.erased = weakref.WeakSet(_namespaces(ctrl))
    st.data_written = False


def global_data_erased(ctrl: Any) -> bool:
    """SSTAT bit 8: no user data written since the last successful sanitize (or start)."""
    st = _state(ctrl)
    if not st.data_written:
        for c in _controllers(ctrl):
            _remember(st, c, 0)
        written = any(stats.host_write_commands != count for stats, count in st.writes.values())
        st.data_written = written or any(ns not in st.erased and _holds_data(ns) for ns in _namespaces(ctrl))
    return not st.data_written


def sanitize_log(ctrl: Any, cmd: Command) -> bytes:
    st = _state(ctrl)
    sstat = _sstat(st) | (SSTAT_GDE if global_data_erased(ctrl) else 0)
    return SANITIZE_LOG.pack(sprog=st.sprog, sstat=sstat, scdw10=st.scdw10, eto=NO_ESTIMATE,
                             etbe=NO_ESTIMATE, etce=0, etond=NO_ESTIMATE, etbend=0, etcend=0)


Controller.enable_hooks.append(_note_enabled)
admin_log.register(LogPage.SANITIZE_STATUS, "sanitize-status", sanitize_log, SANITIZE_LOG.size)
