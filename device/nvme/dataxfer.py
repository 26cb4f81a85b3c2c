"""Command data pointers (PRP and SGL) turned into a list of guest memory segments.

``map_data`` walks a command's data pointer once, validates it the way the
spec (and QEMU's hw/nvme) do, and returns a ``DataMap``: the ordered guest
ranges that make up the transfer, coalesced when physically adjacent and split
at DMA region boundaries, so that each one is a single ``GuestMemory.view``.
Handlers then move data with ``views()``: a Read command's backend
``readinto`` lands straight in guest memory, a Write's backend ``write`` reads
straight from it. No bounce buffers on the hot path.

All validation happens up front, before any data moves, so a bad PRP list or
SGL never leaves a half-done transfer behind. Errors are ``NvmeError`` with the
status the spec names; the only other exception a caller can see is
``MemoryFault`` (a region unmapped or read-only at ``views()`` time), which the
controller turns into Data Transfer Error.

The separate metadata buffer (``map_metadata``) is MPTR itself for PRPs and
PSDT 01b, and for PSDT 10b an SGL of its own whose first descriptor lies at
MPTR, walked by the same code as the data SGL.

Bit bucket SGL descriptors (data the host wants discarded) appear in
``segments`` with address ``None``; they are only valid when the device writes
to the host (``views(write=True)``, ``to_guest``), and using them in the other
direction fails with SGL Descriptor Type Invalid.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import TYPE_CHECKING, Iterator

from nvshell.device.layout import Layout
from nvshell.device.nvme.spec import PAGE_SIZE
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.memory import MemoryFault

if TYPE_CHECKING:
    from nvshell.device.nvme.commands import Command
    from nvshell.device.memory import HostMemory as GuestMemory

#: One SGL descriptor (16 bytes): address, length, and the SGL identifier in the
#: last byte (descriptor type in bits 7:4, subtype in bits 3:0).
SGL_DESCRIPTOR = Layout("SglDescriptor", [
    (0, "addr", "Q"), (8, "length", "I"), (15, "sgl_id", "B"),
], size=16)

SGL_DATA_BLOCK = 0x0
SGL_BIT_BUCKET = 0x1
SGL_SEGMENT = 0x2
SGL_LAST_SEGMENT = 0x3
SGL_SUBTYPE_ADDRESS = 0x0

#: Upper bound on SGL descriptors per command (all segments together). It stops
#: a looping segment chain and bounds the work a single command can cause.
MAX_SGL_DESCRIPTORS = 8192

PSDT_PRP = 0
PSDT_SGL_MPTR_CONTIGUOUS = 1
PSDT_SGL_MPTR_SGL = 2

_U64_LIMIT = 1 << 64
#: A descriptor read from memory as the two qwords DPTR would hold (address; length + SGL identifier).
_SGL_FIRST = struct.Struct("<QQ")
_SCRATCH_SIZE = 1 << 20
#: Sink for bit-bucket data. Shared by all threads on purpose: what lands here
#: is discarded, so concurrent scribbling does not matter.
_SCRATCH = memoryview(bytearray(_SCRATCH_SIZE))


@lru_cache(maxsize=None)
def _prp_entries(count: int) -> struct.Struct:
    """A precompiled decoder for ``count`` little-endian PRP entries (u64 each)."""
    return struct.Struct(f"<{count}Q")


class DataMap:
    """The guest memory behind one command's data pointer.

    ``segments`` are ``(addr, length)`` in transfer order; ``addr`` is None for
    bit-bucket pieces. Every segment with an address lies inside one DMA
    region (checked when mapped). Views taken from it must not outlive the
    handler (an unmap could not close the region while they exist).
    """

    __slots__ = ("memory", "segments", "length", "has_bit_bucket", "lazy", "span")

    def __init__(self, memory: "GuestMemory", segments: list[tuple[int | None, int]], length: int,
                 has_bit_bucket: bool = False, lazy: bool = False, span: tuple[int, int] | None = None):
        self.memory = memory
        self.segments = segments
        self.length = length
        self.has_bit_bucket = has_bit_bucket
        #: ``(low, high)``: every segment lies in one accessible range (checked with one view),
        #: so ``views`` slices one view of it instead of looking each segment up (a PRP list
        #: of scattered pages: one lookup instead of 32 for 128 KiB).
        self.span = span
        #: One guest range not yet checked (``map_data``'s fast path): the view that moves the
        #: data is the check, so a command costs one guest-memory lookup. A range that fails
        #: it is validated then (``resolve``): split at region boundaries or Data Transfer
        #: Error -- before any data moved, as for an eagerly checked map.
        self.lazy = lazy

    def resolve(self) -> None:
        """Validate a lazily mapped range now (see ``lazy``); raises ``NvmeError`` if unmapped."""
        if self.lazy:
            self.lazy = False
            self.segments = _validate(self.memory, [list(self.segments[0])])

    def views(self, write: bool) -> Iterator[memoryview]:
        """Memoryviews into guest memory covering the transfer, in order.

        ``write=True``: the device writes to the host (a Read command); bit
        buckets yield scratch buffers whose contents are dropped.
        ``write=False``: the device reads host data (a Write command).
        """
        if self.lazy:
            addr, length = self.segments[0]
            try:
                view = self.memory.view(addr, length, write)  # type: ignore[arg-type]
            except MemoryFault:
                self.resolve()
            else:
                yield view
                return
        if not write and self.has_bit_bucket:
            raise NvmeError(Status.SGL_DESCRIPTOR_TYPE_INVALID, msg="bit bucket SGL descriptor in host-to-device data")
        span = self.span
        if span is not None:
            low = span[0]
            whole = self.memory.view(low, span[1] - low, write)
            for addr, length in self.segments:
                start = addr - low  # type: ignore[operator]
                yield whole[start:start + length]
            return
        view = self.memory.view
        for addr, length in self.segments:
            if addr is not None:
                yield view(addr, length, write)
            else:
                while length:
                    n = min(length, _SCRATCH_SIZE)
                    yield _SCRATCH[:n]
                    length -= n

    def single_view(self, write: bool) -> memoryview | None:
        """The whole transfer as one guest view when it is one range (every 4 KiB I/O), else
        None (use ``views``): the data path's shortcut past the generator."""
        segments = self.segments
        if len(segments) != 1:
            return None
        addr, length = segments[0]
        if addr is None:
            return None
        try:
            return self.memory.view(addr, length, write)
        except MemoryFault:
            if not self.lazy:
                raise
        self.resolve()
        return self.single_view(write)

    def to_guest(self, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Copy ``data`` into the transfer starting ``offset`` bytes in.

        Data beyond the end of the transfer is silently cut off (a host asking
        for fewer bytes of a log page than exist gets a prefix); returns the
        number of bytes stored.
        """
        self.resolve()
        src = memoryview(data).cast("B")
        total = min(len(src), max(0, self.length - offset))
        pos = 0
        skip = offset
        view = self.memory.view
        for addr, length in self.segments:
            if pos >= total:
                break
            if skip >= length:
                skip -= length
                continue
            n = min(length - skip, total - pos)
            if addr is not None:
                view(addr + skip, n, True)[:] = src[pos:pos + n]
            pos += n
            skip = 0
        return total

    def from_guest(self) -> bytes:
        """The whole transfer as bytes (for small host-to-device data: range lists, features)."""
        self.resolve()
        if self.has_bit_bucket:
            raise NvmeError(Status.SGL_DESCRIPTOR_TYPE_INVALID, msg="bit bucket SGL descriptor in host-to-device data")
        if len(self.segments) == 1:
            addr, length = self.segments[0]
            return bytes(self.memory.view(addr, length))  # type: ignore[arg-type]
        return b"".join(bytes(v) for v in self.views(False))

    def __repr__(self) -> str:
        segs = ", ".join(f"{'bitbucket' if a is None else hex(a)}+{n:#x}" for a, n in self.segments[:8])
        more = ", ..." if len(self.segments) > 8 else ""
        return f"DataMap({self.length:#x}: {segs}{more})"


def map_data(memory: "GuestMemory", cmd: "Command", length: int, *, page_size: int = PAGE_SIZE,
             allow_sgl: bool = True, mdts_bytes: int | None = None) -> DataMap:
    """Map ``length`` bytes of ``cmd``'s data pointer (PRP or SGL per PSDT).

    ``allow_sgl=False`` for admin commands (SGLs are I/O only on PCIe);
    ``mdts_bytes`` (0/None = unlimited) rejects larger transfers with Invalid Field.
    """
    if mdts_bytes and length > mdts_bytes:
        raise NvmeError(Status.INVALID_FIELD, msg=f"transfer of {length} bytes exceeds MDTS ({mdts_bytes})")
    psdt = (cmd.flags >> 6) & 0x3
    if length <= 0:
        if psdt and not allow_sgl:
            raise NvmeError(Status.INVALID_FIELD, msg="SGL not supported for this command")
        return DataMap(memory, [], 0)
    if psdt == PSDT_PRP:
        prp1 = cmd.dptr1
        if not prp1 & 0x3 and length <= page_size - (prp1 & (page_size - 1)):
            # Fast path (every 4 KiB I/O): the whole transfer is in PRP1's page, checked
            # by the view that moves the data (``DataMap.lazy``).
            return DataMap(memory, [(prp1, length)], length, False, True)
        pieces = _map_prp(memory, cmd.dptr1, cmd.dptr2, length, page_size)
        bucket = False
    elif psdt in (PSDT_SGL_MPTR_CONTIGUOUS, PSDT_SGL_MPTR_SGL) and allow_sgl:
        pieces, bucket = _map_sgl(memory, cmd.dptr1, cmd.dptr2, length)
    else:
        raise NvmeError(Status.INVALID_FIELD, msg=f"unsupported PSDT {psdt}")
    if len(pieces) > 1 and not bucket:
        span = _span(memory, pieces)
        if span is not None:
            return DataMap(memory, [(a, n) for a, n in pieces], length, False, False, span)
    return DataMap(memory, _validate(memory, pieces), length, bucket)


def map_metadata(memory: "GuestMemory", cmd: "Command", length: int) -> DataMap:
    """The separate metadata buffer of ``cmd`` (MSET=0), per PSDT.

    PRPs and PSDT 01b: MPTR is the address of one physically contiguous buffer.
    PSDT 10b: MPTR is the (qword-aligned) address of one SGL descriptor -- a
    data block, bit bucket, or a segment / last segment descriptor starting a
    chain -- walked with the same rules as the data SGL; an SGL that describes
    less (or more) than the metadata gets Metadata SGL Length Invalid.
    """
    if ((cmd.flags >> 6) & 0x3) != PSDT_SGL_MPTR_SGL:
        return map_contiguous(memory, cmd.mptr, length)
    if length <= 0:
        return DataMap(memory, [], 0)
    mptr = cmd.mptr
    if mptr & 0x7:
        raise NvmeError(Status.INVALID_FIELD, msg=f"metadata SGL pointer {mptr:#x} not qword aligned")
    try:
        with memory.view(mptr, SGL_DESCRIPTOR.size) as raw:
            addr, rest = _SGL_FIRST.unpack(raw)
    except MemoryFault:
        raise NvmeError(Status.DATA_TRANSFER_ERROR, msg=f"metadata SGL descriptor at {mptr:#x} not mapped") from None
    try:
        pieces, bucket = _map_sgl(memory, addr, rest, length)
    except NvmeError as err:
        if err.status != Status.DATA_SGL_LENGTH_INVALID:
            raise
        raise NvmeError(Status.METADATA_SGL_LENGTH_INVALID, msg=f"metadata {err}") from None
    return DataMap(memory, _validate(memory, pieces), length, bucket)


def map_contiguous(memory: "GuestMemory", addr: int, length: int) -> DataMap:
    """A physically contiguous buffer (the metadata pointer MPTR): one range, split only
    where it crosses DMA regions; Data Transfer Error if any of it is not mapped."""
    if length <= 0:
        return DataMap(memory, [], 0)
    return DataMap(memory, _validate(memory, [[addr, length]]), length)


def _span(memory: "GuestMemory", pieces: list[list]) -> tuple[int, int] | None:
    """``(low, high)`` of ``pieces`` (no bit buckets) when that whole range is accessible, checked
    with one view (guest RAM is usually one region, so a PRP list's scattered pages all fit);
    None otherwise (the caller checks piece by piece)."""
    low = min(pieces)[0]
    high = max(map(sum, pieces))
    try:
        with memory.view(low, high - low):
            pass
    except MemoryFault:
        return None
    return low, high


def _validate(memory: "GuestMemory", pieces: list[list]) -> list[tuple[int | None, int]]:
    """Check that every piece is mapped; split pieces that span adjacent regions."""
    out: list[tuple[int | None, int]] = []
    view = memory.view
    for addr, length in pieces:
        if addr is None:
            out.append((None, length))
            continue
        try:
            with view(addr, length):
                pass
            out.append((addr, length))
        except MemoryFault:
            out.extend(_split(memory, addr, length))
    return out


def _split(memory: "GuestMemory", addr: int, length: int) -> list[tuple[int | None, int]]:
    """Slow path: a range crossing DMA region boundaries (guest RAM is contiguous there)."""
    out: list[tuple[int | None, int]] = []
    while length:
        region = memory.region_at(addr)
        if region is None:
            raise NvmeError(Status.DATA_TRANSFER_ERROR, msg=f"guest memory {addr:#x} not mapped")
        n = min(length, region.end - addr)
        try:
            with memory.view(addr, n):
                pass
        except MemoryFault:
            raise NvmeError(Status.DATA_TRANSFER_ERROR, msg=f"guest memory {addr:#x}+{n:#x} not accessible") \
                from None
        out.append((addr, n))
        addr += n
        length -= n
    return out


# ------------------------------------------------------------------ PRP
def _map_prp(memory: "GuestMemory", prp1: int, prp2: int, length: int, page_size: int) -> list[list]:
    """PRP1 (may carry a dword-aligned offset), then PRP2 as a page or a PRP list."""
    mask = page_size - 1
    if prp1 & 0x3:
        raise NvmeError(Status.PRP_OFFSET_INVALID, msg=f"PRP1 {prp1:#x} not dword aligned")
    first = min(length, page_size - (prp1 & mask))
    segs: list[list] = [[prp1, first]]
    remaining = length - first
    if not remaining:
        return segs
    if remaining <= page_size:
        if prp2 & mask:
            raise NvmeError(Status.PRP_OFFSET_INVALID, msg=f"PRP2 {prp2:#x} not page aligned")
        if prp1 + first == prp2:
            segs[0][1] += remaining
        else:
            segs.append([prp2, remaining])
        return segs
    if prp2 & 0x7:
        raise NvmeError(Status.PRP_OFFSET_INVALID, msg=f"PRP list pointer {prp2:#x} not qword aligned")
    last = segs[0]
    end = prp1 + first
    list_addr = prp2
    view = memory.view
    while remaining:
        in_page = (page_size - (list_addr & mask)) >> 3
        needed = (remaining + mask) // page_size
        chained = needed > in_page
        count = in_page if chained else needed
        try:
            with view(list_addr, count * 8) as raw:
                entries = _prp_entries(count).unpack(raw)
        except MemoryFault:
            raise NvmeError(Status.DATA_TRANSFER_ERROR, msg=f"PRP list at {list_addr:#x} not mapped") from None
        data = entries[:-1] if chained else entries
        for entry in data:
            if entry & mask:
                raise NvmeError(Status.PRP_OFFSET_INVALID, msg=f"PRP entry {entry:#x} not page aligned")
            n = page_size if remaining > page_size else remaining
            if entry == end:
                last[1] += n
            else:
                last = [entry, n]
                segs.append(last)
            end = entry + n
            remaining -= n
        if chained:
            list_addr = entries[-1]
            if list_addr & mask:
                raise NvmeError(Status.PRP_OFFSET_INVALID, msg=f"PRP list pointer {list_addr:#x} not page aligned")
    return segs


# ------------------------------------------------------------------ SGL
def _map_sgl(memory: "GuestMemory", dptr1: int, dptr2: int, length: int) -> tuple[list[list], bool]:
    """Walk the SGL whose first descriptor is DPTR; returns (pieces, has bit bucket)."""
    segs: list[list] = []
    state = _SglState(length, segs)
    addr = dptr1
    seg_len = dptr2 & 0xFFFFFFFF
    sgl_id = (dptr2 >> 56) & 0xFF
    dtype = sgl_id >> 4
    if dtype in (SGL_DATA_BLOCK, SGL_BIT_BUCKET):
        state.data(addr, seg_len, sgl_id)
    elif dtype in (SGL_SEGMENT, SGL_LAST_SEGMENT):
        count = 0
        while True:
            if sgl_id & 0xF != SGL_SUBTYPE_ADDRESS:
                raise NvmeError(Status.SGL_DESCRIPTOR_TYPE_INVALID, msg=f"SGL segment subtype {sgl_id & 0xf}")
            if seg_len == 0 or seg_len & 0xF:
                raise NvmeError(Status.INVALID_SGL_SEGMENT_DESCRIPTOR, msg=f"SGL segment length {seg_len}")
            if addr + seg_len > _U64_LIMIT:
                raise NvmeError(Status.DATA_SGL_LENGTH_INVALID, msg="SGL segment wraps the address space")
            ndesc = seg_len >> 4
            count += ndesc
            if count > MAX_SGL_DESCRIPTORS:
                raise NvmeError(Status.INVALID_NUMBER_OF_SGL_DESCRIPTORS,
                                msg=f"more than {MAX_SGL_DESCRIPTORS} SGL descriptors")
            try:
                with memory.view(addr, seg_len) as raw:
                    descs = list(SGL_DESCRIPTOR.struct.iter_unpack(raw))
            except MemoryFault:
                raise NvmeError(Status.DATA_TRANSFER_ERROR, msg=f"SGL segment at {addr:#x} not mapped") from None
            tail_addr, tail_len, tail_id = descs[-1]
            if tail_id >> 4 in (SGL_SEGMENT, SGL_LAST_SEGMENT):
                if dtype == SGL_LAST_SEGMENT:
                    raise NvmeError(Status.INVALID_SGL_SEGMENT_DESCRIPTOR,
                                    msg="SGL last segment followed by another segment")
                descs.pop()
            else:
                tail_id = -1
            for d_addr, d_len, d_id in descs:
                state.data(d_addr, d_len, d_id)
            if tail_id < 0:
                break
            addr, seg_len, sgl_id, dtype = tail_addr, tail_len, tail_id, tail_id >> 4
    else:
        raise NvmeError(Status.SGL_DESCRIPTOR_TYPE_INVALID, msg=f"SGL descriptor type {dtype}")
    if state.remaining:
        raise NvmeError(Status.DATA_SGL_LENGTH_INVALID,
                        msg=f"SGL describes {length - state.remaining} of {length} bytes")
    return segs, state.bucket


class _SglState:
    """Accumulates data/bit-bucket descriptors into coalesced pieces."""

    __slots__ = ("remaining", "segs", "bucket")

    def __init__(self, length: int, segs: list[list]):
        self.remaining = length
        self.segs = segs
        self.bucket = False

    def data(self, addr: int, length: int, sgl_id: int) -> None:
        dtype = sgl_id >> 4
        if dtype in (SGL_SEGMENT, SGL_LAST_SEGMENT):
            raise NvmeError(Status.INVALID_SGL_SEGMENT_DESCRIPTOR, msg="SGL segment descriptor inside a segment")
        if dtype not in (SGL_DATA_BLOCK, SGL_BIT_BUCKET) or sgl_id & 0xF != SGL_SUBTYPE_ADDRESS:
            raise NvmeError(Status.SGL_DESCRIPTOR_TYPE_INVALID, msg=f"SGL descriptor type {dtype}.{sgl_id & 0xf}")
        if not length:
            return
        if length > self.remaining:
            # Identify SGLS bit 18 is clear: an SGL may not describe more than the transfer.
            raise NvmeError(Status.DATA_SGL_LENGTH_INVALID, msg="SGL longer than the transfer")
        n = length
        self.remaining -= n
        segs = self.segs
        if dtype == SGL_BIT_BUCKET:
            self.bucket = True
            if segs and segs[-1][0] is None:
                segs[-1][1] += n
            else:
                segs.append([None, n])
            return
        if addr + length > _U64_LIMIT:
            raise NvmeError(Status.DATA_SGL_LENGTH_INVALID, msg="SGL data block wraps the address space")
        if segs and segs[-1][0] is not None and segs[-1][0] + segs[-1][1] == addr:
            segs[-1][1] += n
        else:
            segs.append([addr, n])
