"""Doorbells: how the controller learns of new submissions and consumed completions.

Three sources, combinable per controller:

* **trap** (``doorbells=trap``): every doorbell write is a vfio-user REGION_WRITE
  message. The IOThread sleeps until one arrives; the controller answers the
  message first and processes the queue right after (``IOThread.call_soon`` from
  the IOThread itself costs no wakeup).
* **mmap** (``doorbells=mmap``): the doorbell area of BAR0 is a memfd the guest
  writes directly; the IOThread has to poll it (``poll``), backing off when idle,
  and after a quarter second without a change looking only every ``DEEP_IDLE_POLL``
  (deep idle).
* **shadow** (Doorbell Buffer Config, admin 7Ch, OACS bit 8): the host writes
  I/O queue tails/heads to a Shadow Doorbell buffer in its own memory and rings
  the real doorbell only when ``need_event(EventIdx, new, old)`` says so. While
  the IOThread works it reads the shadow buffer and leaves EventIdx just behind
  what it has seen, so the host rings nothing; before the IOThread sleeps
  (``before_sleep``) it publishes EventIdx = the tail it has consumed, and the
  next submission rings a real doorbell that wakes it. The admin queue keeps
  real doorbells (as Linux does: it never shadows queue 0).

The doorbell area is sized from ``max_ioqpairs`` (``bar0_size``): every QID a
host may create has its two slots inside BAR0.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from nvshell.device import trace as T
from nvshell.device.memory import MemoryFault
from nvshell.device.nvme.spec import DOORBELL_PAGE_OFFSET, PAGE_SIZE, AsyncEventType, LogPage
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller
    from nvshell.device.nvme.queues import CompletionQueue, SubmissionQueue

log = logging.getLogger(__name__)

#: Async event information, error type.
AER_INFO_INVALID_DB_REGISTER = 0x00
AER_INFO_INVALID_DB_VALUE = 0x01
#: Smallest BAR0 (registers page + doorbells), as before max-ioqpairs sized it.
MIN_BAR0_SIZE = 0x4000

#: mmap mode's deep idle: once the doorbell page has not changed for DEEP_IDLE_AFTER seconds,
#: it is looked at every DEEP_IDLE_POLL seconds on an IOThread timer instead of on the loop's
#: idle back-off (at most ``iothread.IDLE_POLL_MAX``, 2 ms); the first change seen brings the
#: back-off back. Why: on a virtualised host every wake-up of a sleeping thread costs 40-100 us
#: of CPU (measured here: an epoll sleep of 2 ms costs 1.8-2.2% of a core, one of 20 ms 0.4-0.5%),
#: so looking every 2 ms kept an idle mmap-mode device above 2% of a core, and an idle device
#: must stay under 1% (the Linux guest's sporadic I/O while idle each bring back the back-off for
#: DEEP_IDLE_AFTER: 1 s of it left 1.2%, a quarter second 0.7%). The price: a submission after a
#: quiet quarter second waits up to DEEP_IDLE_POLL.
DEEP_IDLE_AFTER = 0.25
DEEP_IDLE_POLL = 0.02

#: A full memory barrier between our EventIdx store and the shadow-tail load that
#: follows it (the host does mb() between its shadow store and EventIdx load).
#: Acquiring an uncontended lock is a LOCK-prefixed read-modify-write, which on
#: x86 orders every earlier store before every later load.
_FENCE = threading.Lock()


def doorbell_area_size(max_ioqpairs: int) -> int:
    """Bytes of doorbells for QIDs 0..max_ioqpairs (SQ tail + CQ head, 4 bytes each), page rounded."""
    need = 8 * (max_ioqpairs + 1)
    return (need + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def bar0_size(max_ioqpairs: int) -> int:
    """BAR0 as a power of two holding the register page and every doorbell (as QEMU sizes it)."""
    need = DOORBELL_PAGE_OFFSET + doorbell_area_size(max_ioqpairs)
    size = MIN_BAR0_SIZE
    while size < need:
        size <<= 1
    return size


def need_event(event_idx: int, new: int, old: int) -> bool:
    """The host's test (Linux ``nvme_dbbuf_need_event``, 16-bit arithmetic): ring the real
    doorbell when ``event_idx`` lies in [old, new)."""
    return (new - event_idx - 1) & 0xFFFF < (new - old) & 0xFFFF


def event_idx_behind(value: int, size: int) -> int:
    """An EventIdx the host will not cross while it moves on from ``value``: one entry
    behind it (the host's next lap would reach it, long after we moved it again)."""
    return value - 1 if value else size - 1


class ShadowBuffers:
    """The Shadow Doorbell and EventIdx buffers of a Doorbell Buffer Config command."""

    def __init__(self, dbs: int, eis: int, length: int):
        self.dbs_addr = dbs
        self.eis_addr = eis
        self.length = length
        self.dbs: memoryview | None = None
        self.eis: memoryview | None = None
        self._raw: list[memoryview] = []

    def map(self, memory: object) -> None:
        """Take both views (4-byte slots); MemoryFault if either is not in guest memory."""
        self.release()
        raw_dbs = memory.view(self.dbs_addr, self.length, True)  # type: ignore[attr-defined]
        raw_eis = memory.view(self.eis_addr, self.length, True)  # type: ignore[attr-defined]
        self._raw = [raw_dbs, raw_eis]
        self.dbs = raw_dbs.cast("I")
        self.eis = raw_eis.cast("I")

    def release(self) -> None:
        for view in (self.dbs, self.eis, *self._raw):
            if view is not None:
                view.release()
        self.dbs = self.eis = None
        self._raw = []


class Doorbells:
    """Doorbell state of one controller (see module docstring). IOThread only."""

    def __init__(self, ctrl: "Controller", mode: str, nqueues: int):
        self.ctrl = ctrl
        self.mode = mode
        self.nqueues = nqueues
        self.bar0_size = bar0_size(nqueues - 1)
        self.area_size = doorbell_area_size(nqueues - 1)
        self.fd: int | None = None
        self._map: mmap.mmap | None = None
        self._last = bytearray()
        self._nbytes = 0
        #: Bytes of the doorbell area holding the existing queues' slots (polled first).
        self._active_end = 8
        if mode == "mmap":
            self._open_page()
        self.shadow: ShadowBuffers | None = None
        #: Shadowed I/O SQs, in QID order.
        self._shadow_sqs: list["SubmissionQueue"] = []
        #: Slot index -> an invalid shadow value already reported (one AEN per bad value).
        self._bad: dict[int, int] = {}
        self.polling = False
        #: mmap mode: when the page last stopped changing (0: it changed at the last poll), and
        #: the deep-idle timer while the poller is not on the loop's back-off (DEEP_IDLE_AFTER).
        self._quiet_since = 0.0
        self._deep: Any = None
        #: Work remains after a round hit the batch limit: the poller continues it.
        self.more = False
        #: Real doorbell writes (trapped or mirrored), doorbell slots found changed in the mmapped
        #: page, and shadow updates seen, for tests and ``info dataplane``.
        self.real_writes = 0
        self.page_updates = 0
        self.shadow_updates = 0

    # --------------------------------------------------------- lifecycle
    def start(self) -> None:
        """CC.EN=1: slots zeroed; mmap mode starts polling."""
        if self._map is not None:
            self._map[DOORBELL_PAGE_OFFSET:DOORBELL_PAGE_OFFSET + self.area_size] = bytes(self.area_size)
            self._nbytes = 8 * self.nqueues
            self._last = bytearray(self._nbytes)
            self._poll_on()

    def stop(self) -> None:
        """Controller reset: polling stops, slots zeroed, shadow buffers dropped."""
        self._poll_off()
        self.more = False
        self.drop_shadow()
        if self._map is not None:
            self._map[DOORBELL_PAGE_OFFSET:DOORBELL_PAGE_OFFSET + self.area_size] = bytes(self.area_size)
        self._nbytes = 0
        self._last = bytearray()
        self._active_end = 8

    def renew(self) -> None:
        """A fresh doorbell memfd for the next client (mmap mode): a former client that
        kept its mapping of the old one must not ring the next client's doorbells."""
        if self._map is None:
            return
        old_fd, old_map = self.fd, self._map
        self._open_page()
        try:
            old_map.close()
        except BufferError:
            pass
        if old_fd is not None:
            os.close(old_fd)

    def _open_page(self) -> None:
        fd = os.memfd_create("nvshell-bar0", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.bar0_size)
            self._map = mmap.mmap(fd, self.bar0_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        self.fd = fd

    def close(self) -> None:
        self.stop()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass
            self._map = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _poll_on(self) -> None:
        io = self.ctrl.iothread
        if io is not None and not self.polling:
            io.add_poller(self.poll, before_sleep=self.before_sleep, periodic=self._map is not None)
            self.polling = True
            self._quiet_since = 0.0

    def _poll_off(self) -> None:
        io = self.ctrl.iothread
        if self._deep is not None:
            self._deep.cancel()
            self._deep = None
        if self.polling and io is not None:
            io.remove_poller(self.poll)
        self.polling = False

    @property
    def deep_idle(self) -> bool:
        """mmap mode: the page is looked at on the deep-idle timer (see DEEP_IDLE_AFTER)."""
        return self._deep is not None

    def _quiet(self) -> None:
        """mmap mode: a poll found nothing; after DEEP_IDLE_AFTER of that, go deep idle."""
        now = time.monotonic()
        if not self._quiet_since:
            self._quiet_since = now
        elif self._deep is None and now - self._quiet_since >= DEEP_IDLE_AFTER:
            io = self.ctrl.iothread
            io.remove_poller(self.poll)
            io.add_poller(self.poll, before_sleep=self.before_sleep, periodic=False)
            self._deep = io.call_later(DEEP_IDLE_POLL, self._deep_look)

    def _deep_look(self) -> None:
        """Deep-idle timer: the loop polls right after its timers; the next look is armed."""
        self._deep = self.ctrl.iothread.call_later(DEEP_IDLE_POLL, self._deep_look)

    def _awake(self) -> None:
        """The page changed while deep idle: back to the loop's back-off."""
        self._deep.cancel()
        self._deep = None
        io = self.ctrl.iothread
        io.remove_poller(self.poll)
        io.add_poller(self.poll, before_sleep=self.before_sleep, periodic=True)

    # -------------------------------------------------------- real writes
    def read(self, offset: int) -> int:
        if self._map is not None:
            return int.from_bytes(self._map[offset:offset + 4], "little")
        return 0  # trapped doorbells are write-only

    def write(self, offset: int, size: int, value: int) -> None:
        """A BAR0 write at or above the doorbell area."""
        if offset >= DOORBELL_PAGE_OFFSET + self.area_size:
            return
        if size == 8 and not offset & 7:
            self.write(offset, 4, value & 0xFFFFFFFF)
            self.write(offset + 4, 4, value >> 32)
            return
        if size != 4 or offset & 3:
            log.debug("controller %d: ignoring %d-byte doorbell write at %#x", self.ctrl.cntlid, size, offset)
            return
        self.real_writes += 1
        if self._map is not None:
            self._map[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
            self.poll()
            return
        index = (offset - DOORBELL_PAGE_OFFSET) >> 2
        self.ring(index, value)
        if not index & 1 or self.ctrl.engine.has_waiting_cqes:
            # An SQ tail; or a CQ head that SQs stopped at a full CQ wait for (a CQ head
            # otherwise gives a round nothing to do: its pending completions were posted).
            self.ctrl.kick()

    def ring(self, index: int, value: int) -> None:
        """One doorbell value: SQ y tail at index 2y, CQ y head at 2y+1.

        For a shadowed I/O queue the written value is only a wake-up: the value is
        read from the shadow buffer instead. A trapped write may arrive after the
        IOThread already consumed newer shadow values (the host updates the shadow
        before it rings; a client may also post the write, NO_REPLY); taking its
        stale value would move a tail (or a CQ head) backwards.
        """
        engine = self.ctrl.engine
        if not engine.running:
            return
        qid = index >> 1
        if T.NVME_DOORBELL.enabled:
            T.NVME_DOORBELL.emit(ctrl=self.ctrl.name, qid=qid, kind="cq" if index & 1 else "sq", value=value)
        shadowed = False
        if qid and self.shadow is not None:
            views = self._views()
            if views is not None and index < len(views[0]):
                shadowed = True
                value = views[0][index]
        if index & 1:
            cq = engine.cq(qid)
            if cq is None:
                self._invalid(AER_INFO_INVALID_DB_REGISTER, index, value)
            elif value >= cq.size:
                self._invalid(AER_INFO_INVALID_DB_VALUE, index, value)
            else:
                engine.set_cq_head(cq, value)
        else:
            sq = engine.sq(qid)
            if sq is None:
                self._invalid(AER_INFO_INVALID_DB_REGISTER, index, value)
            elif value >= sq.size:
                self._invalid(AER_INFO_INVALID_DB_VALUE, index, value)
            else:
                engine.set_sq_tail(sq, value)
                if shadowed:
                    self._set_ei(index, event_idx_behind(value, sq.size))

    def _invalid(self, info: int, index: int, value: int) -> None:
        log.debug("controller %d: invalid doorbell write %#x to %s %d", self.ctrl.cntlid, value,
                  "CQ" if index & 1 else "SQ", index >> 1)
        self.ctrl.post_async_event(AsyncEventType.ERROR, info, LogPage.ERROR)

    # ------------------------------------------------------------ queues
    def queue_created(self, qid: int, is_cq: bool) -> None:
        """A new queue's doorbell starts at 0 (stale values would be lost writes)."""
        index = 2 * qid + int(is_cq)
        self._zero(index)
        self._active_end = max(self._active_end, 8 * (qid + 1))
        if qid and self.shadow is not None:
            self._shadow_add(qid, is_cq)

    def queue_deleted(self, qid: int, is_cq: bool) -> None:
        index = 2 * qid + int(is_cq)
        self._zero(index)
        self._bad.pop(index, None)
        engine = self.ctrl.engine
        top = max((q.qid for q in (*engine.sqs, *engine.cqs) if q is not None), default=0)  # qid's is gone
        self._active_end = 8 * (top + 1)
        if not is_cq:
            self._shadow_sqs = [sq for sq in self._shadow_sqs if sq.qid != qid]

    def _zero(self, index: int) -> None:
        if self._map is None:
            return
        off = DOORBELL_PAGE_OFFSET + 4 * index
        self._map[off:off + 4] = bytes(4)
        if 4 * index + 4 <= len(self._last):
            self._last[4 * index:4 * index + 4] = bytes(4)

    # ------------------------------------------------------------ shadow
    def configure_shadow(self, dbs: int, eis: int) -> None:
        """Doorbell Buffer Config: validate and start using the buffers (Invalid Field if bad)."""
        ctrl = self.ctrl
        page = ctrl.page_size
        for addr in (dbs, eis):
            if not addr or addr & (page - 1) or not ctrl.mapped(addr, page):
                raise NvmeError(Status.INVALID_FIELD)
        if dbs == eis:
            raise NvmeError(Status.INVALID_FIELD)
        length = 8 * self.nqueues
        shadow = ShadowBuffers(dbs, eis, length)
        try:
            shadow.map(ctrl.memory)
        except (MemoryFault, ValueError):
            # The host sized its buffers for the queues it uses (Linux: its queue count),
            # not for max-ioqpairs: take what fits in the page(s) it gave us.
            shadow = ShadowBuffers(dbs, eis, page)
            try:
                shadow.map(ctrl.memory)
            except (MemoryFault, ValueError):
                raise NvmeError(Status.INVALID_FIELD) from None
        self.drop_shadow()
        self.shadow = shadow
        engine = ctrl.engine
        for qid in range(1, self.nqueues):
            if engine.cqs[qid] is not None:
                self._shadow_add(qid, True)
            if engine.sqs[qid] is not None:
                self._shadow_add(qid, False)
        if self._map is None:
            self._poll_on()

    def drop_shadow(self) -> None:
        if self.shadow is not None:
            self.shadow.release()
            self.shadow = None
        self._shadow_sqs = []
        self._bad.clear()
        if self._map is None:
            self._poll_off()

    def release_views(self) -> None:
        """Before a DMA unmap: the shadow views go; they are taken again on next use."""
        if self.shadow is not None:
            self.shadow.release()

    def _views(self) -> tuple[memoryview, memoryview] | None:
        shadow = self.shadow
        if shadow is None:
            return None
        if shadow.dbs is None:
            try:
                shadow.map(self.ctrl.memory)
            except (MemoryFault, ValueError, AttributeError) as exc:
                self.drop_shadow()
                self.ctrl.fatal(f"shadow doorbell buffers not in guest memory: {exc}")
                return None
        return shadow.dbs, shadow.eis  # type: ignore[return-value]

    def _shadow_add(self, qid: int, is_cq: bool) -> None:
        views = self._views()
        if views is None:
            return
        dbs, eis = views
        index = 2 * qid + int(is_cq)
        if index >= len(dbs):
            return      # beyond the host's buffer: this queue keeps real doorbells
        # The slot starts at the queue's current value: a recreated queue's slot still
        # holds the old queue's last value, which must not be read as a new tail. The
        # host does not touch the slot before the Create command completes.
        engine = self.ctrl.engine
        if is_cq:
            cq = engine.cqs[qid]
            dbs[index] = cq.head if cq is not None else 0
            eis[index] = event_idx_behind(cq.head, cq.size) if cq is not None else 0
        else:
            sq = engine.sqs[qid]
            dbs[index] = sq.tail if sq is not None else 0
            eis[index] = sq.tail if sq is not None else 0   # the first submission rings
            if sq is not None:
                self._shadow_sqs.append(sq)
                self._shadow_sqs.sort(key=lambda q: q.qid)

    def _set_ei(self, index: int, value: int) -> None:
        views = self._views()
        if views is not None and index < len(views[1]):
            views[1][index] = value

    def _shadow_value(self, dbs: memoryview, index: int, size: int) -> int | None:
        """The host's shadow value for slot ``index``, or None (invalid: reported once)."""
        value = dbs[index]
        if value >= size:
            if self._bad.get(index) != value:
                self._bad[index] = value
                self._invalid(AER_INFO_INVALID_DB_VALUE, index, value)
            return None
        return value

    def _refresh_shadow(self) -> bool:
        """Read the shadow tails of the shadowed SQs; True if one moved. EventIdx stays behind."""
        shadow = self.shadow
        dbs = shadow.dbs if shadow is not None else None
        if dbs is None:
            views = self._views()
            if views is None:
                return False
            dbs = views[0]
        eis = self.shadow.eis  # type: ignore[union-attr]
        moved = False
        for sq in self._shadow_sqs:
            index = sq.qid << 1
            value = dbs[index]
            if value == sq.tail:
                continue
            value = self._shadow_value(dbs, index, sq.size)
            if value is None or value == sq.tail:
                continue
            sq.tail = value
            self.shadow_updates += 1
            moved = True
            eis[index] = event_idx_behind(value, sq.size)  # type: ignore[index]
        return moved

    def refresh_cq(self, cq: "CompletionQueue") -> bool:
        """Take a shadowed CQ's head from the shadow buffer (the CQ looks full, or INTx is about
        to decide its level). True if it has room now."""
        if cq.qid and self.shadow is not None:
            views = self._views()
            index = (cq.qid << 1) | 1
            if views is not None and index < len(views[0]):
                value = self._shadow_value(views[0], index, cq.size)
                if value is not None and value != cq.head:
                    cq.head = value
                    self.shadow_updates += 1
        return not cq.full()

    def arm_cq_head(self, cq: "CompletionQueue") -> None:
        """INTx: make the host's next head update of this shadowed CQ ring the real doorbell
        (the BAR access in which QEMU sees the guest's EOI). EventIdx = the head as the
        shadow buffer has it now; read again after a fence, since the host may have moved
        it before it could see our EventIdx (then the caller finds the CQ empty)."""
        if not cq.qid or self.shadow is None:
            return
        self.refresh_cq(cq)
        self.want_cq_head(cq)
        with _FENCE:
            pass
        self.refresh_cq(cq)

    def want_cq_head(self, cq: "CompletionQueue") -> None:
        """Completions wait for room: make the host's next CQ head update ring."""
        if cq.qid and self.shadow is not None:
            self._set_ei((cq.qid << 1) | 1, cq.head)

    def _flush_cqs(self) -> bool:
        """Shadow CQ heads of full CQs (completions or submissions waiting for room); True
        if one has room now (its completions were posted; a round follows)."""
        worked = False
        for cq in self.ctrl.engine.cqs:
            if cq is not None and cq.qid and (cq.pending or cq.full()):
                if self.refresh_cq(cq):
                    if cq.pending:
                        self.ctrl.engine.flush_pending(cq)
                    worked = True
                else:
                    self.want_cq_head(cq)
        return worked

    # ------------------------------------------------------------ polling
    def poll(self) -> bool:
        """IOThread poller: mmap slots and/or shadow tails that changed; run a round if so."""
        engine = self.ctrl.engine
        if not engine.running:
            return False
        moved = False
        if self._map is not None:
            nbytes = self._nbytes
            cur = self._map[DOORBELL_PAGE_OFFSET:DOORBELL_PAGE_OFFSET + nbytes]
            if cur != self._last:
                new = memoryview(cur).cast("I")
                old = memoryview(self._last).cast("I")
                # The slots of existing queues first; the rest (writes to queues that do not
                # exist: Invalid Doorbell Register) only when that part of the page changed.
                end = self._active_end
                changed = [(i, new[i]) for i in range(end >> 2) if new[i] != old[i]]
                if cur[end:] != self._last[end:]:
                    changed += [(i, new[i]) for i in range(end >> 2, nbytes >> 2) if new[i] != old[i]]
                old.release()
                new.release()
                self._last = bytearray(cur)
                self.page_updates += len(changed)
                for index, value in changed:
                    self.ring(index, value)
                moved = True
        if self.shadow is not None:
            if self._refresh_shadow():
                moved = True
            if engine.has_waiting_cqes:
                if self._flush_cqs():
                    moved = True
                engine.has_waiting_cqes = any(cq is not None and (cq.pending or cq.full()) for cq in engine.cqs)
        if moved or self.more:
            if self._quiet_since:
                self._quiet_since = 0.0
                if self._deep is not None:
                    self._awake()
            self.more = engine.round()
            return True
        if self._map is not None and self.polling:
            self._quiet()
        return False

    def before_sleep(self) -> bool:
        """The IOThread is about to sleep: publish EventIdx = consumed tail for every shadowed
        SQ so the next submission rings, then look once more (the host may have written
        its shadow before it could see our EventIdx). True if work showed up."""
        shadow = self.shadow
        if shadow is None or not self.ctrl.engine.running:
            return False
        views = self._views()
        if views is None:
            return False
        dbs, eis = views
        for sq in self._shadow_sqs:
            eis[sq.qid << 1] = sq.tail
        engine = self.ctrl.engine
        waiting = [cq for cq in engine.cqs if cq is not None and cq.qid and (cq.pending or cq.full())] \
            if engine.has_waiting_cqes else []
        for cq in waiting:                      # completions wait for room: the next head update rings
            eis[(cq.qid << 1) | 1] = cq.head
        with _FENCE:
            pass
        for cq in waiting:
            index = (cq.qid << 1) | 1
            if index < len(dbs) and dbs[index] != cq.head:
                return True
        for sq in self._shadow_sqs:
            index = sq.qid << 1
            value = dbs[index]
            if value != sq.tail and self._bad.get(index) != value:
                return True
        return self.more
