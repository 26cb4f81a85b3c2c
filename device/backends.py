"""Block storage behind a namespace: sparse memory, a file or block device, or nothing.

A namespace only needs byte-addressed random access, so a backend is a flat
array of ``size`` bytes with read/write/zero/discard/flush. The NVMe layer
checks LBA ranges before it calls in; the bounds checks here are a second line
of defence that turns a bug into a ``BackendError`` instead of silent damage.

Zero copy matters on the data path: ``readinto`` fills a caller buffer, which for
a Read command is a memoryview straight into guest memory, and ``write`` accepts
any buffer (again a guest memory view) without copying it first.

Threading: several IOThreads (one per controller) may drive the same shared
namespace concurrently. Backends are safe for that: file I/O is positional
(``preadv``/``pwritev``), and the sparse memory backend creates chunks under a
lock. Overlapping concurrent writes have no defined order, as on real hardware.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import mmap
import os
import stat
import threading
from typing import Any

Buffer = Any  # bytes, bytearray, memoryview (format "B")


class BackendError(Exception):
    """A backend cannot be opened or an access failed; ``errno`` when from the OS."""

    def __init__(self, msg: str, errno: int | None = None):
        self.errno = errno
        super().__init__(msg)


class Backend:
    """A fixed-size array of bytes. Subclasses implement the ``_``-less methods."""

    kind = "abstract"
    #: Accesses may sleep (disk I/O): the controller runs them on its worker pool
    #: (``device/nvme/offload.py``) instead of its IOThread.
    blocking = False

    def __init__(self, size: int):
        if not isinstance(size, int) or size <= 0:
            raise BackendError(f"backend size must be a positive number of bytes, not {size!r}")
        self.size = size
        self.closed = False

    # Every access goes through one check so error messages stay uniform.
    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise BackendError(f"{self.kind} backend access [{offset:#x}, +{length:#x}) beyond its size {self.size:#x}",
                               errno_mod.EINVAL)
        if self.closed:
            raise BackendError(f"{self.kind} backend is closed", errno_mod.EBADF)

    def readinto(self, offset: int, buf: Buffer) -> None:
        """Fill all of ``buf`` with the bytes at ``offset``."""
        raise NotImplementedError

    def read(self, offset: int, length: int) -> bytes:
        """Convenience for tests and the shell; the data path uses ``readinto``."""
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return bytes(buf)

    def write(self, offset: int, data: Buffer) -> None:
        raise NotImplementedError

    def write_zeroes(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def discard(self, offset: int, length: int) -> None:
        """Deallocate; afterwards the range reads as zeroes (the namespace reports DLFEAT=1)."""
        self.write_zeroes(offset, length)

    def flush(self) -> None:
        """Make completed writes durable (no-op for volatile backends)."""

    def is_zero(self, offset: int, length: int) -> bool:
        """True when the range reads as all zeroes."""
        self._check(offset, length)
        step = 1 << 20
        buf = bytearray(min(step, length))
        view = memoryview(buf)
        pos = 0
        while pos < length:
            n = min(step, length - pos)
            self.readinto(offset + pos, view[:n])
            if view[:n] != _ZEROS[:n]:
                return False
            pos += n
        return True

    @property
    def allocated(self) -> int:
        """Bytes actually holding data (for NUSE and 'info'); the full size when unknown."""
        return self.size

    def close(self) -> None:
        self.closed = True

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def _zero_fill(buf: memoryview, start: int, end: int) -> None:
    """Zero ``buf[start:end]`` without allocating per call (reuses one zero block)."""
    while start < end:
        n = min(end - start, _ZERO_BLOCK_SIZE)
        buf[start:start + n] = _ZEROS[:n]
        start += n


_ZERO_BLOCK_SIZE = 1 << 20
_ZEROS = memoryview(bytes(_ZERO_BLOCK_SIZE))


class MemoryBackend(Backend):
    """Sparse RAM: fixed-size chunks allocated on first write.

    A 1 TiB namespace that the guest never writes costs nothing, so tests and
    demos can use realistic sizes. Absent chunks read as zeroes; write zeroes and
    discard free whole chunks (partial chunks are zeroed in place).

    Chunks are carved from anonymous mappings (``SLAB`` bytes each) rather than
    allocated one by one: the kernel gives such memory out as zero pages on first
    touch, so a chunk's first 4 KiB write faults in one page (about 1 us) instead of
    zeroing the whole chunk as ``bytearray`` does. Freeing a whole chunk gives its
    pages back to the kernel (``MADV_DONTNEED``: they read as zeroes again) but keeps
    the chunk at its index, for that index's next write: a chunk never serves another
    index, so a reader or writer on another IOThread still holding it (a namespace
    shared by two controllers) can only see zeroes or this range's data, never another
    range's, and the mappings never grow beyond the namespace's size.
    """

    kind = "memory"
    #: Allocation unit: a 128 KiB transfer is 8 pieces; a chunk's memory is paged in as written.
    CHUNK = 16 * 1024
    #: Bytes of one anonymous mapping chunks are carved from.
    SLAB = 4 << 20

    def __init__(self, size: int, chunk_size: int = CHUNK):
        super().__init__(size)
        if chunk_size <= 0 or chunk_size & (chunk_size - 1):
            raise BackendError(f"chunk size must be a power of two, not {chunk_size}")
        self.chunk_size = chunk_size
        self._shift = chunk_size.bit_length() - 1
        self._mask = chunk_size - 1
        #: Chunk index -> its bytes, as a memoryview (slicing it copies nothing).
        self._chunks: dict[int, memoryview] = {}
        #: Chunk index -> (its mapping, offset there), for giving its pages back.
        self._where: dict[int, tuple[mmap.mmap, int]] = {}
        #: Indexes whose chunk was freed (pages given back, reads as zeroes, not allocated).
        self._zeroed: set[int] = set()
        self._slab: mmap.mmap | None = None
        self._slab_view: memoryview | None = None
        self._slab_pos = 0
        self._lock = threading.Lock()

    def _chunk_for_write(self, index: int) -> memoryview:
        """The chunk of ``index`` for a write: allocated now if absent, counted again if freed."""
        chunk = self._chunks.get(index)
        if chunk is None:
            with self._lock:
                chunk = self._chunks.get(index)
                if chunk is None:
                    chunk = self._chunks[index] = self._new_chunk(index)
        if self._zeroed:
            self._zeroed.discard(index)
        return chunk

    def _new_chunk(self, index: int) -> memoryview:
        """A zero chunk for ``index`` (under ``_lock``): the next piece of the current mapping."""
        cs = self.chunk_size
        if self._slab is None or self._slab_pos + cs > len(self._slab):
            self._slab = mmap.mmap(-1, max(self.SLAB, cs), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._slab_view = memoryview(self._slab)
            self._slab_pos = 0
        off = self._slab_pos
        self._slab_pos += cs
        self._where[index] = (self._slab, off)
        return self._slab_view[off:off + cs]  # type: ignore[index]

    def _free_chunk(self, index: int) -> None:
        """Free chunk ``index`` (under ``_lock``): zero it, its pages back to the kernel."""
        chunk = self._chunks.get(index)
        if chunk is None or index in self._zeroed:
            return
        slab, off = self._where[index]
        if off % mmap.PAGESIZE or self.chunk_size % mmap.PAGESIZE:
            chunk[:] = _ZEROS[:self.chunk_size]     # smaller than a page: zero in place
        else:
            slab.madvise(mmap.MADV_DONTNEED, off, self.chunk_size)
        self._zeroed.add(index)

    def _pieces(self, offset: int, length: int):
        """Yield (chunk index, offset in chunk, length, offset in caller buffer)."""
        cs = self.chunk_size
        pos = 0
        while pos < length:
            index = (offset + pos) >> self._shift
            inner = (offset + pos) & (cs - 1)
            n = min(cs - inner, length - pos)
            yield index, inner, n, pos
            pos += n

    def readinto(self, offset: int, buf: Buffer) -> None:
        view = buf if type(buf) is memoryview else memoryview(buf)
        length = view.nbytes
        inner = offset & self._mask
        if inner + length <= self.chunk_size and 0 <= offset and offset + length <= self.size \
                and not self.closed:
            # Within one chunk (every 4 KiB I/O): no generator, one dict lookup.
            chunk = self._chunks.get(offset >> self._shift)
            if chunk is None:
                if length <= _ZERO_BLOCK_SIZE:
                    view[:] = _ZEROS[:length]
                else:
                    _zero_fill(view, 0, length)
            else:
                view[:] = chunk[inner:inner + length]
            return
        self._check(offset, length)
        chunks = self._chunks
        for index, inner, n, pos in self._pieces(offset, length):
            chunk = chunks.get(index)
            if chunk is None:
                _zero_fill(view, pos, pos + n)
            else:
                view[pos:pos + n] = chunk[inner:inner + n]

    def write(self, offset: int, data: Buffer) -> None:
        view = data if type(data) is memoryview else memoryview(data)
        length = view.nbytes
        inner = offset & self._mask
        if inner + length <= self.chunk_size and 0 <= offset and offset + length <= self.size \
                and not self.closed:
            index = offset >> self._shift
            chunk = self._chunks.get(index)
            if chunk is None or self._zeroed and index in self._zeroed:
                chunk = self._chunk_for_write(index)
            chunk[inner:inner + length] = view
            return
        self._check(offset, length)
        for index, inner, n, pos in self._pieces(offset, length):
            chunk = self._chunk_for_write(index)
            chunk[inner:inner + n] = view[pos:pos + n]

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        cs = self.chunk_size
        for index, inner, n, _ in self._pieces(offset, length):
            if n == cs:
                with self._lock:
                    self._free_chunk(index)
            else:
                chunk = self._chunks.get(index)
                if chunk is not None:
                    memoryview(chunk)[inner:inner + n] = _ZEROS[:n]

    def is_zero(self, offset: int, length: int) -> bool:
        self._check(offset, length)
        for index, inner, n, _ in self._pieces(offset, length):
            chunk = self._chunks.get(index)
            if chunk is not None and memoryview(chunk)[inner:inner + n] != _ZEROS[:n]:
                return False
        return True

    @property
    def allocated(self) -> int:
        return (len(self._chunks) - len(self._zeroed)) * self.chunk_size

    def close(self) -> None:
        super().close()
        with self._lock:
            self._chunks.clear()
            self._where.clear()
            self._zeroed.clear()
            self._slab = self._slab_view = None   # the mappings go with their last view

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "allocated": self.allocated}


class NullBackend(Backend):
    """Reads return zeroes, writes vanish: for benchmarking the device model alone."""

    kind = "null"

    def readinto(self, offset: int, buf: Buffer) -> None:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        self._check(offset, view.nbytes)
        _zero_fill(view, 0, view.nbytes)

    def write(self, offset: int, data: Buffer) -> None:
        self._check(offset, memoryview(data).nbytes)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)

    def is_zero(self, offset: int, length: int) -> bool:
        self._check(offset, length)
        return True

    @property
    def allocated(self) -> int:
        return 0


# fallocate(2) is not in the os module; PUNCH_HOLE gives cheap deallocation
# (files) and zeroing (block devices) without writing data.
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _load_fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _load_fallocate()

#: O_DIRECT alignment of offsets, lengths and buffers: 4 KiB satisfies every
#: logical block size Linux file systems and disks use.
DIRECT_ALIGN = 4096


class FileBackend(Backend):
    """A regular file or a block device; data survives a restart of nvshell.

    ``size=None`` takes the size of the existing file/device. With a size, a
    regular file that is shorter is extended (sparse, ftruncate) and a longer
    one exposes only its first ``size`` bytes; a block device must be large
    enough. ``create`` allows creating a missing regular file (a size is then
    required).
    """

    kind = "file"
    blocking = True

    def __init__(self, path: str, size: int | None = None, create: bool = True, readonly: bool = False,
                 direct: bool = False):
        self.path = os.fspath(path)
        if size is not None and (not isinstance(size, int) or size <= 0):
            raise BackendError(f"backend size must be a positive number of bytes, not {size!r}")
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | (os.O_DIRECT if direct else 0)
        if create and size is not None and not readonly:
            flags |= os.O_CREAT
        try:
            fd = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise BackendError(f"cannot open backing file '{self.path}': {exc.strerror}", exc.errno) from None
        try:
            st = os.fstat(fd)
            self.block_device = stat.S_ISBLK(st.st_mode)
            if not (self.block_device or stat.S_ISREG(st.st_mode)):
                raise BackendError(f"'{self.path}' is neither a regular file nor a block device")
            current = os.lseek(fd, 0, os.SEEK_END) if self.block_device else st.st_size
            if size is None:
                if current <= 0:
                    raise BackendError(f"'{self.path}' is empty: give a size")
                size = current
            elif size > current:
                if self.block_device:
                    raise BackendError(f"block device '{self.path}' has {current} bytes, fewer than {size}")
                if readonly:
                    raise BackendError(f"read-only file '{self.path}' has {current} bytes, fewer than {size}")
                os.ftruncate(fd, size)
        except BackendError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise BackendError(f"cannot size backing file '{self.path}': {exc.strerror}", exc.errno) from None
        super().__init__(size)
        self.fd = fd
        self.readonly = readonly
        self.direct = direct
        #: O_DIRECT bounce path: misaligned accesses go through aligned buffers; a
        #: partial-block write is a read-modify-write, serialised so that two of them
        #: in one block cannot undo each other.
        self._rmw_lock = threading.Lock()
        self._punch_ok = _fallocate is not None

    def _bounce(self, offset: int, length: int) -> tuple[int, mmap.mmap]:
        """An aligned buffer covering [offset, offset+length) rounded out to DIRECT_ALIGN."""
        start = offset - offset % DIRECT_ALIGN
        end = -(-(offset + length) // DIRECT_ALIGN) * DIRECT_ALIGN
        return start, mmap.mmap(-1, end - start)   # anonymous mappings are page aligned

    def _direct_read(self, offset: int, view: memoryview) -> None:
        start, buf = self._bounce(offset, view.nbytes)
        with buf:
            whole = memoryview(buf)
            try:
                n = os.preadv(self.fd, [whole], start)
            except OSError as exc:
                raise BackendError(f"read of '{self.path}' at {start:#x} failed: {exc.strerror}", exc.errno) from None
            if n < len(buf):
                whole[n:] = bytes(len(buf) - n)
            view[:] = whole[offset - start:offset - start + view.nbytes]
            whole.release()

    def _direct_write(self, offset: int, view: memoryview) -> None:
        with self._rmw_lock:
            start, buf = self._bounce(offset, view.nbytes)
            with buf:
                whole = memoryview(buf)
                try:
                    if offset != start or view.nbytes != len(buf):
                        os.preadv(self.fd, [whole], start)
                    whole[offset - start:offset - start + view.nbytes] = view
                    os.pwritev(self.fd, [whole], start)
                except OSError as exc:
                    raise BackendError(f"write of '{self.path}' at {start:#x} failed: {exc.strerror}",
                                       exc.errno) from None
                finally:
                    whole.release()

    def readinto(self, offset: int, buf: Buffer) -> None:
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        length = view.nbytes
        self._check(offset, length)
        if self.direct and (offset | length) % DIRECT_ALIGN:
            self._direct_read(offset, view.cast("B"))
            return
        pos = 0
        while pos < length:
            try:
                n = os.preadv(self.fd, [view[pos:]], offset + pos)
            except OSError as exc:
                if exc.errno == errno_mod.EINVAL and self.direct and not pos:
                    self._direct_read(offset, view.cast("B"))      # buffer not aligned for O_DIRECT
                    return
                raise BackendError(f"read of '{self.path}' at {offset + pos:#x} failed: {exc.strerror}",
                                   exc.errno) from None
            if n == 0:  # file shrunk under us: what is missing reads as zeroes
                _zero_fill(view, pos, length)
                return
            pos += n

    def write(self, offset: int, data: Buffer) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        length = view.nbytes
        self._check(offset, length)
        if self.direct and (offset | length) % DIRECT_ALIGN:
            self._direct_write(offset, view.cast("B"))
            return
        pos = 0
        while pos < length:
            try:
                n = os.pwritev(self.fd, [view[pos:]], offset + pos)
            except OSError as exc:
                if exc.errno == errno_mod.EINVAL and self.direct and not pos:
                    self._direct_write(offset, view.cast("B"))     # buffer not aligned for O_DIRECT
                    return
                raise BackendError(f"write of '{self.path}' at {offset + pos:#x} failed: {exc.strerror}",
                                   exc.errno) from None
            pos += n

    def _punch(self, offset: int, length: int) -> bool:
        if not self._punch_ok or length == 0:
            return length == 0
        assert _fallocate is not None
        rc = _fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        if rc == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno_mod.EOPNOTSUPP, errno_mod.ENOSYS, errno_mod.EINVAL, errno_mod.ENODEV):
            self._punch_ok = False  # remember: do not pay for a failing syscall every time
            return False
        raise BackendError(f"deallocating '{self.path}' [{offset:#x}, +{length:#x}) failed: {os.strerror(err)}", err)

    def write_zeroes(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if self._punch(offset, length):
            return
        pos = 0
        while pos < length:
            n = min(_ZERO_BLOCK_SIZE, length - pos)
            self.write(offset + pos, _ZEROS[:n])
            pos += n

    def flush(self) -> None:
        if self.closed or self.readonly:
            return
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise BackendError(f"flush of '{self.path}' failed: {exc.strerror}", exc.errno) from None

    @property
    def allocated(self) -> int:
        try:
            return min(self.size, os.fstat(self.fd).st_blocks * 512)
        except OSError:
            return self.size

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                os.close(self.fd)
            except OSError:
                pass

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "size": self.size, "path": self.path, "block-device": self.block_device,
                "direct": self.direct}

    def __repr__(self) -> str:
        return f"FileBackend({self.path!r}, size={self.size})"


BACKEND_KINDS = ("memory", "file", "null")



def open_backend(kind: str, size: int | None = None, path: str | None = None, *, direct: bool = False) -> Backend:
    """Create a backend from the object model's properties (``kind`` as in x-nvme-ns-nvm)."""
    if direct and kind != "file":
        raise BackendError(f"direct=on needs backend=file, not '{kind}'")
    if kind == "memory":
        if size is None:
            raise BackendError("a memory backend needs a size")
        return MemoryBackend(size)
    if kind == "null":
        if size is None:
            raise BackendError("a null backend needs a size")
        return NullBackend(size)
    if kind == "file":
        if not path:
            raise BackendError("a file backend needs a path")
        return FileBackend(path, size, direct=direct)
    raise BackendError(f"unknown backend kind '{kind}' (expected one of {', '.join(BACKEND_KINDS)})")
