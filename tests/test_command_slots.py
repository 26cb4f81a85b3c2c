"""Per-slot command objects (``SubmissionQueue.commands``, ``Command.refill``) through the real
controller and the vfio-user client.

The host may rewrite an SQ slot as soon as the head passed it, completed or not. These tests
wrap small SQs many times while earlier laps' commands are still held (offloaded file I/O at a
gate, fault-injector delays and drops, an AER) and check that every completion carries its own
CID, status and data; and that a reused object carries nothing (``result``, ``extra``) from the
command it held before.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import MISSING, fields

import pytest

from nvshell.device.backends import FileBackend, MemoryBackend
from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import SQE, AdminOpcode, NvmOpcode
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, status, wait_until

BLOCK = 4096
SQ_SIZE = 4          # every fourth command reuses a slot


def pattern(nsid: int, lba: int) -> bytes:
    return struct.pack("<II", nsid, lba) * (BLOCK // 8)


def submit_io(g: NvmeTestHost, opcode: int, nsid: int, lba: int, buf: int) -> int:
    return g.submit(opcode, 1, nsid=nsid, dptr1=buf, cdw10=lba, cdw12=0)


def lap_sync_reads(g: NvmeTestHost, nsid: int, count: int, held: set[int]) -> None:
    """``count`` reads of ``nsid`` (completing at once), one at a time; each CQE is its own."""
    for i in range(count):
        lba = i % 16
        g.ram.write(g.buf, bytes(BLOCK))
        cid = submit_io(g, NvmOpcode.READ, nsid, lba, g.buf)
        e = g.reap(1)[0]
        assert e.cid not in held, f"a held command (cid {e.cid}) completed during the laps"
        assert (e.cid, status(e), e.dw0) == (cid, 0, 0)
        assert g.ram.read(g.buf, BLOCK) == pattern(nsid, lba), f"read {i} (LBA {lba})"


def outstanding(g: NvmeTestHost) -> set[int]:
    return g.run(lambda: set(g.ctrl.engine.sq(1).deferred))


@pytest.fixture
def two_ns(tmp_path):
    """NSID 1 on a file (its I/O runs on the worker pool, DEFERRED), NSID 2 in memory (I/O
    completes inside the round): one SQ of ``SQ_SIZE`` slots serves both."""
    g = NvmeTestHost.serve(tmp_path, name="slots", ram_size=16 << 20)
    backend = FileBackend(str(tmp_path / "ns1.img"), 1 << 20)
    try:
        g.target.add_namespace(NvmNamespace(backend, lba_size=BLOCK), notify=False)
        g.target.add_namespace(NvmNamespace(MemoryBackend(1 << 20), lba_size=BLOCK), notify=False)
        g.enable()
        g.create_io_queue(1, SQ_SIZE)
        for nsid in (1, 2):
            for lba in range(16):
                g.write(lba, pattern(nsid, lba), nsid=nsid)
        yield g, backend
    finally:
        g.close()
        backend.close()


def test_sq_wraps_while_offloaded_file_io_is_held(two_ns):
    """Three file commands of the first lap (two reads, a write) wait at a gate in their
    workers while five more laps of memory reads go through the same slots; once the gate
    opens, each held command completes with its own CID, status and data."""
    g, backend = two_ns
    gate, entered = threading.Event(), []
    real_readinto, real_write = backend.readinto, backend.write
    held_lbas = {3, 5, 9}

    def gated(real):
        def io(offset, buf):
            if offset // BLOCK in held_lbas:
                entered.append(offset // BLOCK)
                assert gate.wait(20), "the test never opened the gate"
            return real(offset, buf)
        return io

    backend.readinto, backend.write = gated(real_readinto), gated(real_write)
    bufs = {lba: g.alloc(BLOCK) for lba in held_lbas}
    g.ram.write(bufs[9], b"\x5a" * BLOCK)
    try:
        held = {submit_io(g, NvmOpcode.READ, 1, 3, bufs[3]): 3,
                submit_io(g, NvmOpcode.READ, 1, 5, bufs[5]): 5,
                submit_io(g, NvmOpcode.WRITE, 1, 9, bufs[9]): 9}
        wait_until(lambda: len(entered) == 3, 10, "three file commands in their workers")
        lap_sync_reads(g, 2, 5 * SQ_SIZE, set(held))
        assert outstanding(g) == set(held)
    finally:
        gate.set()
    done = {e.cid: e for e in g.reap(1, 3, timeout=10)}
    assert set(done) == set(held)
    assert all((status(e), e.dw0) == (0, 0) for e in done.values())
    assert g.ram.read(bufs[3], BLOCK) == pattern(1, 3)
    assert g.ram.read(bufs[5], BLOCK) == pattern(1, 5)
    assert g.read(9, 1, nsid=1) == b"\x5a" * BLOCK
    assert outstanding(g) == set()


def test_sq_wraps_while_faults_delay_and_hold_commands(two_ns):
    """A delayed read and a dropped one (held until Abort) stay outstanding over five laps;
    the Abort finds the dropped command by its CID, the delay releases the other, each with
    its own CQE."""
    g, _ = two_ns
    faults = FaultSet()
    injector = g.run(install, g.ctrl, faults)
    try:
        g.run(faults.add, FaultRule.from_args({"id": "slow", "opcode": "read", "nsid": 2, "slba": 7, "nlb": 1,
                                               "action": "delay", "delay": 1500}))
        g.run(faults.add, FaultRule.from_args({"id": "hold", "opcode": "read", "nsid": 2, "slba": 8, "nlb": 1,
                                               "action": "drop"}))
        slow_buf, hold_buf = g.alloc(BLOCK), g.alloc(BLOCK)
        slow = submit_io(g, NvmOpcode.READ, 2, 7, slow_buf)
        hold = submit_io(g, NvmOpcode.READ, 2, 8, hold_buf)
        wait_until(lambda: outstanding(g) == {slow, hold}, 5, "both reads held")
        for i in range(5 * SQ_SIZE):                      # LBAs 0..6: no rule matches
            g.ram.write(g.buf, bytes(BLOCK))
            cid = submit_io(g, NvmOpcode.READ, 2, i % 7, g.buf)
            e = g.reap(1)[0]
            assert (e.cid, status(e)) == (cid, 0)
            assert g.ram.read(g.buf, BLOCK) == pattern(2, i % 7)
        assert outstanding(g) == {slow, hold}, "the delay ran out during the laps: not a wrap test"
        abort = g.cmd(AdminOpcode.ABORT, cdw10=hold << 16 | 1)
        assert (status(abort), abort.dw0 & 1) == (0, 0)          # aborted
        done = {e.cid: e for e in g.reap(1, 2, timeout=10)}
        assert set(done) == {slow, hold}
        assert status(done[hold]) == Status.ABORT_REQUESTED
        assert status(done[slow]) == 0 and g.ram.read(slow_buf, BLOCK) == pattern(2, 7)
        assert g.ram.read(hold_buf, BLOCK) == bytes(BLOCK)       # never ran
    finally:
        g.run(injector.uninstall)


def test_aer_outstanding_across_many_admin_laps(tmp_path):
    """An AER submitted first stays outstanding while the 4-slot admin SQ wraps ten times,
    then completes with its own CID and the event."""
    g = NvmeTestHost.serve(tmp_path, name="aer")
    try:
        g.enable(admin_depth=4)
        g.check(g.set_feature(0x0B, 0x2), "AEC: SMART temperature")
        g.request_aen()
        for _ in range(10 * 4):
            e = g.get_feature(0x07)                                   # Number of Queues
            assert status(e) == 0 and e.dw0 == 0x00030003
        assert g.aens(timeout=0) == []
        g.check(g.set_feature(0x04, 300), "temperature threshold below the composite temperature")
        assert g.aens() == [1 | 0x01 << 8 | 0x02 << 16]       # SMART / temperature / log page 02h
    finally:
        g.close()


def test_a_reused_slot_starts_with_no_result(tmp_path):
    """On a 2-slot admin SQ every Identify reuses the object of the Get Features before it in
    its slot: DW0 is the Identify's own (0), not the feature's value."""
    g = NvmeTestHost.serve(tmp_path, name="result")
    try:
        g.enable(admin_depth=2)
        for _ in range(3):
            for _ in range(2):
                assert g.get_feature(0x07).dw0 == 0x00030003
            for _ in range(2):
                e, _data = g.admin(AdminOpcode.IDENTIFY, length=BLOCK, cdw10=0x01)
                assert (status(e), e.dw0, e.dw1) == (0, 0, 0)
    finally:
        g.close()


def last_error_lba(g: NvmeTestHost) -> tuple[int, int]:
    raw = g.log(0x01, 64)
    return (struct.unpack_from("<H", raw, 12)[0] >> 1) & 0x7FF, struct.unpack_from("<Q", raw, 16)[0]


def test_a_reused_slot_starts_with_empty_extra(tmp_path):
    """A failed protection check names its block in ``extra`` (the error log's LBA); the next
    command in that slot fails differently and its error log entry names its own LBA."""
    g = NvmeTestHost.serve(tmp_path, name="extra")
    try:
        g.target.add_namespace(NvmNamespace(MemoryBackend(1 << 20), lba_size=512, ms=8, pi=1), notify=False)
        g.enable()
        g.create_io_queue(1, 2)
        md = g.alloc(BLOCK)
        prchk_guard = 0x4 << 26
        for lap in range(3):
            g.ram.write(g.buf, b"\x11" * 512)
            g.ram.write(md, bytes(8))                 # a zero tuple: the guard does not match
            e = g.cmd(NvmOpcode.WRITE, 1, nsid=1, dptr1=g.buf, mptr=md, cdw10=100 + lap,
                      cdw12=prchk_guard, cdw14=100 + lap)
            assert status(e) == Status.GUARD_CHECK_ERROR
            assert last_error_lba(g) == (Status.GUARD_CHECK_ERROR, 100 + lap)
            e = g.cmd(NvmOpcode.READ, 1, nsid=1, dptr1=g.buf, mptr=md, cdw10=0)   # the other slot
            assert status(e) == 0
            e = g.cmd(NvmOpcode.READ, 1, nsid=1, dptr1=g.buf, mptr=md, cdw10=5000 + lap)  # past the end
            assert status(e) == Status.LBA_OUT_OF_RANGE
            assert last_error_lba(g) == (Status.LBA_OUT_OF_RANGE, 5000 + lap)
            g.cmd(NvmOpcode.READ, 1, nsid=1, dptr1=g.buf, mptr=md, cdw10=0)       # realign the slots
    finally:
        g.close()


def test_refill_resets_every_field_from_the_declarations() -> None:
    """Whatever a command left in an object, ``refill`` leaves only the new SQE's fields and
    each other field's declared default -- for every field, present and future."""
    first = {name: i + 1 for i, name in enumerate(SQE.names)}
    cmd = Command.from_sqe(5, SQE.struct.unpack_from(SQE.pack(**first)))
    for f in fields(Command):
        if f.name not in SQE.names and f.name != "sqid":
            setattr(cmd, f.name, {"stale": 1} if f.default_factory is not MISSING else 12345)
    extra_before = cmd.extra
    second = {name: 100 + i for i, name in enumerate(SQE.names)}
    Command.refill(cmd, SQE.struct.unpack_from(SQE.pack(**second)))
    assert cmd.sqid == 5
    for f in fields(Command):
        if f.name in SQE.names:
            assert getattr(cmd, f.name) == second[f.name], f.name
        elif f.name != "sqid":
            want = f.default_factory() if f.default_factory is not MISSING else f.default
            assert getattr(cmd, f.name) == want, f.name
    assert extra_before == {"stale": 1}, "the old dict is replaced, not cleared under its holder"
