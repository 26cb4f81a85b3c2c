"""File backends off the IOThread: concurrent, out-of-order completions through the real
controller, Flush ordering, and O_DIRECT (``direct=on``) with aligned and misaligned buffers."""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading

import pytest

from nvshell.device.backends import BackendError, FileBackend, open_backend
from nvshell.device.nvme.namespace import NvmNamespace
from tests.test_controller import Host, status

READ, WRITE, FLUSH = 0x02, 0x01, 0x00
BLOCK = 4096


@pytest.fixture
def file_host(tmp_path):
    h = Host("trap")
    backend = FileBackend(str(tmp_path / "ns.img"), 64 << 20)
    ns = NvmNamespace(backend, lba_size=BLOCK)
    ns.nsid = 1
    h.io.run(h.ctrl.attach_namespace, ns)
    h.enable()
    h.create_queue_pair(1, entries=64, vector=1)
    yield h, backend
    h.close()
    backend.close()


def _rw(h: Host, opcode: int, lba: int, buf: int, nblocks: int = 1, ring: bool = True) -> int:
    return h.submit(1, opcode, nsid=1, dptr1=buf, dptr2=buf + BLOCK if nblocks == 2 else 0,
                    cdw10=lba, cdw12=nblocks - 1, ring=ring)


def test_file_io_runs_concurrently_and_completes_out_of_order(file_host):
    """A Flush held in its worker does not hold back the reads submitted after it.

    NVMe gives a Flush no ordering against reads or later commands (it covers the
    writes completed before it was submitted), so the product may complete those reads
    first. Timing (a slow fdatasync) cannot show that on a loaded host: the Flush waits
    at a gate the test opens only once all eight reads have completed."""
    h, backend = file_host
    pattern = h.alloc(BLOCK)
    for lba in range(8):
        h.write(pattern, struct.pack("<Q", lba) * (BLOCK // 8))
        cid = _rw(h, WRITE, lba, pattern)
        e = h.reap(1)
        assert e.cid == cid and status(e) == 0
    flushing, release = threading.Event(), threading.Event()
    real_flush = backend.flush

    def gated_flush() -> None:
        flushing.set()
        assert release.wait(20), "the test never opened the Flush gate"
        real_flush()                                     # the real fdatasync still runs

    backend.flush = gated_flush
    bufs = [h.alloc(BLOCK) for _ in range(8)]
    flush_cid = h.submit(1, FLUSH, nsid=1, ring=False)
    read_cids = [_rw(h, READ, lba, bufs[lba], ring=False) for lba in range(8)]
    h.ring(2, h.sqs[1]["tail"])                          # one doorbell: Flush then 8 reads
    try:
        assert flushing.wait(20)                         # the Flush is in its worker, held
        reads = [h.reap(1, timeout=20) for _ in range(8)]
        assert sorted(e.cid for e in reads) == sorted(read_cids)
        assert all(status(e) == 0 for e in reads)
        assert h.io.run(lambda: h.ctrl.workers.in_flight) == 1   # only the Flush is left
    finally:
        release.set()
    e = h.reap(1, timeout=20)
    assert e.cid == flush_cid and status(e) == 0
    for lba in range(8):
        assert h.read(bufs[lba], BLOCK) == struct.pack("<Q", lba) * (BLOCK // 8)
    assert h.io.run(lambda: h.ctrl.workers.max_in_flight) >= 2
    assert h.io.run(lambda: h.ctrl.workers.in_flight) == 0


def test_flush_covers_completed_writes(file_host, tmp_path):
    h, backend = file_host
    buf = h.alloc(BLOCK)
    h.write(buf, b"\xA5" * BLOCK)
    for lba in range(16):
        _rw(h, WRITE, lba, buf, ring=False)
    h.ring(2, h.sqs[1]["tail"])
    for _ in range(16):
        assert status(h.reap(1)) == 0
    # Every write completed: a Flush now must find their data in the file (and sync it).
    h.submit(1, FLUSH, nsid=1)
    assert status(h.reap(1, timeout=20)) == 0
    with open(tmp_path / "ns.img", "rb") as f:
        assert f.read(16 * BLOCK) == b"\xA5" * (16 * BLOCK)
    # FUA: durable before the CQE, through the worker as well.
    h.write(buf, b"\x5A" * BLOCK)
    h.submit(1, WRITE, nsid=1, dptr1=buf, cdw10=20, cdw12=1 << 30)
    assert status(h.reap(1, timeout=20)) == 0
    with open(tmp_path / "ns.img", "rb") as f:
        f.seek(20 * BLOCK)
        assert f.read(BLOCK) == b"\x5A" * BLOCK


def test_out_of_range_file_read_still_fails_cleanly(file_host):
    h, _ = file_host
    buf = h.alloc(BLOCK)
    h.submit(1, READ, nsid=1, dptr1=buf, cdw10=(64 << 20) // BLOCK)    # one past the end
    assert status(h.reap(1)) == 0x80                                    # LBA Out of Range


def test_direct_backend_aligned_and_misaligned(tmp_path):
    path = str(tmp_path / "direct.img")
    b = open_backend("file", 1 << 20, path, direct=True)
    try:
        assert b.direct and fcntl.fcntl(b.fd, fcntl.F_GETFL) & os.O_DIRECT
        aligned = mmap.mmap(-1, 8192)
        aligned[:] = bytes(range(256)) * 32
        b.write(0, memoryview(aligned))                       # aligned buffer, offset, length
        out = mmap.mmap(-1, 8192)
        b.readinto(0, memoryview(out))
        assert out[:] == aligned[:]
        b.write(4096 + 512, b"x" * 512)                         # misaligned: read-modify-write
        assert b.read(4096, 4096) == aligned[4096:4608] + b"x" * 512 + aligned[5120:8192]
        odd = bytearray(1000)
        b.readinto(100, odd)                                     # misaligned read via bounce buffer
        assert bytes(odd) == aligned[100:1100]
        assert b.describe()["direct"] is True
    finally:
        b.close()
    with pytest.raises(BackendError, match="direct=on needs backend=file"):
        open_backend("memory", 1 << 20, direct=True)
