"""The NVMe controller: the parts of one controller behind one PCIe function, wired together.

Parts (each a module with one job):

* ``registers.Registers`` -- CAP..ACQ and the CC/CSTS state machine (``CtrlState``);
* ``doorbells.Doorbells`` -- trapped, mmapped and shadow doorbells (Doorbell Buffer Config);
* ``engine.CommandEngine`` -- queue tables, fetch, dispatch, completion posting;
* ``interrupts.Interrupts`` -- one interrupt per vector per batch, coalescing (Features 08h/09h);
* ``events.AsyncEvents`` -- AERs, queued events, masks, Changed Namespace List;
* ``health`` -- SMART counters, Error log, Features.

``Controller`` owns them and is what handlers see, through the
``context.ControllerContext`` protocol (``transfer``, ``complete``,
``post_async_event``...). It reaches guest memory and interrupts only through
``device/memory.py``'s interfaces, bound by the PCI function.

Everything here runs on the controller's IOThread (docs/internals.md): BAR0
accesses arrive from the vfio-user server on that thread, doorbell polling is an
IOThread poller, and control-plane callers go through ``ctrl.iothread.run(...)``.
So there is no locking, and command processing is synchronous: a handler runs to
completion (or returns ``DEFERRED`` and finishes later with ``complete()``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from nvshell.device import trace as T
from nvshell.device.iothread import LoopStats
from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.dataxfer import map_data
from nvshell.device.nvme.doorbells import Doorbells
from nvshell.device.nvme.engine import CommandEngine
from nvshell.device.nvme.events import CHANGED_NS_MAX, AsyncEvents  # noqa: F401 (re-exported)
from nvshell.device.nvme.health import ErrorLog, ErrorLogEntry, Features, SmartStats  # noqa: F401 (re-exported)
from nvshell.device.nvme.interrupts import Interrupts
from nvshell.device.nvme.offload import BackendWorkers
from nvshell.device.nvme.queues import CompletionQueue, SubmissionQueue
from nvshell.device.nvme.registers import CSTS_SHST_COMPLETE, CSTS_SHST_MASK, CtrlState, Registers
from nvshell.device.nvme.spec import DOORBELL_PAGE_OFFSET, AsyncEventType, LogPage, mdts_bytes
from nvshell.device.pci.function import PciFunction

if TYPE_CHECKING:
    from nvshell.device.iothread import IOThread
    from nvshell.device.memory import HostMemory, InterruptSink
    from nvshell.device.nvme.context import Namespace
    from nvshell.device.pci.config import IrqMode

log = logging.getLogger(__name__)


@dataclass
class ControllerHooks:
    """Tracing / fault-injection hooks; None (the default) costs one attribute check.

    ``on_submit(cmd)`` runs before dispatch: it may raise ``NvmeError`` (complete
    with that status), return ``DEFERRED`` (keep the command; finish it later
    with ``ctrl.complete``), or return None to let the command run normally.
    ``on_complete(cmd, status)`` sees every completion about to be posted.
    ``on_interrupt(cq_qid, vector)`` may return False to swallow the interrupt.
    """

    on_submit: Callable[[Command], Any] | None = None
    on_complete: Callable[[Command, int], None] | None = None
    on_interrupt: Callable[[int, int], bool] | None = None


class Controller:
    """One NVMe controller behind one PCIe function (see module docstring)."""

    #: Called (on the IOThread) each time a host enables a controller: at power-on
    #: and after every reset. Admin modules that keep history register here (the
    #: Persistent Event Log's Power-on or Reset event, firmware activation at reset).
    enable_hooks: list[Callable[["Controller"], None]] = []

    def __init__(self, config: ControllerConfig, subsystem: Any = None, iothread: "IOThread | None" = None):
        self.config = config
        self.subsystem = subsystem
        self.iothread = iothread
        #: Controller ID; the subsystem overwrites it in ``add_controller``.
        self.cntlid = config.cntlid or 1
        #: Name in traces, events and fault rules (the device id, set by the object model).
        self.name = config.serial or f"cntlid{self.cntlid}"
        #: Attached and active namespaces of THIS controller, by NSID.
        self.namespaces: dict[int, "Namespace"] = {}
        self.hooks = ControllerHooks()
        #: While a long operation restricts what may run (Sanitize): ``admission(cmd)``
        #: returns the status to refuse a command with, or 0. None costs one check.
        self.admission: Callable[[Command], int] | None = None
        self.stats = SmartStats()
        self.error_log = ErrorLog()
        self.features = Features()
        self.memory: "HostMemory | None" = None
        self.fatal_reason: str | None = None
        #: Set by ``surprise_remove``: BAR0 reads all ones and ignores writes, as a
        #: PCIe function gone from the bus.
        self.removed = False

        nq = config.max_ioqpairs + 1
        self.regs = Registers(self, mqes=config.mqes, name=lambda: self.name)
        self.engine = CommandEngine(self, nq)
        self.doorbells = Doorbells(self, config.doorbells, nq)
        self.interrupts = Interrupts(self)
        self.events = AsyncEvents(self)
        self.workers = BackendWorkers(self)
        self._continue_scheduled = False
        self.pci = PciFunction(self, msix_vectors=config.max_intr_vectors if config.msix else 0,
                               doorbell_fd=self.doorbells.fd,
                               vendor_id=config.vendor_id, device_id=config.device_id,
                               subsystem_vendor_id=config.ssvid, subsystem_id=0,
                               bar0_size=self.doorbells.bar0_size,
                               doorbell_area=(DOORBELL_PAGE_OFFSET, self.doorbells.area_size))
        if subsystem is not None:
            subsystem.add_controller(self, config.cntlid)

    def __repr__(self) -> str:
        return f"Controller(cntlid={self.cntlid}, csts={self.csts:#x})"

    # ------------------------------------------------------------ identity
    @property
    def subnqn(self) -> str:
        if self.subsystem is not None:
            return str(self.subsystem.subnqn)
        return f"nqn.2024-01.io.nvshell:ctrl-{self.config.serial or self.cntlid}"

    @property
    def page_size(self) -> int:
        return self.regs.page_size

    @property
    def state(self) -> CtrlState:
        return self.regs.state

    @property
    def enabled(self) -> bool:
        return self.regs.state.processing

    # Register values, read by Identify, the monitor and tests.
    cap = property(lambda self: self.regs.cap)
    vs = property(lambda self: self.regs.vs)
    cc = property(lambda self: self.regs.cc)
    csts = property(lambda self: self.regs.csts)
    aqa = property(lambda self: self.regs.aqa)
    asq = property(lambda self: self.regs.asq)
    acq = property(lambda self: self.regs.acq)
    intms = property(lambda self: self.regs.intms)

    # ----------------------------------------------------- Bar0Handler hooks
    def bind(self, memory: "HostMemory", interrupts: "InterruptSink") -> None:
        """Called once by the PCI function when the transport is created."""
        self.memory = memory

    def client_connected(self) -> None:
        pass

    def client_disconnected(self) -> None:
        """The VM is gone: count an unsafe shutdown if it did not shut us down, reset."""
        if self.csts & 1 and (self.csts & CSTS_SHST_MASK) != CSTS_SHST_COMPLETE:
            self.stats.unsafe_shutdowns += 1
        self.reset()
        self.doorbells.renew()
        self.pci.doorbell_fd = self.doorbells.fd

    def irq_mode_changed(self, mode: "IrqMode") -> None:
        """MSI-X, MSI or INTx: the host changed the function's config space."""
        self.interrupts.set_mode(mode)

    def intx_unmasked(self) -> None:
        """The client unmasked INTx after the guest's EOI: the level as the CQ heads say now."""
        self.interrupts.legacy.intx_unmasked()

    def dma_unmapping(self, addr: int, size: int) -> None:
        """Guest memory is about to go: drop every view kept into it (rings, shadow buffers);
        they are taken again on next use, or the controller goes fatal if the memory is gone.
        Backend workers hold views while their I/O runs: wait for them first."""
        if not self.workers.drain():
            log.error("controller %d: backend I/O still running at DMA unmap", self.cntlid)
        self.engine.release_rings()
        self.doorbells.release_views()

    def reset(self) -> None:
        """Function reset (DEVICE_RESET, FLR, client gone): registers to power-on values."""
        if T.NVME_CTRL_RESET.enabled:
            T.NVME_CTRL_RESET.emit(ctrl=self.name, kind="device")
        self._controller_reset()
        self.regs.reset()

    # ------------------------------------------------------------ BAR0
    def read(self, offset: int, size: int) -> int:
        """BAR0 read of 1/2/4/8 bytes."""
        if self.removed:
            return (1 << (8 * size)) - 1
        if offset >= DOORBELL_PAGE_OFFSET:
            return self.doorbells.read(offset) if size == 4 else 0
        return self.regs.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        """BAR0 write: registers or doorbells; a guest mistake is ignored, never raised."""
        if self.removed:
            return
        if offset >= DOORBELL_PAGE_OFFSET:
            self.doorbells.write(offset, size, value)
        else:
            self.regs.write(offset, size, value)

    # ------------------------------------------------- RegisterOwner hooks
    def on_enable(self) -> str | None:
        regs = self.regs
        for name, addr, size in (("ASQ", regs.asq, regs.asq_entries * 64), ("ACQ", regs.acq, regs.acq_entries * 16)):
            if not self.mapped(addr, size):
                self.fatal_reason = f"{name} [{addr:#x}, +{size:#x}) is not in guest memory"
                return self.fatal_reason
        self.doorbells.start()
        acq = CompletionQueue(0, regs.acq, regs.acq_entries, True, 0)
        asq = SubmissionQueue(0, regs.asq, regs.asq_entries, acq)
        self.engine.add_cq(acq)
        self.engine.add_sq(asq)
        self.engine.running = True
        self.fatal_reason = None
        for hook in Controller.enable_hooks:
            try:
                hook(self)
            except Exception:
                log.exception("controller %d: enable hook %r failed", self.cntlid, hook)
        return None

    def on_disable(self) -> None:
        self._controller_reset()

    def interrupt_mask_writable(self) -> bool:
        return not self.interrupts.msix

    def on_interrupt_mask(self, old: int) -> None:
        self.interrupts.legacy.mask_changed(old)

    def on_shutdown(self) -> None:
        """CC.SHN: make written data durable (the host waits for SHST=complete)."""
        for ns in list(self.namespaces.values()):
            backend = getattr(ns, "backend", None)
            try:
                if backend is not None:
                    backend.flush()
            except Exception:
                log.exception("controller %d: flush of nsid %s at shutdown failed", self.cntlid,
                              getattr(ns, "nsid", "?"))

    def mapped(self, addr: int, size: int) -> bool:
        """Is every page of [addr, addr+size) in guest memory (may span DMA regions)."""
        memory = self.memory
        if memory is None:
            return False
        end = addr + size
        pos = addr
        while pos < end:
            if pos not in memory:
                return False
            pos = (pos & ~0xFFF) + 0x1000
        return (end - 1) in memory

    _mapped = mapped

    def _controller_reset(self) -> None:
        """Controller Level Reset: queues deleted, AERs and events dropped, features to defaults."""
        self.doorbells.stop()
        self.engine.clear()
        self.interrupts.clear()
        self.events.clear()
        self.features = Features()

    def surprise_remove(self) -> None:
        """device_del while a host runs (IOThread only): a Persistent Internal Error AEN makes
        Linux reset the controller at once; the reset then finds the function gone (reads all
        ones) and the host removes the device, failing its I/O over to other paths, instead of
        hanging until an I/O timeout."""
        self.post_async_event(AsyncEventType.ERROR, 0x03, LogPage.ERROR)
        self.removed = True
        self.engine.running = False
        self.doorbells.more = False

    def fatal(self, reason: str) -> None:
        """Controller Fatal Status: stop processing until the host resets us."""
        log.error("controller %d: fatal: %s", self.cntlid, reason)
        if T.NVME_CTRL_FATAL.enabled:
            T.NVME_CTRL_FATAL.emit(ctrl=self.name, reason=reason)
        self.fatal_reason = reason
        self.regs.fatal()
        self.engine.running = False
        self.doorbells.more = False

    # --------------------------------------------------------------- queues
    def sq(self, qid: int) -> SubmissionQueue | None:
        return self.engine.sq(qid)

    def cq(self, qid: int) -> CompletionQueue | None:
        return self.engine.cq(qid)

    def create_cq(self, qid: int, base: int, size: int, ien: bool, vector: int) -> CompletionQueue:
        cq = CompletionQueue(qid, base, size, ien, vector)
        self.engine.add_cq(cq)
        if qid and T.NVME_CREATE_CQ.enabled:
            T.NVME_CREATE_CQ.emit(ctrl=self.name, qid=qid, size=size, vector=vector, ien=bool(ien))
        return cq

    def create_sq(self, qid: int, base: int, size: int, cq: CompletionQueue, qprio: int = 0) -> SubmissionQueue:
        sq = SubmissionQueue(qid, base, size, cq, qprio)
        self.engine.add_sq(sq)
        if qid and T.NVME_CREATE_SQ.enabled:
            T.NVME_CREATE_SQ.emit(ctrl=self.name, qid=qid, cqid=cq.qid, size=size, prio=qprio)
        return sq

    def delete_sq(self, qid: int) -> None:
        """Remove an I/O SQ; commands it still holds complete with SQ Deletion Abort."""
        if self.engine.sq(qid) is not None and T.NVME_DELETE_SQ.enabled:
            T.NVME_DELETE_SQ.emit(ctrl=self.name, qid=qid)
        self.engine.remove_sq(qid)

    def delete_cq(self, qid: int) -> None:
        if self.engine.cq(qid) is not None and T.NVME_DELETE_CQ.enabled:
            T.NVME_DELETE_CQ.emit(ctrl=self.name, qid=qid)
        cq = self.engine.remove_cq(qid)
        if cq is not None:
            self.interrupts.cq_deleted(cq)

    @property
    def io_queues_exist(self) -> bool:
        return self.engine.io_queues_exist

    def configure_doorbell_buffers(self, dbs: int, eis: int) -> None:
        """Doorbell Buffer Config: shadow doorbells at ``dbs``, EventIdx at ``eis`` (NvmeError if bad)."""
        self.doorbells.configure_shadow(dbs, eis)

    # ------------------------------------------------------------ processing
    def kick(self) -> None:
        """A doorbell moved: process right after the current message is answered."""
        if not self._continue_scheduled and self.iothread is not None and self.iothread.running:
            self._continue_scheduled = True
            self.iothread.call_soon(self._continue)
        elif self.iothread is None or not self.iothread.running:
            self._run()

    def _continue(self) -> None:
        self._continue_scheduled = False
        self._run()

    def _run(self) -> None:
        """One round now; if queues still hold work, continue soon (keeps the socket served)."""
        if self.engine.round():
            if self.doorbells.polling:
                self.doorbells.more = True
            else:
                self.kick()

    def process(self) -> bool:
        """Run one processing round (tests, or a caller without a poller); True if work remains."""
        return self.engine.round()

    def poll_doorbells(self) -> bool:
        return self.doorbells.poll()

    def complete(self, cmd: Command, status: int = 0, dnr: bool = False, more: bool = False) -> bool:
        """Complete a command a handler kept (DEFERRED). False if it is gone already
        (aborted, its SQ deleted, or the controller reset since)."""
        return self.engine.complete(cmd, status, dnr, more)

    def offload(self, cmd: Command, work: Callable[[], None]) -> object:
        """Run blocking backend ``work`` on the worker pool; ``cmd`` completes when it is done."""
        if self.iothread is None or not self.iothread.running:
            work()
            return None
        return self.workers.submit(cmd, work)

    def run_deferred(self, cmd: Command) -> bool:
        """Execute a command an ``on_submit`` hook held back (a delay fault), and complete it."""
        return self.engine.run_deferred(cmd)

    def transfer(self, cmd: Command, length: int, *, allow_sgl: bool = True) -> Any:
        """Map the command's data buffer (PRP or SGL per PSDT): a ``DataMap``.

        Admin commands never use SGLs (the spec requires PRPs for them).
        """
        return map_data(self.memory, cmd, length, page_size=self.regs.page_size,
                        allow_sgl=allow_sgl and cmd.sqid != 0, mdts_bytes=mdts_bytes(self.config.mdts))

    # ---------------------------------------------------- asynchronous events
    def queue_aer(self, cmd: Command) -> object:
        """Asynchronous Event Request: hold ``cmd`` until an event comes (returns DEFERRED)."""
        return self.events.queue_aer(cmd)

    @property
    def outstanding_aers(self) -> int:
        return len(self.events.aer_cmds)

    def post_async_event(self, event_type: int, info: int, log_page: int) -> None:
        """Queue an event for the host; an outstanding AER completes with it, else it waits
        (at most ``max_aer_retention`` kept). An event type reported stays masked until
        the host reads its log page (``log_page_read``)."""
        self.events.post(event_type, info, log_page)

    def log_page_read(self, log_id: int, rae: bool = False, cleared: bool = False) -> None:
        """Called by Get Log Page: reading a log page (RAE=0) unmasks its event type
        (``cleared``: see ``AsyncEvents.log_page_read``)."""
        self.events.log_page_read(log_id, rae, cleared)

    def pending_events(self) -> list[tuple[int, int, int]]:
        return list(self.events.events)

    @property
    def changed_namespaces(self) -> list[int]:
        return self.events.changed_namespaces

    @changed_namespaces.setter
    def changed_namespaces(self, value: list[int]) -> None:
        self.events.changed_namespaces = value

    def note_changed_namespace(self, nsid: int) -> None:
        """Record ``nsid`` in the Changed Namespace List log (the caller posts the AEN)."""
        self.events.note_changed_namespace(nsid)

    def take_changed_namespaces(self, clear: bool = True) -> list[int]:
        """Contents of the Changed Namespace List log; reading it (RAE=0) clears it."""
        return self.events.take_changed_namespaces(clear)

    # ------------------------------------------------------------ namespaces
    def attach_namespace(self, ns: "Namespace") -> None:
        """Make ``ns`` active on this controller (IOThread only; no AEN here)."""
        self.namespaces[ns.nsid] = ns
        if T.NVME_NS_ATTACH.enabled:
            T.NVME_NS_ATTACH.emit(ctrl=self.name, nsid=ns.nsid)

    def detach_namespace(self, nsid: int) -> None:
        if self.namespaces.pop(nsid, None) is not None and T.NVME_NS_DETACH.enabled:
            T.NVME_NS_DETACH.emit(ctrl=self.name, nsid=nsid)

    # ---------------------------------------------------------------- info
    def queue_info(self) -> list[dict[str, Any]]:
        """State of every queue, for ``info queues`` (call on the IOThread)."""
        out: list[dict[str, Any]] = []
        engine = self.engine
        for qid in range(len(engine.sqs)):
            sq, cq = engine.sqs[qid], engine.cqs[qid]
            if sq is not None:
                out.append({"qid": qid, "kind": "sq", "size": sq.size, "head": sq.head, "tail": sq.tail,
                            "base": sq.base, "cqid": sq.cq.qid, "outstanding": len(sq.deferred),
                            "fetched": sq.fetched})
            if cq is not None:
                out.append({"qid": qid, "kind": "cq", "size": cq.size, "head": cq.head, "tail": cq.tail,
                            "base": cq.base, "vector": cq.vector, "ien": cq.ien, "phase": cq.phase,
                            "outstanding": len(cq.pending), "posted": cq.posted})
        return out

    def dataplane_info(self) -> dict[str, Any]:
        """For ``info dataplane`` (on the IOThread): cumulative counts of how the data plane
        learns of work and tells the host, read together -- the per-command costs that do
        not show in a profile of one command (doorbell messages, interrupts, sleeps)."""
        io = self.iothread
        assert io is not None, "dataplane_info runs on the controller's IOThread"
        db = self.doorbells
        loop = {name.replace("_", "-"): getattr(io.stats, name) for name in LoopStats.__slots__}
        return {
            "doorbells": self.config.doorbells,
            "shadow-doorbells": db.shadow is not None,
            "io-commands": self.stats.host_read_commands + self.stats.host_write_commands,
            "rounds": self.engine.rounds,
            "doorbell-writes": db.real_writes,
            "doorbell-page-updates": db.page_updates,
            "shadow-updates": db.shadow_updates,
            "interrupts": sum(self.interrupts.fired.values()),
            **loop,
            "spin-window-us": round(io.spin * 1e6, 1),
            "iothread-cpu-ms": round(io.cpu_seconds() * 1e3, 3),
        }

    def time_commands(self, on: bool) -> None:
        """Time every command into its SQ's latency histogram (two clock reads per command), or
        stop: ``info iostat`` turns it on while someone watches (IOThread only)."""
        self.engine.timing = on

    def iostat_info(self, timing: bool | None = None) -> tuple[list[dict[str, Any]], int, int, int, int]:
        """For ``info iostat`` (on the IOThread): ``queue_info()`` with each SQ's byte tallies and
        latency histogram, and the SMART byte and command counters, read together. ``timing``
        (when given) turns command timing on or off from now on (``time_commands``)."""
        if timing is not None:
            self.time_commands(timing)
        queues = self.queue_info()
        for q in queues:
            if q["kind"] == "sq":
                sq = self.engine.sqs[q["qid"]]
                q.update(bytes_read=sq.bytes_read, bytes_written=sq.bytes_written, latency=list(sq.latency))
        s = self.stats
        return queues, s.bytes_read, s.bytes_written, s.host_read_commands, s.host_write_commands

    def shutdown(self) -> None:
        """Before the device goes away: stop polling, drop queues, leave the subsystem."""
        self._controller_reset()
        self.regs.state = CtrlState.DISABLED
        if self.subsystem is not None:
            try:
                self.subsystem.remove_controller(self)
            except Exception:
                log.debug("controller %d: not in its subsystem any more", self.cntlid, exc_info=True)
        self.doorbells.close()
        self.workers.close()
        self.pci.doorbell_fd = None
