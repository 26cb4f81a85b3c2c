"""Submission and completion queues living in guest memory.

Queues are physically contiguous (CAP.CQR=1), so an entry's guest address is
``base + index * entry_size``. Each queue maps its ring once (``map``: one
memoryview over the whole ring, taken on first use) and drops it in
``release`` -- on deletion, reset, and before any DMA unmap (the transport
closes the mapping after ``dma_unmapping``, which fails while a view is
exported). A ring that spans two DMA regions, or whose memory is gone, raises
``MemoryFault`` from ``map`` and the controller goes fatal, as a device whose
queue memory vanished would.

A completion entry is written in two steps, the phase-tag word last, so a host
polling the CQ concurrently never sees the new phase before the rest of the
entry (x86 keeps stores in order; the two memcpy calls are the barrier).
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING

from nvshell.device.nvme.spec import CQE, SQE
from nvshell.device.trace import LATENCY_BUCKETS

if TYPE_CHECKING:
    from nvshell.device.memory import HostMemory
    from nvshell.device.nvme.commands import Command

SQE_SIZE = SQE.size
CQE_SIZE = CQE.size
_CQE_STRUCT = CQE.struct
#: Bytes of a CQE before the status/phase halfword.
_CQE_BODY = CQE.offsets["status"]
#: The CQE without its last field (status + phase), and that field: written in that order.
_BODY_PACK = struct.Struct("<" + _CQE_STRUCT.format.lstrip("<=")[:-1]).pack_into
_STATUS_PACK = struct.Struct("<" + _CQE_STRUCT.format.lstrip("<=")[-1]).pack_into
assert struct.calcsize("<" + _CQE_STRUCT.format.lstrip("<=")[:-1]) == _CQE_BODY == CQE.size - 2


class CompletionQueue:
    """An I/O or admin completion queue (``qid`` 0 is the admin CQ)."""

    __slots__ = ("qid", "base", "size", "head", "tail", "phase", "ien", "vector", "sqs", "pending",
                 "irq_pending", "unsignalled", "posted", "ring")

    def __init__(self, qid: int, base: int, size: int, ien: bool, vector: int):
        self.qid = qid
        self.base = base
        self.size = size
        self.head = 0
        self.tail = 0
        self.phase = 1
        self.ien = ien
        self.vector = vector
        #: Submission queues completing here (Delete I/O CQ refuses while non-empty).
        self.sqs: list[SubmissionQueue] = []
        #: Completions waiting for room (CQ full): packed CQEs without the phase bit.
        self.pending: deque[tuple[int, int, int, int, int, int]] = deque()
        #: An entry was posted since its vector last fired.
        self.irq_pending = False
        #: Entries posted since the last hand-over to the interrupt unit (coalescing counts them).
        self.unsignalled = 0
        #: Entries ever posted (statistics, `info queues`).
        self.posted = 0
        #: The whole ring in guest memory (writable), or None until first use.
        self.ring: memoryview | None = None

    def map(self, memory: "HostMemory") -> memoryview:
        self.ring = memory.view(self.base, self.size * CQE_SIZE, True)
        return self.ring

    def release(self) -> None:
        if self.ring is not None:
            self.ring.release()
            self.ring = None

    def full(self) -> bool:
        tail = self.tail + 1
        if tail == self.size:
            tail = 0
        return tail == self.head

    def used(self) -> int:
        return (self.tail - self.head) % self.size

    def write_entry(self, memory: "HostMemory", dw0: int, dw1: int, sqhd: int, sqid: int, cid: int,
                    sf: int) -> None:
        """Write one CQE at ``tail`` with the current phase and advance (caller checked ``full()``).

        Straight into the mapped ring: the body first, then the status/phase halfword."""
        ring = self.ring
        if ring is None:
            ring = self.map(memory)
        off = self.tail * CQE_SIZE
        _BODY_PACK(ring, off, dw0 & 0xFFFFFFFF, dw1 & 0xFFFFFFFF, sqhd, sqid, cid)
        _STATUS_PACK(ring, off + _CQE_BODY, (sf & 0xFFFE) | self.phase)
        tail = self.tail + 1
        if tail == self.size:
            tail = 0
            self.phase ^= 1
        self.tail = tail
        self.irq_pending = True
        self.unsignalled += 1
        self.posted += 1


class SubmissionQueue:
    """An I/O or admin submission queue (``qid`` 0 is the admin SQ)."""

    __slots__ = ("qid", "base", "size", "head", "tail", "cq", "qprio", "deferred", "deleted", "fetched",
                 "ring", "bytes_read", "bytes_written", "latency", "commands")

    def __init__(self, qid: int, base: int, size: int, cq: CompletionQueue, qprio: int = 0):
        self.qid = qid
        self.base = base
        self.size = size
        self.head = 0
        self.tail = 0
        self.cq = cq
        self.qprio = qprio
        #: Commands a handler kept (returned DEFERRED), by CID; completed or aborted later.
        self.deferred: dict[int, "Command"] = {}
        #: Per slot, the command object the next SQE fetched from that slot is decoded into
        #: (``Command.refill``), made on the slot's first use; None: make a fresh one.
        #:
        #: Why per slot, and why safe: the host may rewrite a slot as soon as the head passed it,
        #: whether or not that command completed, so an object is only reusable once nothing
        #: holds it. A command that completes synchronously (the common case) is done with
        #: when ``execute`` returns, before this SQ fetches anything else; one the controller
        #: keeps (DEFERRED: offloaded file I/O, an AER, a delayed or dropped fault, a zoned
        #: write on a file) is held by ``deferred`` and by its completer (a worker's closure, a
        #: timer, the AER list) for an unknown time, even after it completed -- a late
        #: completion must still find *its* object, not a reused one, to see that it is gone
        #: (``CommandEngine.complete``'s identity check). So the engine detaches a kept command
        #: from its slot (``CommandEngine.defer``) and never takes it back. A free list would
        #: need the same rule (kept objects cannot return to it), and would give nothing more:
        #: slots make the owner obvious (slot ``i`` belongs to whatever the host put there
        #: last) without assuming fetches of one SQ never nest.
        self.commands: list["Command | None"] = [None] * size
        self.deleted = False
        #: Commands ever fetched (statistics).
        self.fetched = 0
        #: Data bytes of the commands completed here (``Command.nbytes``: the SMART tallies' share
        #: of this queue), and a log2 histogram of their latency in us (``trace.bucket_of``),
        #: filled while the engine times commands (``CommandEngine.timing``: ``info iostat``).
        self.bytes_read = 0
        self.bytes_written = 0
        self.latency = [0] * LATENCY_BUCKETS
        #: The whole ring in guest memory, or None until first use.
        self.ring: memoryview | None = None

    def map(self, memory: "HostMemory") -> memoryview:
        self.ring = memory.view(self.base, self.size * SQE_SIZE)
        return self.ring

    def release(self) -> None:
        if self.ring is not None:
            self.ring.release()
            self.ring = None

    def entry_address(self, index: int) -> int:
        return self.base + index * SQE_SIZE
