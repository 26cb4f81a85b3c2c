"""The command engine: queue tables, fetch, dispatch, completion posting, interrupts.

Everything here runs on the controller's IOThread. Per processing round, for
every active SQ the engine fetches at most ``config.sq_batch`` entries
(fairness between queues, and a bound on how long the socket waits), decodes
each into a ``Command``, dispatches through the admin table (SQ 0) or the
addressed namespace's table, posts the CQE, and at the end of the round hands
the vectors that got entries to the ``Interrupts`` unit (one interrupt per
vector per batch, or coalesced per Feature 08h). A full CQ keeps its
completions pending and stops its SQs until the host moves the CQ head. No
exception escapes: NvmeError -> its status, MemoryFault -> Data Transfer Error,
anything else -> Internal Error plus a log line.

Hot path: each queue's ring is one memoryview taken once (``SubmissionQueue.ring``,
dropped by ``release_rings`` before a DMA unmap), so a fetch is one
``unpack_from`` and a completion one ``pack_into`` plus the phase halfword. The
SQE is decoded into its slot's command object (``SubmissionQueue.commands``,
``Command.refill``: no allocation); a command the controller keeps (DEFERRED) is
detached from its slot in ``defer``, so reuse never touches a held command.
Tracing, faults and statistics beyond the SMART counters cost one attribute
check each when off. Per SQ, completion adds the command's bytes (one integer add) and, once
``info iostat`` asked (``timing``), its latency to a log2 histogram (a clock read, a shift).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from nvshell.device import trace as T
from nvshell.device.memory import MemoryFault
from nvshell.device.nvme.commands import ADMIN, DEFERRED, NVM, Command
from nvshell.device.nvme.queues import CompletionQueue, SubmissionQueue
from nvshell.device.nvme.spec import HOST_READ_OPCODES, HOST_WRITE_OPCODES, LBA_OPCODES, SQE, SQE_SIZE_LOG2, opcode_label
from nvshell.device.nvme.status import NvmeError, Status, status_field, status_name

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller

log = logging.getLogger(__name__)

_SQE_UNPACK = SQE.struct.unpack_from
_FROM_SQE = Command.from_sqe
_REFILL = Command.refill
_DMA_ERROR = int(Status.DATA_TRANSFER_ERROR)
_INTERNAL_ERROR = int(Status.INTERNAL_ERROR)
_NO_STATUS = (0, False, False)
_LAST_BUCKET = T.LATENCY_BUCKETS - 1


class CommandEngine:
    """Queues and command processing of one controller (see module docstring)."""

    def __init__(self, ctrl: "Controller", nqueues: int):
        self.ctrl = ctrl
        self.sqs: list[SubmissionQueue | None] = [None] * nqueues
        self.cqs: list[CompletionQueue | None] = [None] * nqueues
        #: Active SQs in QID order (rebuilt on create/delete; iterated every round).
        self.sq_order: tuple[SubmissionQueue, ...] = ()
        self.running = False
        self.in_round = False
        #: Processing rounds run (``info dataplane``: commands per round is the batching).
        self.rounds = 0
        #: CQs that got entries since their vector last fired.
        self.irq_cqs: list[CompletionQueue] = []
        #: Some CQ is full with completions or submissions waiting for room.
        self.has_waiting_cqes = False
        #: Called with a CQ after its head doorbell moved, while interrupts are INTx or MSI
        #: (``Interrupts.set_mode``: the interrupt status clears on acknowledgement); None with MSI-X.
        self.on_cq_head: Callable[[CompletionQueue], None] | None = None
        #: Timestamp every fetched command for the SQs' latency histograms: on only while
        #: ``info iostat`` is watched (``Controller.time_commands``); off, fetch costs nothing more.
        self.timing = False

    # ------------------------------------------------------------ queues
    def sq(self, qid: int) -> SubmissionQueue | None:
        return self.sqs[qid] if 0 <= qid < len(self.sqs) else None

    def cq(self, qid: int) -> CompletionQueue | None:
        return self.cqs[qid] if 0 <= qid < len(self.cqs) else None

    def add_cq(self, cq: CompletionQueue) -> None:
        self.cqs[cq.qid] = cq
        self.ctrl.doorbells.queue_created(cq.qid, True)

    def add_sq(self, sq: SubmissionQueue) -> None:
        self.sqs[sq.qid] = sq
        sq.cq.sqs.append(sq)
        self.ctrl.doorbells.queue_created(sq.qid, False)
        self._rebuild()

    def remove_sq(self, qid: int) -> SubmissionQueue | None:
        """Remove an SQ; commands it still holds complete with SQ Deletion Abort."""
        sq = self.sqs[qid]
        if sq is None:
            return None
        for cmd in list(sq.deferred.values()):
            self.complete(cmd, Status.SQ_DELETION_ABORT)
        sq.deleted = True
        sq.release()
        self.sqs[qid] = None
        try:
            sq.cq.sqs.remove(sq)
        except ValueError:
            pass
        self.ctrl.doorbells.queue_deleted(qid, False)
        self._rebuild()
        return sq

    def remove_cq(self, qid: int) -> CompletionQueue | None:
        cq = self.cqs[qid]
        if cq is None:
            return None
        self.cqs[qid] = None
        cq.pending.clear()
        cq.release()
        if cq in self.irq_cqs:
            self.irq_cqs.remove(cq)
        self.ctrl.doorbells.queue_deleted(qid, True)
        return cq

    def clear(self) -> None:
        """Controller Level Reset: every queue gone, held commands dropped."""
        self.running = False
        for sq in self.sq_order:
            sq.deleted = True
            sq.deferred.clear()
        for q in (*self.sqs, *self.cqs):
            if q is not None:
                q.release()
        self.sqs = [None] * len(self.sqs)
        self.cqs = [None] * len(self.cqs)
        self.sq_order = ()
        self.irq_cqs.clear()

    def release_rings(self) -> None:
        """Before a DMA unmap: drop every ring view (they are taken again on next use)."""
        for q in (*self.sqs, *self.cqs):
            if q is not None:
                q.release()

    def _rebuild(self) -> None:
        self.sq_order = tuple(q for q in self.sqs if q is not None)

    @property
    def io_queues_exist(self) -> bool:
        return any(q is not None for q in self.sqs[1:]) or any(q is not None for q in self.cqs[1:])

    # --------------------------------------------------------- doorbells
    def set_sq_tail(self, sq: SubmissionQueue, value: int) -> None:
        sq.tail = value

    def set_cq_head(self, cq: CompletionQueue, value: int) -> None:
        cq.head = value
        if cq.pending:
            self.flush_pending(cq)
        if self.on_cq_head is not None:
            self.on_cq_head(cq)

    def flush_pending(self, cq: CompletionQueue) -> None:
        memory = self.ctrl.memory
        pending = cq.pending
        try:
            while pending and not cq.full():
                if not cq.irq_pending:
                    self.irq_cqs.append(cq)
                cq.write_entry(memory, *pending[0])
                pending.popleft()
        except (MemoryFault, AttributeError) as exc:
            self.ctrl.fatal(f"CQ {cq.qid} not in guest memory: {exc}")
        if not self.in_round:
            self.fire_irqs()

    # ------------------------------------------------------- processing
    def round(self) -> bool:
        """One processing round over every SQ; True if entries remain (batch limit hit)."""
        if not self.running:
            return False
        ctrl = self.ctrl
        more = False
        batch = ctrl.config.sq_batch
        io_started = 0
        self.rounds += 1
        self.in_round = True
        try:
            for sq in self.sq_order:
                if sq.head == sq.tail or sq.deleted:
                    continue
                cq = sq.cq
                n = batch
                if sq.qid and not io_started:
                    io_started = time.monotonic_ns()
                while sq.head != sq.tail:
                    if cq.pending or (cq.full() and not ctrl.doorbells.refresh_cq(cq)):
                        # Resumed by the CQ head doorbell (shadowed: once the host's next
                        # head update rings, see Doorbells.want_cq_head).
                        self.has_waiting_cqes = True
                        ctrl.doorbells.want_cq_head(cq)
                        break
                    if not n:
                        more = True
                        break
                    n -= 1
                    self.execute(sq)
                    if not self.running or sq.deleted:
                        break
                if not self.running:
                    return False
        finally:
            self.in_round = False
            if io_started:
                ctrl.stats.busy_ns += time.monotonic_ns() - io_started
            if self.irq_cqs:
                self.fire_irqs()
        return more

    def fire_irqs(self) -> None:
        """Signal the vectors of the CQs that got entries: one interrupt per vector."""
        self.ctrl.interrupts.signal(self.irq_cqs)
        self.irq_cqs.clear()

    def execute(self, sq: SubmissionQueue) -> None:
        head = sq.head
        ctrl = self.ctrl
        try:
            ring = sq.ring
            if ring is None:
                ring = sq.map(ctrl.memory)
            raw = _SQE_UNPACK(ring, head << SQE_SIZE_LOG2)
        except (MemoryFault, AttributeError, ValueError) as exc:
            ctrl.fatal(f"SQ {sq.qid} entry {head} not in guest memory: {exc}")
            return
        slot = head
        head += 1
        if head == sq.size:
            head = 0
        sq.head = head
        sq.fetched += 1
        cmd = sq.commands[slot]
        if cmd is None:
            cmd = sq.commands[slot] = _FROM_SQE(sq.qid, raw)
        else:
            _REFILL(cmd, raw)
        hooks = ctrl.hooks
        if self.timing or hooks.on_complete is not None or T.NVME_CMD_COMPLETE.enabled:
            cmd.fetched_ns = time.monotonic_ns()
        if T.NVME_CMD_SUBMIT.enabled:
            self._trace_submit(cmd)
        if hooks.on_submit is not None:
            try:
                if hooks.on_submit(cmd) is DEFERRED:
                    self.defer(sq, cmd, slot)
                    return
            except NvmeError as exc:
                self.post(sq, cmd, exc.status, exc.dnr, exc.more)
                return
            except Exception:
                log.exception("controller %d: on_submit hook failed", ctrl.cntlid)
        outcome = self.dispatch(cmd)
        if outcome is None:
            self.defer(sq, cmd, slot)
        elif outcome is _NO_STATUS:
            self.post_entry(sq, cmd, 0, 0)
        else:
            self.post(sq, cmd, *outcome)

    def dispatch(self, cmd: Command) -> tuple[int, bool, bool] | None:
        """Look up and run the command's handler: (status, dnr, more), or None when the
        handler keeps the command (DEFERRED). Never raises."""
        ctrl = self.ctrl
        try:
            if cmd.sqid:
                ns = ctrl.namespaces.get(cmd.nsid)
                info = (NVM if ns is None else ns.commands).get(cmd.opcode)
                if info is None:
                    raise NvmeError(Status.INVALID_OPCODE)
                if ns is None:
                    if info.nsid == "required":
                        # Shared and still reachable through another controller (detached
                        # here while I/O was in flight): a path error, which a multipath host
                        # fails over, instead of an error it returns to the application.
                        if ctrl.subsystem is not None and any(
                                c != ctrl.cntlid for c in ctrl.subsystem.attached_controllers(cmd.nsid)):
                            raise NvmeError(Status.INTERNAL_PATH_ERROR, dnr=False)
                        raise NvmeError(Status.INVALID_NSID)
                elif not ns.ready:
                    raise NvmeError(Status.NS_NOT_READY, dnr=False)
                cmd.ns = ns
            else:
                info = ADMIN.get(cmd.opcode)
                if info is None:
                    raise NvmeError(Status.INVALID_OPCODE)
                if info.nsid != "none":
                    self._lookup_admin_ns(cmd, info.nsid)
            if cmd.flags & 0x3:
                raise NvmeError(Status.INVALID_FIELD)   # fused operations unsupported
            if ctrl.admission is not None:
                refused = ctrl.admission(cmd)
                if refused:
                    raise NvmeError(refused, dnr=False)
            if info.handler(ctrl, cmd) is DEFERRED:
                return None
        except NvmeError as exc:
            if exc.result:
                cmd.result = exc.result
            return exc.status, exc.dnr, exc.more
        except MemoryFault:
            return _DMA_ERROR, False, False
        except Exception:
            log.exception("controller %d: command %#x on SQ %d (cid %d) failed", ctrl.cntlid, cmd.opcode,
                          cmd.sqid, cmd.cid)
            return _INTERNAL_ERROR, True, False
        return _NO_STATUS

    def _lookup_admin_ns(self, cmd: Command, mode: str) -> None:
        ns = self.ctrl.namespaces.get(cmd.nsid)
        if mode == "required":
            if ns is None:
                raise NvmeError(Status.INVALID_NSID)
            if not ns.ready:
                raise NvmeError(Status.NS_NOT_READY, dnr=False)
        cmd.ns = ns

    def run_deferred(self, cmd: Command) -> bool:
        """Execute a command an ``on_submit`` hook held back (a delay fault), and complete
        it; False if it is gone already (aborted, SQ deleted, controller reset)."""
        sq = self.sq(cmd.sqid)
        if sq is None or sq.deferred.get(cmd.cid) is not cmd:
            return False
        outcome = self.dispatch(cmd)
        if outcome is None:
            return True             # the handler keeps it (an AER): it completes later
        return self.complete(cmd, outcome[0], outcome[1], outcome[2])

    def defer(self, sq: SubmissionQueue, cmd: Command, slot: int) -> None:
        """Keep ``cmd`` (a handler or the submit hook returned DEFERRED) until ``complete``.

        Its holders (``sq.deferred``, a worker, a timer, the AER list) own the object from now
        on: the slot it came from gets a fresh object for its next command (see
        ``SubmissionQueue.commands``), so a host that reuses the slot while this command is
        outstanding cannot overwrite it."""
        sq.commands[slot] = None
        sq.deferred[cmd.cid] = cmd
        self.ctrl.events.deliver_if_pending()

    def post(self, sq: SubmissionQueue, cmd: Command, status: int, dnr: bool, more: bool = False) -> None:
        """Complete ``cmd`` with ``status``: an error is recorded in the error log first."""
        if status:
            if status not in (Status.ABORT_REQUESTED, Status.SQ_DELETION_ABORT):
                lba = cmd.cdw10 | (cmd.cdw11 << 32) if sq.qid and cmd.opcode in LBA_OPCODES else 0
                lba = cmd.extra.get("error_lba", lba)  # a PI check names the failing block
                self.ctrl.error_log.record(sq.qid, cmd.cid, status, dnr, nsid=cmd.nsid, lba=lba)
        self.post_entry(sq, cmd, status, status_field(status, dnr, more) << 1)

    def post_entry(self, sq: SubmissionQueue, cmd: Command, status: int, sf: int) -> None:
        """Account for ``cmd`` and write its CQE (status field ``sf``, phase bit clear) or
        queue it while the CQ is full. ``post_entry(sq, cmd, 0, 0)`` is the common case,
        called straight from the round: one call from dispatch to the ring."""
        ctrl = self.ctrl
        if sq.qid and not status:
            opcode = cmd.opcode
            if opcode in HOST_READ_OPCODES:
                ctrl.stats.host_read_commands += 1
                sq.bytes_read += cmd.nbytes
            elif opcode in HOST_WRITE_OPCODES:
                ctrl.stats.host_write_commands += 1
                sq.bytes_written += cmd.nbytes
        if cmd.fetched_ns and self.timing:
            us = (time.monotonic_ns() - cmd.fetched_ns) // 1000
            sq.latency[min(us.bit_length(), _LAST_BUCKET)] += 1   # trace.bucket_of, in integers
        if ctrl.hooks.on_complete is not None or T.NVME_CMD_COMPLETE.enabled:
            self._finish_hooks(cmd, status)
        cq = sq.cq
        if cq.pending or (cq.full() and not ctrl.doorbells.refresh_cq(cq)):
            cq.pending.append((cmd.result, cmd.result_dw1, sq.head, sq.qid, cmd.cid, sf))
            self.has_waiting_cqes = True
            ctrl.doorbells.want_cq_head(cq)
            return
        if not cq.irq_pending:
            self.irq_cqs.append(cq)
        try:
            cq.write_entry(ctrl.memory, cmd.result, cmd.result_dw1, sq.head, sq.qid, cmd.cid, sf)
        except (MemoryFault, AttributeError, ValueError) as exc:
            ctrl.fatal(f"CQ {cq.qid} not in guest memory: {exc}")

    def _finish_hooks(self, cmd: Command, status: int) -> None:
        """The completion hook (faults) and trace point, when on."""
        hooks = self.ctrl.hooks
        if hooks.on_complete is not None:
            try:
                hooks.on_complete(cmd, status)
            except Exception:
                log.exception("controller %d: on_complete hook failed", self.ctrl.cntlid)
        if T.NVME_CMD_COMPLETE.enabled:
            self._trace_complete(cmd, status)

    def complete(self, cmd: Command, status: int = 0, dnr: bool = False, more: bool = False) -> bool:
        """Complete a command a handler kept (DEFERRED). False if it is gone already
        (aborted, its SQ deleted, or the controller reset since)."""
        sq = self.sq(cmd.sqid)
        if sq is None or sq.deferred.get(cmd.cid) is not cmd:
            return False
        del sq.deferred[cmd.cid]
        if cmd.sqid == 0:
            self.ctrl.events.forget_aer(cmd)
        self.post(sq, cmd, int(status), dnr, more)
        if not self.in_round:
            self.fire_irqs()
        return True

    # ------------------------------------------------------------ traces
    def _trace_submit(self, cmd: Command) -> None:
        if cmd.sqid:
            slba, nlb = cmd.cdw10 | (cmd.cdw11 << 32), (cmd.cdw12 & 0xFFFF) + 1
        else:
            slba = nlb = 0
        T.NVME_CMD_SUBMIT.emit(ctrl=self.ctrl.name, qid=cmd.sqid, cid=cmd.cid,
                               opcode=opcode_label(cmd.sqid, cmd.opcode), nsid=cmd.nsid,
                               slba=slba, nlb=nlb, cdw10=cmd.cdw10, cdw11=cmd.cdw11)

    def _trace_complete(self, cmd: Command, status: int) -> None:
        lat = (time.monotonic_ns() - cmd.fetched_ns) / 1000 if cmd.fetched_ns else 0.0
        T.NVME_CMD_COMPLETE.emit(ctrl=self.ctrl.name, qid=cmd.sqid, cid=cmd.cid,
                                 opcode=opcode_label(cmd.sqid, cmd.opcode),
                                 status=status_name(status), lat_us=lat, result=cmd.result)
