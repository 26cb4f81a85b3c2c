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
        """Remove the regions exactly covering ``[addr, addr+size)``; returns how many."""
        removed = 0
        for region in [r for r in self._regions if r.addr == addr and r.size == size]:
            self._drop(region)
            removed += 1
        if not removed:
            raise DmaMapError(22, f"no DMA mapping at [{addr:#x}, +{size:#x})")
        return removed

    def unmap_all(self) -> None:
        for region in list(self._regions):
            self._drop(region)

    def _drop(self, region: DmaRegion) -> None:
        index = self._regions.index(region)
        del self._regions[index]
        del self._starts[index]
        if region.view is not None:
            region.view.release()
        if region.mapping is not None:
            region.mapping.close()

    def _overlapping(self, addr: int, size: int) -> bool:
        return any(r.addr < addr + size and addr < r.end for r in self._regions)

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


def close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
