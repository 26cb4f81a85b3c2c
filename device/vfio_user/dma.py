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

from nvshell.device.memory import MemoryFault


class DmaError(MemoryFault):
    """A guest-physical range that is not (entirely) mapped, or not writable (the
    device model catches its base, ``MemoryFault``)."""

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


#: Regions per bucket of the region table before a bucket is split in two.
_BUCKET = 256


class RegionTable:
    """Non-overlapping DMA regions sorted by address, in buckets.

    Why buckets: a vIOMMU guest may keep tens of thousands of mappings and choose
    their order. A flat sorted list moves every later entry on each insert (O(n)
    per map, O(n^2) for a table, 65535 maps in the worst order took seconds);
    here an insert or removal moves at most one bucket (2 * _BUCKET entries) plus
    the bucket index, and a lookup is two C bisects -- the data path looks up
    every guest address it touches.
    """

    def __init__(self) -> None:
        self._firsts: list[int] = []             # start address of each bucket's first region
        self._starts: list[list[int]] = []        # per bucket: region start addresses
        self._regions: list[list[DmaRegion]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self):  # type: ignore[no-untyped-def]
        for bucket in self._regions:
            yield from bucket

    def floor(self, addr: int) -> DmaRegion | None:
        """The region with the highest start <= ``addr`` (it may end before ``addr``)."""
        b = bisect.bisect_right(self._firsts, addr) - 1
        if b < 0:
            return None
        starts = self._starts[b]
        return self._regions[b][bisect.bisect_right(starts, addr) - 1]

    def ceiling(self, addr: int) -> DmaRegion | None:
        """The region with the lowest start >= ``addr``."""
        if not self._firsts:
            return None
        b = max(bisect.bisect_right(self._firsts, addr) - 1, 0)
        i = bisect.bisect_left(self._starts[b], addr)
        if i < len(self._starts[b]):
            return self._regions[b][i]
        return self._regions[b + 1][0] if b + 1 < len(self._firsts) else None

    def insert(self, region: DmaRegion) -> None:
        addr = region.addr
        if not self._firsts:
            self._firsts.append(addr)
            self._starts.append([addr])
            self._regions.append([region])
            self._count = 1
            return
        b = max(bisect.bisect_right(self._firsts, addr) - 1, 0)
        starts, regions = self._starts[b], self._regions[b]
        i = bisect.bisect_left(starts, addr)
        starts.insert(i, addr)
        regions.insert(i, region)
        self._firsts[b] = starts[0]
        self._count += 1
        if len(starts) > 2 * _BUCKET:
            self._starts[b:b + 1] = [starts[:_BUCKET], starts[_BUCKET:]]
            self._regions[b:b + 1] = [regions[:_BUCKET], regions[_BUCKET:]]
            self._firsts[b:b + 1] = [starts[0], starts[_BUCKET]]

    def remove(self, addr: int, size: int) -> DmaRegion | None:
        """Take out the region starting at ``addr`` of exactly ``size`` bytes (None if absent)."""
        b = bisect.bisect_right(self._firsts, addr) - 1
        if b < 0:
            return None
        starts, regions = self._starts[b], self._regions[b]
        i = bisect.bisect_left(starts, addr)
        if i == len(starts) or starts[i] != addr or regions[i].size != size:
            return None
        del starts[i]
        region = regions.pop(i)
        self._count -= 1
        if starts:
            self._firsts[b] = starts[0]
        else:
            del self._firsts[b], self._starts[b], self._regions[b]
        return region

    def clear(self) -> list[DmaRegion]:
        """Take out every region."""
        regions = list(self)
        self.__init__()  # type: ignore[misc]
        return regions


class GuestMemory:
    """The set of mapped DMA regions of one vfio-user client."""

    def __init__(self) -> None:
        self._table = RegionTable()

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
        self._table.insert(region)
        return region

    def unmap(self, addr: int, size: int) -> int:
        """Remove the region exactly covering ``[addr, addr+size)``; returns how many (1)."""
        region = self._table.remove(addr, size)
        if region is None:
            raise DmaMapError(22, f"no DMA mapping at [{addr:#x}, +{size:#x})")
        _release(region)
        return 1

    def unmap_all(self) -> None:
        for region in self._table.clear():
            _release(region)

    def _overlapping(self, addr: int, size: int) -> bool:
        """Regions never overlap: only the neighbours of ``addr`` can overlap the new range."""
        below = self._table.floor(addr)
        if below is not None and below.end > addr:
            return True
        above = self._table.ceiling(addr)
        return above is not None and above.addr < addr + size

    def __len__(self) -> int:
        return len(self._table)

    def region_at(self, addr: int) -> DmaRegion | None:
        """The region containing ``addr`` (O(log n)), or None."""
        region = self._table.floor(addr)
        if region is not None and addr < region.end:
            return region
        return None

    @property
    def regions(self) -> list[DmaRegion]:
        return list(self._table)

    # ------------------------------------------------------------- access
    def _find(self, addr: int, length: int, write: bool) -> tuple[DmaRegion, int]:
        # RegionTable.floor inlined: this runs for every guest address the data path touches.
        table = self._table
        b = bisect.bisect_right(table._firsts, addr) - 1
        if b < 0:
            raise DmaError(addr, length)
        region = table._regions[b][bisect.bisect_right(table._starts[b], addr) - 1]
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


def _release(region: DmaRegion) -> None:
    if region.view is not None:
        region.view.release()
    if region.mapping is not None:
        region.mapping.close()


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
