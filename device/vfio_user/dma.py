"""Guest memory: the DMA regions a vfio-user client mapped, and the only way in.

The client passes each RAM section as a file descriptor (DMA_MAP with SCM_RIGHTS);
we mmap it and translate guest-physical addresses to offsets in those mappings.
Every access is bounds-checked: an address that no region covers raises
``DmaError``, which the NVMe layer turns into Data Transfer Error. Nothing else
in the device model touches guest memory.

Zero-copy: ``view()`` hands out a memoryview straight into the mapping, so a
Read command's data goes from the backend into guest memory in one copy. Views
must not outlive the call that took them: DMA_UNMAP closes the mapping, which
fails while a view is exported (the IOThread handles unmap and commands one at a
time, so a handler that drops its views before returning is always safe).
"""

from __future__ import annotations

import bisect
import errno as E
import fcntl
import mmap
import os
from dataclasses import dataclass


class DmaError(Exception):
    """A guest-physical range that is not (entirely) mapped, or not writable."""

    def __init__(self, addr: int, length: int, why: str = "not mapped"):
        self.addr = addr
        self.length = length
        super().__init__(f"guest memory [{addr:#x}, +{length:#x}) {why}")


class DmaMapError(Exception):
    """A DMA_MAP/DMA_UNMAP request that cannot be honoured; ``errno`` for the reply."""

    def __init__(self, errno: int, msg: str):
        self.errno = errno
        super().__init__(msg)


PROT_READ = 1
PROT_WRITE = 2


@dataclass
class DmaRegion:
    addr: int
    size: int
    prot: int
    mapping: mmap.mmap | None
    #: Offset of ``addr`` inside ``mapping`` (the fd offset is rounded down to a page).
    delta: int
    view: memoryview | None

    @property
    def end(self) -> int:
        return self.addr + self.size


class GuestMemory:
    """The set of mapped DMA regions of one vfio-user client."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._regions: list[DmaRegion] = []

    # ------------------------------------------------------------ mapping
    def map(self, addr: int, size: int, fd: int | None, offset: int, prot: int) -> DmaRegion:
        """Map ``size`` bytes of ``fd`` at ``offset`` as guest range ``addr``.

        The caller keeps ownership of ``fd`` (mmap keeps its own reference).
        A region without an fd is recorded but not accessible (DMA_READ/WRITE
        messages would be needed; QEMU with shared memory never does that).
        """
        if size <= 0 or addr < 0 or addr + size > 1 << 64:
            raise DmaMapError(22, f"invalid DMA range addr={addr:#x} size={size:#x}")
        if self._overlapping(addr, size):
            raise DmaMapError(17, f"DMA range [{addr:#x}, +{size:#x}) overlaps an existing mapping")
        mapping = view = None
        delta = 0
        if fd is not None:
            base = offset - offset % mmap.PAGESIZE
            delta = offset - base
            access = mmap.PROT_READ | (mmap.PROT_WRITE if prot & PROT_WRITE else 0)
            try:
                mapping = mmap.mmap(fd, size + delta, mmap.MAP_SHARED, access, offset=base)
            except (OSError, ValueError, OverflowError) as exc:
                raise DmaMapError(getattr(exc, "errno", None) or 22, f"cannot mmap DMA region: {exc}") from None
            view = memoryview(mapping)
        region = DmaRegion(addr, size, prot, mapping, delta, view)
        index = bisect.bisect_left(self._starts, addr)
        self._starts.insert(index, addr)
        self._regions.insert(index, region)
        return region

    def unmap(self, addr: int, size: int) -> int:
        """Remove the region exactly covering ``[addr, addr+size)``; returns how many (1)."""
        index = bisect.bisect_left(self._starts, addr)
        if index == len(self._starts) or self._starts[index] != addr or self._regions[index].size != size:
            raise DmaMapError(22, f"no DMA mapping at [{addr:#x}, +{size:#x})")
        self._drop(index)
        return 1

    def unmap_all(self) -> None:
        while self._regions:
            self._drop(len(self._regions) - 1)

    def _drop(self, index: int) -> None:
        region = self._regions.pop(index)
        del self._starts[index]
        if region.view is not None:
            region.view.release()
        if region.mapping is not None:
            region.mapping.close()

    def _overlapping(self, addr: int, size: int) -> bool:
        """Regions never overlap, so sorted by start they are sorted by end too: only the
        neighbours of ``addr``'s insertion point can overlap it (O(log n), not a scan --
        a vIOMMU guest may keep tens of thousands of mappings)."""
        index = bisect.bisect_left(self._starts, addr)
        if index < len(self._regions) and self._regions[index].addr < addr + size:
            return True
        return index > 0 and self._regions[index - 1].end > addr

    def __len__(self) -> int:
        return len(self._regions)

    def region_at(self, addr: int) -> DmaRegion | None:
        """The region containing ``addr`` (O(log n)), or None."""
        index = bisect.bisect_right(self._starts, addr) - 1
        if index >= 0 and addr < self._regions[index].end:
            return self._regions[index]
        return None

    @property
    def regions(self) -> list[DmaRegion]:
        return list(self._regions)

    # ------------------------------------------------------------- access
    def _find(self, addr: int, length: int, write: bool) -> tuple[DmaRegion, int]:
        index = bisect.bisect_right(self._starts, addr) - 1
        if index < 0:
            raise DmaError(addr, length)
        region = self._regions[index]
        if addr + length > region.end or length < 0:
            raise DmaError(addr, length, "crosses the end of a mapped region" if addr < region.end else "not mapped")
        if region.view is None:
            raise DmaError(addr, length, "is mapped without a file descriptor")
        if write and not region.prot & PROT_WRITE:
            raise DmaError(addr, length, "is read-only")
        return region, addr - region.addr + region.delta

    def view(self, addr: int, length: int, write: bool = False) -> memoryview:
        """A memoryview of ``length`` guest bytes at ``addr`` (within one region)."""
        region, start = self._find(addr, length, write)
        assert region.view is not None
        return region.view[start:start + length]

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.view(addr, length))

    def readinto(self, addr: int, buffer: memoryview | bytearray) -> None:
        data = memoryview(buffer).cast("B")
        data[:] = self.view(addr, len(data))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        data = memoryview(data).cast("B")
        self.view(addr, len(data), write=True)[:] = data

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 8), "little")

    def __contains__(self, addr: int) -> bool:
        try:
            self._find(addr, 1, False)
        except DmaError:
            return False
        return True


def seal_against_shrink(fd: int, end: int) -> None:
    """Make sure the file behind ``fd`` can never become shorter than ``end`` bytes.

    Why: touching a page of a shared mapping beyond the end of its file raises
    SIGBUS, which kills the whole process (every controller and the monitor), and
    a client could shrink the file it passed after DMA_MAP. A memfd sealed with
    F_SEAL_SHRINK cannot shrink; QEMU's ``memory-backend-memfd`` seals its memfds
    (``seal=on``, the default). A memfd that allows sealing but is not sealed gets
    the seal added here (its owner can no longer shrink it either). Anything else
    (a regular file, ``memory-backend-file``, a memfd created without sealing) is
    refused with ``DmaMapError(EINVAL)``.
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        raise DmaMapError(E.EINVAL, "DMA memory must be a sealable memfd (memory-backend-memfd): "
                                    "any other file could shrink under the mapping") from None
    if not seals & fcntl.F_SEAL_SHRINK:
        try:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        except OSError as exc:
            raise DmaMapError(E.EINVAL, f"DMA memfd is not sealed against shrinking and cannot be: {exc}") from None
    size = os.fstat(fd).st_size
    if end > size:
        raise DmaMapError(E.EINVAL, f"DMA range ends at file offset {end:#x}, beyond the file's {size:#x} bytes")


def close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
