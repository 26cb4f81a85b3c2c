"""PRP and SGL mapping: layouts a host driver builds, every error status, zero-copy views."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings, strategies as st

from nvshell.device.nvme.dataxfer import (MAX_SGL_DESCRIPTORS, SGL_BIT_BUCKET, SGL_DATA_BLOCK, SGL_LAST_SEGMENT,
                                  SGL_SEGMENT, map_data)
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.vfio_user.dma import PROT_READ, DmaError
from tests.nvm_rig import PAGE, Guest, make_cmd

PSDT_SGL = 1 << 6
UNMAPPED = 0x4000_0000


@pytest.fixture
def guest():
    g = Guest()
    yield g
    g.close()


def status_of(fn, *args, **kw) -> int:
    with pytest.raises(NvmeError) as info:
        fn(*args, **kw)
    return info.value.status


def pattern(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# ------------------------------------------------------------------ PRP builder (what a host driver does)
def build_prp(g: Guest, pages: list[int], offset: int, length: int, list_offset: int = 0) -> tuple[int, int]:
    first = min(length, PAGE - offset)
    rest = length - first
    prp1 = pages[0] + offset
    if rest == 0:
        return prp1, 0
    after = pages[1:1 + (rest + PAGE - 1) // PAGE]
    if len(after) == 1:
        return prp1, after[0]
    list_addr = g.alloc() + list_offset
    prp2 = list_addr
    entries = list(after)
    while entries:
        cap = (PAGE - (list_addr % PAGE)) // 8
        if len(entries) <= cap:
            g.write(list_addr, struct.pack(f"<{len(entries)}Q", *entries))
            break
        nxt = g.alloc()
        chunk = entries[:cap - 1]
        g.write(list_addr, struct.pack(f"<{cap}Q", *chunk, nxt))
        entries = entries[cap - 1:]
        list_addr = nxt
    return prp1, prp2


def scattered_pages(g: Guest, n: int, seed: int = 0) -> list[int]:
    """n data pages, deliberately not adjacent (so nothing coalesces)."""
    pages = [g.alloc(2) for _ in range(n)]
    random.Random(seed).shuffle(pages)
    return pages


def prp_map(g: Guest, prp1: int, prp2: int, length: int, **kw):
    """``map_data``, checked completely (``resolve``: a one-range map defers its check to the
    view that moves the data; test_one_range_map_is_checked_by_its_view covers that)."""
    dm = map_data(g.memory, make_cmd(dptr1=prp1, dptr2=prp2), length, **kw)
    dm.resolve()
    return dm


# ------------------------------------------------------------------ PRP
def test_prp1_only_with_offset(guest):
    page = guest.alloc()
    dm = prp_map(guest, page + 0x200, 0, 512)
    assert dm.length == 512 and dm.segments == [(page + 0x200, 512)]
    dm.to_guest(b"\x5a" * 512)
    assert guest.read(page + 0x200, 512) == b"\x5a" * 512
    assert guest.read(page + 0x1FC, 4) == bytes(4)


def test_prp1_must_be_dword_aligned(guest):
    assert status_of(prp_map, guest, guest.alloc() + 2, 0, 512) == Status.PRP_OFFSET_INVALID


def test_prp2_second_page(guest):
    a, _, b = guest.alloc(), guest.alloc(), guest.alloc()
    dm = prp_map(guest, a + 0x800, b, 4096)
    assert dm.segments == [(a + 0x800, 2048), (b, 2048)]
    data = pattern(4096)
    dm.to_guest(data)
    assert guest.read(a + 0x800, 2048) + guest.read(b, 2048) == data
    assert dm.from_guest() == data


def test_prp2_adjacent_coalesces(guest):
    a = guest.alloc(2)
    dm = prp_map(guest, a, a + PAGE, 8192)
    assert dm.segments == [(a, 8192)]
    assert len(list(dm.views(True))) == 1


def test_prp2_page_must_be_aligned(guest):
    a, b = guest.alloc(), guest.alloc()
    assert status_of(prp_map, guest, a, b + 8, 8192) == Status.PRP_OFFSET_INVALID


def test_prp_list_spanning_several_list_pages(guest):
    npages = 1100          # 1099 entries: 511 + 511 + 77 over three chained list pages
    pages = scattered_pages(guest, npages)
    length = npages * PAGE - 0x400
    prp1, prp2 = build_prp(guest, pages, 0x400, length)
    dm = prp_map(guest, prp1, prp2, length)
    assert dm.length == length and len(dm.segments) == npages
    assert sum(n for _, n in dm.segments) == length
    data = pattern(length)
    dm.to_guest(data)
    got = guest.read(pages[0] + 0x400, PAGE - 0x400) + b"".join(guest.read(p, PAGE) for p in pages[1:])
    assert got == data
    assert b"".join(bytes(v) for v in dm.views(False)) == data


def test_prp_list_with_offset_chains_early(guest):
    pages = scattered_pages(guest, 40)
    length = 40 * PAGE
    prp1, prp2 = build_prp(guest, pages, 0, length, list_offset=PAGE - 10 * 8)   # 10 slots in the first list page
    dm = prp_map(guest, prp1, prp2, length)
    assert [a for a, _ in dm.segments] == pages


def test_prp_list_pointer_misaligned(guest):
    pages = scattered_pages(guest, 3)
    prp1, prp2 = build_prp(guest, pages, 0, 3 * PAGE)
    assert status_of(prp_map, guest, prp1, prp2 + 4, 3 * PAGE) == Status.PRP_OFFSET_INVALID


def test_prp_list_entry_misaligned(guest):
    pages = scattered_pages(guest, 3)
    prp1, prp2 = build_prp(guest, pages, 0, 3 * PAGE)
    guest.write(prp2 + 8, struct.pack("<Q", pages[2] + 0x10))
    assert status_of(prp_map, guest, prp1, prp2, 3 * PAGE) == Status.PRP_OFFSET_INVALID


def test_prp_chain_pointer_misaligned(guest):
    pages = scattered_pages(guest, 600)
    prp1, prp2 = build_prp(guest, pages, 0, 600 * PAGE)
    chain = struct.unpack("<Q", guest.read(prp2 + 511 * 8, 8))[0]
    guest.write(prp2 + 511 * 8, struct.pack("<Q", chain + 8))
    assert status_of(prp_map, guest, prp1, prp2, 600 * PAGE) == Status.PRP_OFFSET_INVALID


def test_prp_unmapped_is_data_transfer_error(guest):
    a = guest.alloc()
    assert status_of(prp_map, guest, UNMAPPED, 0, 512) == Status.DATA_TRANSFER_ERROR
    assert status_of(prp_map, guest, a, UNMAPPED, 8192) == Status.DATA_TRANSFER_ERROR
    # unmapped PRP list page
    assert status_of(prp_map, guest, a, UNMAPPED, 3 * PAGE) == Status.DATA_TRANSFER_ERROR
    # mapped list, unmapped data page in it
    lst = guest.alloc()
    guest.write(lst, struct.pack("<2Q", guest.alloc(), UNMAPPED))
    assert status_of(prp_map, guest, a, lst, 3 * PAGE) == Status.DATA_TRANSFER_ERROR


def test_one_range_map_is_checked_by_its_view(guest):
    """A transfer inside PRP1's page costs one guest-memory lookup: the view that moves the
    data. An unmapped one still fails with Data Transfer Error before any data moves."""
    a = guest.alloc()
    dm = map_data(guest.memory, make_cmd(dptr1=a + 512, dptr2=0), 1024)
    assert dm.lazy and dm.segments == [(a + 512, 1024)]
    view = dm.single_view(True)
    assert view is not None and len(view) == 1024
    view[:] = b"\x5a" * 1024
    view.release()
    assert guest.read(a + 512, 1024) == b"\x5a" * 1024
    for use in (lambda m: m.single_view(True), lambda m: list(m.views(True)), lambda m: m.from_guest(),
                lambda m: m.to_guest(b"x"), lambda m: m.resolve()):
        bad = map_data(guest.memory, make_cmd(dptr1=UNMAPPED, dptr2=0), 512)
        assert status_of(use, bad) == Status.DATA_TRANSFER_ERROR


def test_scattered_pages_in_one_region_are_checked_once(guest):
    """A PRP list of scattered pages inside one DMA region: one view checks the span, and the
    transfer's views are slices of one view of it, in PRP order."""
    pages = scattered_pages(guest, 5)
    prp1, prp2 = build_prp(guest, pages, 0, 5 * PAGE)
    dm = prp_map(guest, prp1, prp2, 5 * PAGE)
    assert dm.span == (min(pages), max(pages) + PAGE)
    assert dm.segments == [(p, PAGE) for p in pages]
    data = pattern(5 * PAGE)
    pos = 0
    for view in dm.views(True):
        view[:] = data[pos:pos + len(view)]
        pos += len(view)
    del view
    assert b"".join(guest.read(p, PAGE) for p in pages) == data
    assert b"".join(bytes(v) for v in dm.views(False)) == data


def test_list_reads_only_needed_entries(guest):
    """A list that ends at the end of mapped memory must not be over-read."""
    pages = scattered_pages(guest, 3)
    end = guest.base + guest.size
    guest.write(end - 16, struct.pack("<2Q", pages[1], pages[2]))
    dm = prp_map(guest, pages[0], end - 16, 3 * PAGE)
    assert [a for a, _ in dm.segments] == pages


def test_mdts_and_psdt_checks(guest):
    a = guest.alloc()
    assert status_of(prp_map, guest, a, 0, 8192, mdts_bytes=4096) == Status.INVALID_FIELD
    for psdt in (1, 2, 3):
        cmd = make_cmd(flags=psdt << 6, dptr1=a)
        expect = Status.INVALID_FIELD
        assert status_of(map_data, guest.memory, cmd, 512, allow_sgl=False) == expect
    # PSDT 10b maps the data SGL like 01b (only MPTR differs): a zero-length data block is too short.
    assert status_of(map_data, guest.memory, make_cmd(flags=2 << 6, dptr1=a), 512) == Status.DATA_SGL_LENGTH_INVALID
    assert map_data(guest.memory, make_cmd(flags=2 << 6, dptr1=a, dptr2=512), 512).segments == [(a, 512)]
    assert status_of(map_data, guest.memory, make_cmd(flags=3 << 6, dptr1=a), 512) == Status.INVALID_FIELD


def test_zero_length(guest):
    dm = prp_map(guest, 0, 0, 0)
    assert dm.length == 0 and dm.segments == [] and list(dm.views(True)) == []


def test_region_split_and_readonly():
    g = Guest(size=1 << 20)
    fd2 = os.memfd_create("ro")
    os.ftruncate(fd2, 1 << 20)
    try:
        end = g.base + g.size
        g.memory.map(end, 1 << 20, fd2, 0, PROT_READ)     # adjacent, read-only
        dm = prp_map(g, end - PAGE, end, 2 * PAGE)
        assert dm.segments == [(end - PAGE, PAGE), (end, PAGE)]
        assert len(dm.from_guest()) == 2 * PAGE
        with pytest.raises(DmaError):
            dm.to_guest(b"x" * 2 * PAGE)
        with pytest.raises(DmaError):
            list(dm.views(True))
    finally:
        g.close()
        os.close(fd2)


@settings(max_examples=80, deadline=None)
@given(length=st.integers(1, 300 * PAGE), offset=st.integers(0, PAGE // 4 - 1).map(lambda x: x * 4),
       list_offset=st.integers(0, PAGE // 8 - 1).map(lambda x: x * 8), seed=st.integers(0, 1 << 30),
       adjacent=st.booleans())
def test_prp_round_trip(length, offset, list_offset, seed, adjacent):
    g = Guest(size=8 << 20)
    try:
        npages = (offset + length + PAGE - 1) // PAGE
        if adjacent:
            base = g.alloc(npages)
            pages = [base + i * PAGE for i in range(npages)]
        else:
            pages = scattered_pages(g, npages, seed)
        prp1, prp2 = build_prp(g, pages, offset, length, list_offset)
        dm = prp_map(g, prp1, prp2, length)
        assert dm.length == length == sum(n for _, n in dm.segments)
        if adjacent:
            assert len(dm.segments) == 1
        data = pattern(length, seed)
        assert dm.to_guest(data) == length
        assert dm.from_guest() == data
        got = g.read(prp1, min(length, PAGE - offset))
        got += b"".join(g.read(p, PAGE) for p in pages[1:])
        assert got[:length] == data
        # partial to_guest with an offset
        dm.to_guest(b"\xff" * 10, offset=length // 2)
        assert dm.from_guest()[length // 2:length // 2 + 10] == b"\xff" * min(10, length - length // 2)
    finally:
        g.close()


# ------------------------------------------------------------------ SGL
def sgl(addr: int, length: int, dtype: int, subtype: int = 0) -> bytes:
    return struct.pack("<QI3xB", addr, length, (dtype << 4) | subtype)


def sgl_cmd(first: bytes):
    addr, rest = struct.unpack("<QQ", first)
    return make_cmd(flags=PSDT_SGL, dptr1=addr, dptr2=rest)


def sgl_map(g: Guest, first: bytes, length: int):
    return map_data(g.memory, sgl_cmd(first), length)


def test_sgl_single_data_block(guest):
    a = guest.alloc(2)
    dm = sgl_map(guest, sgl(a + 100, 5000, SGL_DATA_BLOCK), 5000)
    assert dm.segments == [(a + 100, 5000)]
    data = pattern(5000)
    dm.to_guest(data)
    assert guest.read(a + 100, 5000) == data


def test_sgl_segment_chain(guest):
    bufs = [guest.alloc() for _ in range(5)]
    seg2 = guest.alloc()
    guest.write(seg2, sgl(bufs[3], 1000, SGL_DATA_BLOCK) + sgl(bufs[4], 24, SGL_DATA_BLOCK))
    seg1 = guest.alloc()
    guest.write(seg1, sgl(bufs[0], 4096, SGL_DATA_BLOCK) + sgl(bufs[1], 0, SGL_DATA_BLOCK)
                + sgl(bufs[2], 2000, SGL_DATA_BLOCK) + sgl(seg2, 32, SGL_LAST_SEGMENT))
    dm = sgl_map(guest, sgl(seg1, 64, SGL_SEGMENT), 4096 + 2000 + 1000 + 24)
    assert dm.segments == [(bufs[0], 4096), (bufs[2], 2000), (bufs[3], 1000), (bufs[4], 24)]
    data = pattern(dm.length)
    dm.to_guest(data)
    assert dm.from_guest() == data


def test_sgl_last_segment_in_sqe_and_coalescing(guest):
    a = guest.alloc(2)
    seg = guest.alloc()
    guest.write(seg, sgl(a, 4096, SGL_DATA_BLOCK) + sgl(a + 4096, 4096, SGL_DATA_BLOCK))
    dm = sgl_map(guest, sgl(seg, 32, SGL_LAST_SEGMENT), 8192)
    assert dm.segments == [(a, 8192)]


def test_sgl_bit_bucket_on_read(guest):
    a, b = guest.alloc(), guest.alloc()
    seg = guest.alloc()
    guest.write(seg, sgl(a, 512, SGL_DATA_BLOCK) + sgl(0, 1024, SGL_BIT_BUCKET) + sgl(b, 512, SGL_DATA_BLOCK))
    dm = sgl_map(guest, sgl(seg, 48, SGL_LAST_SEGMENT), 2048)
    assert dm.segments == [(a, 512), (None, 1024), (b, 512)]
    data = pattern(2048)
    dm.to_guest(data)
    assert guest.read(a, 512) == data[:512] and guest.read(b, 512) == data[1536:]
    views = list(dm.views(True))
    assert [len(v) for v in views] == [512, 1024, 512]
    del views
    assert status_of(lambda: list(dm.views(False))) == Status.SGL_DESCRIPTOR_TYPE_INVALID
    assert status_of(dm.from_guest) == Status.SGL_DESCRIPTOR_TYPE_INVALID


def test_sgl_errors(guest):
    a = guest.alloc()
    seg = guest.alloc()
    # SGL shorter than the transfer
    assert status_of(sgl_map, guest, sgl(a, 100, SGL_DATA_BLOCK), 512) == Status.DATA_SGL_LENGTH_INVALID
    # bad types / subtypes
    assert status_of(sgl_map, guest, sgl(a, 512, 4), 512) == Status.SGL_DESCRIPTOR_TYPE_INVALID
    assert status_of(sgl_map, guest, sgl(a, 512, SGL_DATA_BLOCK, 1), 512) == Status.SGL_DESCRIPTOR_TYPE_INVALID
    assert status_of(sgl_map, guest, sgl(seg, 16, SGL_SEGMENT, 1), 512) == Status.SGL_DESCRIPTOR_TYPE_INVALID
    guest.write(seg, sgl(a, 512, 5))
    assert status_of(sgl_map, guest, sgl(seg, 16, SGL_LAST_SEGMENT), 512) == Status.SGL_DESCRIPTOR_TYPE_INVALID
    # segment lengths
    assert status_of(sgl_map, guest, sgl(seg, 24, SGL_SEGMENT), 512) == Status.INVALID_SGL_SEGMENT_DESCRIPTOR
    assert status_of(sgl_map, guest, sgl(seg, 0, SGL_LAST_SEGMENT), 512) == Status.INVALID_SGL_SEGMENT_DESCRIPTOR
    # a last segment must not chain to another segment
    seg2 = guest.alloc()
    guest.write(seg2, sgl(a, 512, SGL_DATA_BLOCK))
    guest.write(seg, sgl(a, 256, SGL_DATA_BLOCK) + sgl(seg2, 16, SGL_SEGMENT))
    assert status_of(sgl_map, guest, sgl(seg, 32, SGL_LAST_SEGMENT), 512) == Status.INVALID_SGL_SEGMENT_DESCRIPTOR
    # a segment descriptor in the middle of a segment
    guest.write(seg, sgl(seg2, 16, SGL_SEGMENT) + sgl(a, 512, SGL_DATA_BLOCK))
    assert status_of(sgl_map, guest, sgl(seg, 32, SGL_SEGMENT), 512) == Status.INVALID_SGL_SEGMENT_DESCRIPTOR
    # more data descriptors than the transfer needs
    guest.write(seg, sgl(a, 512, SGL_DATA_BLOCK) + sgl(a, 512, SGL_DATA_BLOCK))
    assert status_of(sgl_map, guest, sgl(seg, 32, SGL_LAST_SEGMENT), 512) == Status.DATA_SGL_LENGTH_INVALID
    # unmapped segment list / data
    assert status_of(sgl_map, guest, sgl(UNMAPPED, 16, SGL_SEGMENT), 512) == Status.DATA_TRANSFER_ERROR
    assert status_of(sgl_map, guest, sgl(UNMAPPED, 512, SGL_DATA_BLOCK), 512) == Status.DATA_TRANSFER_ERROR
    # address space wrap
    assert status_of(sgl_map, guest, sgl((1 << 64) - 16, 512, SGL_DATA_BLOCK), 512) == Status.DATA_SGL_LENGTH_INVALID


def test_sgl_too_many_descriptors(guest):
    huge = (MAX_SGL_DESCRIPTORS + 1) * 16
    assert status_of(sgl_map, guest, sgl(guest.alloc(), huge, SGL_SEGMENT), 512) \
        == Status.INVALID_NUMBER_OF_SGL_DESCRIPTORS
    # a segment that points at itself forever
    seg = guest.alloc()
    guest.write(seg, sgl(guest.alloc(), 1, SGL_DATA_BLOCK) + sgl(seg, 32, SGL_SEGMENT))
    assert status_of(sgl_map, guest, sgl(seg, 32, SGL_SEGMENT), 1 << 20) == Status.INVALID_NUMBER_OF_SGL_DESCRIPTORS


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40), per_seg=st.integers(1, 8),
       seed=st.integers(0, 1 << 30))
def test_sgl_round_trip(sizes, per_seg, seed):
    g = Guest(size=4 << 20)
    try:
        descs = [sgl(g.alloc(), n, SGL_DATA_BLOCK) for n in sizes]
        length = sum(sizes) or 1
        if not sum(sizes):
            descs.append(sgl(g.alloc(), 1, SGL_DATA_BLOCK))
        # chain into segments of per_seg data descriptors, each segment ending with a (last) segment pointer
        groups = [descs[i:i + per_seg] for i in range(0, len(descs), per_seg)]
        addrs = [g.alloc() for _ in groups]
        for i, grp in enumerate(groups):
            body = b"".join(grp)
            if i + 1 < len(groups):
                nxt = groups[i + 1]
                kind = SGL_LAST_SEGMENT if i + 2 == len(groups) else SGL_SEGMENT
                body += sgl(addrs[i + 1], 16 * (len(nxt) + (1 if i + 2 < len(groups) else 0)), kind)
            g.write(addrs[i], body)
        first_len = len(groups[0]) + (1 if len(groups) > 1 else 0)
        first_kind = SGL_LAST_SEGMENT if len(groups) == 1 else SGL_SEGMENT
        dm = sgl_map(g, sgl(addrs[0], 16 * first_len, first_kind), length)
        data = pattern(length, seed)
        dm.to_guest(data)
        assert dm.from_guest() == data
    finally:
        g.close()
