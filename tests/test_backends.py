"""Backends: sparse memory, file (persistence, punch hole), null, open_backend errors."""

from __future__ import annotations

import os
import threading

import pytest
from hypothesis import given, settings, strategies as st

from nvshell.device.backends import BackendError, FileBackend, MemoryBackend, NullBackend, open_backend

GiB = 1 << 30


def test_memory_sparse_stays_small():
    b = MemoryBackend(GiB)
    b.write(512 * 1000, b"\xab" * 512)
    assert b.allocated == MemoryBackend.CHUNK
    assert b.read(512 * 1000, 512) == b"\xab" * 512
    assert b.read(0, 4096) == bytes(4096)
    assert b.read(GiB - 512, 512) == bytes(512)


@pytest.mark.parametrize("chunk", [MemoryBackend.CHUNK, 1024])
def test_memory_freed_chunks_read_zero_and_serve_only_their_range(chunk):
    """A freed chunk gives its memory back (MADV_DONTNEED; sub-page chunks are zeroed) and
    reads as zeroes; its range's next write uses it again, with zeroes around the new data;
    other ranges get chunks of their own."""
    b = MemoryBackend(GiB, chunk)
    b.write(0, b"\xee" * (4 * chunk))
    b.discard(0, 4 * chunk)
    assert b.allocated == 0 and b.is_zero(0, 4 * chunk)
    assert b.read(0, 4 * chunk) == bytes(4 * chunk)
    far = GiB // 2
    b.write(far + 8, b"\x11")
    assert b.allocated == chunk and b.read(far, 16) == bytes(8) + b"\x11" + bytes(7)
    for i in range(4):                       # the freed range again: zeroes around the new byte
        b.write(i * chunk + 8, b"\x22")
    assert b.allocated == 5 * chunk
    for i in range(4):
        assert b.read(i * chunk, chunk) == bytes(8) + b"\x22" + bytes(chunk - 9)
    b.write_zeroes(0, chunk)
    assert b.allocated == 4 * chunk and b.read(far + 8, 1) == b"\x11"
    b.close()


def test_memory_read_spanning_present_and_absent_chunks():
    b = MemoryBackend(1 << 20)
    cs = MemoryBackend.CHUNK
    b.write(cs - 10, b"x" * 20)
    data = b.read(cs - 100, 200)
    assert data == bytes(90) + b"x" * 20 + bytes(90)


def test_memory_write_zeroes_frees_whole_chunks_and_zeroes_partial():
    b = MemoryBackend(1 << 20)
    cs = MemoryBackend.CHUNK
    b.write(0, b"\xff" * (3 * cs))
    assert b.allocated == 3 * cs
    b.write_zeroes(100, 2 * cs)          # partial chunk 0, whole chunk 1, partial chunk 2
    assert b.allocated == 2 * cs
    assert b.read(0, 100) == b"\xff" * 100
    assert b.is_zero(100, 2 * cs)
    assert b.read(100 + 2 * cs, 10) == b"\xff" * 10
    b.discard(0, 3 * cs)
    assert b.allocated == 0
    assert b.is_zero(0, 1 << 20)


def test_memory_readinto_memoryview_zero_copy():
    b = MemoryBackend(1 << 20)
    b.write(4096, bytes(range(256)) * 16)
    buf = bytearray(8192)
    b.readinto(0, memoryview(buf))
    assert buf[4096:] == bytes(range(256)) * 16
    assert buf[:4096] == bytes(4096)


def test_bounds_and_bad_sizes():
    b = MemoryBackend(4096)
    with pytest.raises(BackendError):
        b.write(4000, b"x" * 100)
    with pytest.raises(BackendError):
        b.readinto(-1, bytearray(1))
    for bad in (0, -5, "12"):
        with pytest.raises(BackendError):
            MemoryBackend(bad)  # type: ignore[arg-type]


def test_memory_concurrent_writers_same_chunk():
    b = MemoryBackend(1 << 20)

    def worker(i):
        for j in range(200):
            b.write(i * 512, bytes([i]) * 512)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.allocated == MemoryBackend.CHUNK
    for i in range(8):
        assert b.read(i * 512, 512) == bytes([i]) * 512


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["w", "z"]), st.integers(0, 300_000), st.integers(1, 70_000)),
                    max_size=12))
def test_memory_matches_flat_model(ops):
    size = 400_000
    b = MemoryBackend(size)
    model = bytearray(size)
    for op, off, n in ops:
        n = min(n, size - off)
        if op == "w":
            data = bytes([(off + i) & 0xFF or 1 for i in range(n)])
            b.write(off, data)
            model[off:off + n] = data
        else:
            b.write_zeroes(off, n)
            model[off:off + n] = bytes(n)
    assert b.read(0, size) == bytes(model)


def test_null_backend():
    b = NullBackend(1 << 40)
    b.write(0, b"abc")
    buf = bytearray(b"\xff" * 100)
    b.readinto(123, buf)
    assert buf == bytes(100)
    assert b.allocated == 0 and b.is_zero(0, 10)


def test_file_persists_across_reopen(tmp_path):
    path = tmp_path / "disk.img"
    b = FileBackend(str(path), size=1 << 20)
    assert os.path.getsize(path) == 1 << 20
    b.write(8192, b"persist" * 100)
    b.flush()
    b.close()
    b2 = FileBackend(str(path))
    assert b2.size == 1 << 20
    assert b2.read(8192, 700) == b"persist" * 100
    b2.close()


def test_file_extend_existing_and_prefix(tmp_path):
    path = tmp_path / "d.img"
    path.write_bytes(b"\x11" * 4096)
    b = FileBackend(str(path), size=8192)
    assert os.path.getsize(path) == 8192
    assert b.read(4000, 200) == b"\x11" * 96 + bytes(104)
    b.close()
    small = FileBackend(str(path), size=4096)   # a larger file exposes its prefix
    assert small.size == 4096
    small.close()


def test_file_discard_and_write_zeroes(tmp_path):
    b = FileBackend(str(tmp_path / "z.img"), size=1 << 20)
    b.write(0, b"\xee" * (1 << 20))
    b.discard(4096, 65536)
    b.write_zeroes(100, 10)
    assert b.is_zero(4096, 65536)
    assert b.is_zero(100, 10)
    assert b.read(90, 10) == b"\xee" * 10
    assert b.read(4096 + 65536, 4) == b"\xee" * 4
    b._punch_ok = False                  # the fallback path writes zeroes
    b.discard(0, 50)
    assert b.is_zero(0, 50)
    b.close()


def test_file_errors(tmp_path):
    with pytest.raises(BackendError, match="cannot open"):
        FileBackend(str(tmp_path / "missing" / "x.img"), size=4096)
    with pytest.raises(BackendError, match="cannot open"):
        FileBackend(str(tmp_path / "absent.img"))        # no size: not created
    (tmp_path / "empty.img").write_bytes(b"")
    with pytest.raises(BackendError, match="empty"):
        FileBackend(str(tmp_path / "empty.img"))
    with pytest.raises(BackendError, match="directory"):
        FileBackend(str(tmp_path), size=4096)
    with pytest.raises(BackendError):
        FileBackend(str(tmp_path / "neg.img"), size=-1)


def test_open_backend(tmp_path):
    assert isinstance(open_backend("memory", 4096), MemoryBackend)
    assert isinstance(open_backend("null", 4096), NullBackend)
    f = open_backend("file", 4096, str(tmp_path / "f.img"))
    assert isinstance(f, FileBackend) and f.size == 4096
    f.close()
    with pytest.raises(BackendError):
        open_backend("file", 4096, None)
    with pytest.raises(BackendError):
        open_backend("memory", None)
    with pytest.raises(BackendError, match="unknown"):
        open_backend("tape", 4096)
