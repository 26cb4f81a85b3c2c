"""Submission and completion queues living in guest memory.

Queues are physically contiguous (CAP.CQR=1), so an entry's guest address is
``base + index * entry_size``. We never keep a memoryview of a queue between
calls: an entry is looked up in ``GuestMemory`` each time it is touched (one
bisect), so a DMA_UNMAP can always close its mapping and an unmapped queue
turns into a ``DmaError`` instead of a dangling pointer.

A completion entry is written in two steps, the phase-tag word last, so a host
polling the CQ concurrently never sees the new phase before the rest of the
entry (x86 keeps stores in order; the two memcpy calls are the barrier).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from nvshell.device.nvme.spec import CQE, SQE

if TYPE_CHECKING:
    from nvshell.device.nvme.commands import Command

SQE_SIZE = SQE.size
CQE_SIZE = CQE.size
_CQE_STRUCT = CQE.struct
#: Bytes of a CQE before the status/phase halfword.
_CQE_BODY = CQE.offsets["status"]


class CompletionQueue:
    """An I/O or admin completion queue (``qid`` 0 is the admin CQ)."""

    __slots__ = ("qid", "base", "size", "head", "tail", "phase", "ien", "vector", "sqs", "pending",
                 "irq_pending", "posted", "_scratch")

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
        #: An entry was posted since the last interrupt (coalescing per round).
        self.irq_pending = False
        #: Entries ever posted (statistics, `info queues`).
        self.posted = 0
        self._scratch = bytearray(CQE_SIZE)

    def full(self) -> bool:
        tail = self.tail + 1
        if tail == self.size:
            tail = 0
        return tail == self.head

    def used(self) -> int:
        return (self.tail - self.head) % self.size

    def write_entry(self, memory: Any, dw0: int, dw1: int, sqhd: int, sqid: int, cid: int, sf: int) -> None:
        """Write one CQE at ``tail`` with the current phase and advance (caller checked ``full()``)."""
        scratch = self._scratch
        _CQE_STRUCT.pack_into(scratch, 0, dw0 & 0xFFFFFFFF, dw1 & 0xFFFFFFFF, sqhd, sqid, cid,
                              (sf & 0xFFFE) | self.phase)
        view = memory.view(self.base + self.tail * CQE_SIZE, CQE_SIZE, True)
        view[:_CQE_BODY] = scratch[:_CQE_BODY]
        view[_CQE_BODY:] = scratch[_CQE_BODY:]
        self.tail += 1
        if self.tail == self.size:
            self.tail = 0
            self.phase ^= 1
        self.irq_pending = True
        self.posted += 1


class SubmissionQueue:
    """An I/O or admin submission queue (``qid`` 0 is the admin SQ)."""

    __slots__ = ("qid", "base", "size", "head", "tail", "cq", "qprio", "deferred", "deleted", "fetched")

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
        self.deleted = False
        #: Commands ever fetched (statistics).
        self.fetched = 0

    def entry_address(self, index: int) -> int:
        return self.base + index * SQE_SIZE
