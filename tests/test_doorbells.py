"""Doorbells: Doorbell Buffer Config (shadow doorbells + EventIdx), BAR0 sized from
max-ioqpairs, interrupt coalescing. A ``ShadowHost`` plays the Linux driver's side of
the shadow protocol (write the shadow slot, then ring the real doorbell only when
``need_event`` says so) against the real controller on a real IOThread.
"""

from __future__ import annotations

import struct
import select
import time

import pytest

from nvshell.device.nvme.doorbells import bar0_size, event_idx_behind, need_event
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.nvme.status import Status
from tests.test_controller import CC_ENABLE, Host, status, trap_host  # noqa: F401 (fixture)

DBBC = AdminOpcode.DOORBELL_BUFFER_CONFIG


class ShadowHost(Host):
    """Host that, once ``use_shadow()`` succeeded, updates I/O doorbells as Linux does."""

    def __init__(self, doorbells: str = "trap", **cfg):
        super().__init__(doorbells, **cfg)
        self.dbs = self.eis = 0
        self.shadow_on = False
        self.real_rings = 0
        if self.db is not None:
            import mmap
            self.db.close()
            self.db = mmap.mmap(self.ctrl.pci.regions()[0].mmap_fd, self.ctrl.pci.bar0_size)

    def use_shadow(self) -> int:
        self.dbs, self.eis = self.alloc(4096), self.alloc(4096)
        e = self.cmd(DBBC, dptr1=self.dbs, dptr2=self.eis)
        self.shadow_on = status(e) == 0
        return status(e)

    def slot(self, base: int, index: int) -> int:
        return struct.unpack_from("<I", self.read(base + 4 * index, 4))[0]

    def ring(self, index: int, value: int) -> None:
        if self.shadow_on and index >= 2:
            old = self.slot(self.dbs, index)
            self.write(self.dbs + 4 * index, struct.pack("<I", value))
            if not need_event(self.slot(self.eis, index), value, old):
                return
        self.real_rings += 1
        super().ring(index, value)


@pytest.fixture(params=["trap", "mmap"])
def shost(request):
    h = ShadowHost(request.param)
    yield h
    h.close()


@pytest.fixture
def trap_shost():
    """A ShadowHost on trapped doorbells only (tests about posted doorbell messages)."""
    h = ShadowHost("trap")
    yield h
    h.close()


def test_event_idx_arithmetic_with_wrap():
    # Linux rings when EventIdx lies in [old, new), 16-bit arithmetic.
    assert need_event(0, 1, 0)                    # first submission after EventIdx = tail 0
    assert need_event(5, 8, 5) and need_event(7, 8, 5)
    assert not need_event(8, 8, 5) and not need_event(4, 8, 5)
    assert need_event(0xFFFF, 2, 0xFFFE)          # 16-bit wrap inside [old, new)
    assert not need_event(0xFFFD, 2, 0xFFFE)
    # Queue wrap (depth 16): old 14 -> new 1 covers 14, 15, 0.
    assert need_event(15, 1, 14) and need_event(0, 1, 14) and not need_event(1, 1, 14)
    # "Behind" EventIdx: the host moving on from the value we saw never rings...
    for size in (2, 16, 1024):
        for seen in (0, 1, size // 2, size - 1):
            ei = event_idx_behind(seen, size)
            new = (seen + 1) % size
            assert not need_event(ei, new, seen), (size, seen)
    # ...while EventIdx = the consumed tail makes the next submission ring.
    for size in (2, 16, 1024):
        for tail in (0, 1, size - 1):
            assert need_event(tail, (tail + 1) % size, tail)


def test_bar0_sized_from_max_ioqpairs():
    assert bar0_size(64) == 0x4000
    assert bar0_size(511) == 0x4000                       # 0x1000 + 512 * 8 = 0x2000
    assert bar0_size(1535) == 0x4000                      # 1536 * 8 = 0x3000
    assert bar0_size(1536) == 0x8000
    assert bar0_size(65534) == 0x100000                   # 0x1000 + 65535 * 8 -> 1 MiB


def test_doorbell_buffer_config_bad_addresses(shost):
    h = shost
    h.enable()
    good = h.alloc(4096)
    for dbs, eis in ((0, good), (good, 0), (good + 8, h.alloc(4096)), (good, good + 0x800),
                     (0x90000000, good), (good, 0x90000000), (good, good)):
        e = h.cmd(DBBC, dptr1=dbs, dptr2=eis)
        assert status(e) == Status.INVALID_FIELD, (hex(dbs), hex(eis))
    e = h.cmd(DBBC, dptr1=good, dptr2=h.alloc(4096), flags=1 << 6)     # PSDT: SGL not allowed
    assert status(e) == Status.INVALID_FIELD
    assert h.ctrl.doorbells.shadow is None


def _io(h: ShadowHost, qid: int, n: int) -> None:
    """Submit ``n`` reads of an absent namespace (they complete with Invalid NSID: no backend
    involved) in batches that fit the queue, and reap them."""
    batch = h.sqs[qid]["size"] - 1
    while n:
        k = min(n, batch)
        cids = [h.submit(qid, 0x02, nsid=7) for _ in range(k)]
        got = [h.reap(qid).cid for _ in range(k)]
        assert sorted(got) == sorted(cids)
        n -= k


def test_shadow_doorbells_rarely_ring_and_event_idx(shost):
    h = shost
    h.enable()
    h.create_queue_pair(1, entries=16, vector=1)
    assert h.use_shadow() == 0
    assert h.ctrl.doorbells.shadow is not None
    rings = h.real_rings
    for _ in range(20):                                  # wraps the 16-entry queues several times
        _io(h, 1, 5)
    submissions_and_heads = 20 * 5 * 2
    assert h.real_rings - rings < submissions_and_heads   # most updates went through the shadow only
    assert h.io.run(lambda: h.ctrl.doorbells.shadow_updates) > 0
    # Idle: the IOThread published EventIdx = consumed tail, so the next submission rings.
    deadline = time.monotonic() + 2
    while h.slot(h.eis, 2) != h.sqs[1]["tail"] and time.monotonic() < deadline:
        time.sleep(0.001)
    assert h.slot(h.eis, 2) == h.sqs[1]["tail"]
    before = h.real_rings
    _io(h, 1, 1)
    assert h.real_rings > before


def test_shadow_reset_and_queue_recreate(shost):
    h = shost
    h.enable()
    h.create_queue_pair(1, entries=8)
    assert h.use_shadow() == 0
    _io(h, 1, 11)
    # Delete and recreate the pair: the stale shadow values must not be taken as new tails.
    assert status(h.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=1)) == 0
    assert status(h.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=1)) == 0
    h.create_queue_pair(1, entries=8)
    assert h.slot(h.eis, 2) == 0                         # first submission on the new SQ rings
    _io(h, 1, 13)
    # Controller reset drops the buffers: after re-enable, real doorbells only.
    h.wr(0x14, 0)
    assert h.io.run(lambda: h.ctrl.doorbells.shadow) is None
    h.shadow_on = False
    h.enable()
    h.create_queue_pair(1, entries=8)
    rings = h.real_rings
    _io(h, 1, 3)
    assert h.real_rings - rings == 6
    # And the host can turn them on again.
    assert h.use_shadow() == 0
    _io(h, 1, 9)


def test_shadow_cq_full_waits_for_head(trap_shost):
    h = trap_shost
    h.enable()
    h.create_queue_pair(1, entries=4)
    assert h.use_shadow() == 0
    cids = [h.submit(1, 0x02, nsid=7) for _ in range(3)]
    got = [h.reap(1, ring=False).cid for _ in range(3)]   # consume without telling the controller
    more = [h.submit(1, 0x02, nsid=7) for _ in range(3)]  # the CQ is full for the controller
    h.ring(3, h.cqs[1]["head"])                           # head update via the shadow (rings if asked)
    got += [h.reap(1).cid for _ in range(3)]
    assert sorted(got) == sorted(cids + more)


def test_queue_ids_near_max_ioqpairs():
    for mode in ("trap", "mmap"):
        h = ShadowHost(mode, max_ioqpairs=700)
        try:
            assert h.ctrl.pci.bar0_size >= 0x1000 + 8 * 701
            h.enable()
            for qid in (511, 512, 699, 700):
                h.create_queue_pair(qid, entries=4, vector=1)
                _io(h, qid, 5)
            assert status(h.cmd(AdminOpcode.CREATE_IO_CQ, cdw10=3 << 16 | 701, cdw11=1 << 16 | 3,
                                dptr1=h.alloc(4096))) == Status.INVALID_QID
        finally:
            h.close()


def test_interrupt_coalescing(trap_host):
    h = trap_host
    h.enable()
    h.create_queue_pair(1, entries=16, vector=2)
    # THR = 3 (0's based: 4 entries), TIME = 50 (5 ms).
    assert status(h.cmd(AdminOpcode.SET_FEATURES, cdw10=0x08, cdw11=50 << 8 | 3)) == 0
    h.interrupts(2)
    for _ in range(4):
        h.submit(1, 0x02, nsid=7, ring=False)
    h.ring(2, h.sqs[1]["tail"])                      # one batch of 4: threshold reached, one interrupt
    for _ in range(4):
        h.reap(1)
    assert h.interrupts(2) == 1
    # One entry: below the threshold, the interrupt comes TIME after the entry, not before
    # (seen here no earlier than it was signalled).
    submitted = time.monotonic()
    h.submit(1, 0x02, nsid=7)
    h.reap(1)
    assert select.select([h.irq_fds[2]], [], [], 5)[0], "no interrupt"
    assert time.monotonic() - submitted >= 0.005
    assert h.interrupts(2) == 1
    # Coalescing Disable on vector 2 (Feature 09h): every batch interrupts at once.
    assert status(h.cmd(AdminOpcode.SET_FEATURES, cdw10=0x09, cdw11=1 << 16 | 2)) == 0
    h.submit(1, 0x02, nsid=7)
    h.reap(1)
    assert h.interrupts(2) == 1                       # fired in the same round as the CQE
    # The admin vector is never coalesced.
    h.interrupts(0)
    h.cmd(AdminOpcode.GET_FEATURES, cdw10=0x08)
    assert h.interrupts(0) == 1
    # Coalescing off again (TIME 0 = no delay): immediate on vector 2 without CD as well.
    assert status(h.cmd(AdminOpcode.SET_FEATURES, cdw10=0x09, cdw11=2)) == 0
    assert status(h.cmd(AdminOpcode.SET_FEATURES, cdw10=0x08, cdw11=0)) == 0
    h.interrupts(2)
    h.submit(1, 0x02, nsid=7)
    h.reap(1)
    assert h.interrupts(2) == 1


def test_one_interrupt_per_vector_per_batch(trap_host):
    h = trap_host
    h.enable()
    h.create_queue_pair(1, entries=16, vector=4)
    h.create_queue_pair(2, entries=16, vector=4)          # two CQs share vector 4
    h.interrupts(4)
    for qid in (1, 2):
        for _ in range(3):
            h.submit(qid, 0x02, nsid=7, ring=False)
    h.io.run(lambda: [h.ctrl.doorbells.ring(2, 3), h.ctrl.doorbells.ring(4, 3), h.ctrl.process()])
    for qid in (1, 2):
        for _ in range(3):
            h.reap(qid)
    assert h.interrupts(4) == 1


def test_late_real_doorbell_does_not_move_a_shadowed_tail_back(trap_shost):
    """A trapped doorbell write is a posted message: it may arrive after the controller took
    newer values from the shadow buffer. Its value must not be used (the tail would go
    backwards and stale entries would run again)."""
    h = trap_shost
    h.enable()
    h.create_queue_pair(1, entries=16)
    assert h.use_shadow() == 0
    _io(h, 1, 5)
    h.wr(0x1000 + 8, 2)                       # SQ 1 tail = 2, long overtaken by the shadow (5)
    h.wr(0x1000 + 12, 1)                      # CQ 1 head = 1, likewise
    assert h.io.run(h.ctrl.process) is False  # a round runs: nothing to do
    sq, cq = h.ctrl.engine.sqs[1], h.ctrl.engine.cqs[1]
    assert (sq.head, sq.tail) == (5, 5) and cq.head == 5
    assert h.peek(1) is None
    _io(h, 1, 3)


def test_mmap_deep_idle_looks_on_a_timer_and_wakes_on_the_first_doorbell(monkeypatch):
    """mmap mode: after DEEP_IDLE_AFTER without a doorbell change the IOThread stops its 2 ms
    back-off polling (an idle device must cost under 1% of a core) and looks on a timer; a
    doorbell written meanwhile -- admin or I/O, shadowed or not -- is still seen, and brings the
    back-off back; a controller reset leaves deep idle."""
    from nvshell.device.nvme import doorbells as db_mod

    monkeypatch.setattr(db_mod, "DEEP_IDLE_AFTER", 0.05)
    h = ShadowHost("mmap")
    try:
        h.enable()
        h.create_queue_pair(1)
        doorbells = h.ctrl.doorbells
        io = h.io

        def deep() -> bool:
            return h.io.run(lambda: doorbells.deep_idle)

        def wait_deep() -> None:
            deadline = time.monotonic() + 5
            while not deep():
                assert time.monotonic() < deadline, "never went deep idle"
                time.sleep(0.01)

        wait_deep()
        assert io.run(lambda: doorbells.poll in io._pollers and doorbells.poll not in io._periodic)
        assert status(h.cmd(AdminOpcode.GET_FEATURES, cdw10=0x07)) == 0     # admin doorbell while deep idle
        assert not deep() and io.run(lambda: doorbells.poll in io._periodic)
        wait_deep()
        assert h.cmd(0x00, qid=1, nsid=1).sqid == 1       # an I/O queue (a Flush: no namespace here)
        assert h.use_shadow() == 0
        wait_deep()
        assert h.cmd(0x00, qid=1, nsid=1).sqid == 1       # through the shadow buffer
        assert h.real_rings >= 1 and not deep()
        wait_deep()
        h.wr(0x14, 0)                                                        # CC.EN = 0
        assert io.run(lambda: (doorbells.deep_idle, doorbells.poll in io._pollers)) == (False, False)
    finally:
        h.close()
