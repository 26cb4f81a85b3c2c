"""Metadata and end-to-end protection through the real controller and the vfio-user client.

Namespaces of every kind sit on one controller (nsid = row of ``LAYOUT``); each test
drives Read/Write/Compare/Verify/Write Zeroes/Copy/Format NVM as a host would and
checks the media, the returned metadata, the status and the error log entry.
"""

from __future__ import annotations

import struct

import pytest

from nvshell.device.backends import FileBackend, MemoryBackend
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import AdminOpcode, NvmOpcode
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost
from tests.test_dif import ref_crc16, ref_crc64

# nsid: (lba_size, ms, mset, pi, pil, pif)
LAYOUT = {
    1: (512, 8, 0, 1, 0, 0),      # type 1, 16b guard, separate metadata: what Linux uses
    2: (512, 16, 0, 1, 0, 2),     # type 1, 64b guard
    3: (4096, 8, 1, 2, 0, 0),     # type 2, extended LBAs
    4: (512, 8, 0, 3, 0, 0),      # type 3
    5: (512, 64, 0, 1, 1, 0),     # tuple in the first 8 of 64 bytes
    6: (512, 64, 0, 1, 0, 2),     # 64b guard tuple in the last 16 of 64 bytes
    7: (512, 8, 0, 0, 0, 0),      # metadata without PI
    8: (512, 16, 1, 3, 1, 2),     # type 3, 64b guard, extended
}

PRACT = 0x8 << 26
G, A, R = 0x4 << 26, 0x2 << 26, 0x1 << 26


def pi_host(directory, namespaces, doorbells: str = "mmap") -> NvmeTestHost:
    """A host on a controller with ``namespaces`` (NSID 1, 2, ... in order), enabled, with I/O
    queue 1 (vector 2) and a metadata buffer ``md`` and PRP list page ``prpl`` beside ``buf``."""
    g = NvmeTestHost.serve(directory, name="e2e", doorbells=doorbells)
    try:
        for ns in namespaces:
            g.target.add_namespace(ns, notify=False)
        g.enable()
        g.create_io_queue(1, 16, vector=2)
        g.prpl = g.alloc(4096)
        g.md = g.alloc(4096)
    except BaseException:
        g.close()
        raise
    return g


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    g = pi_host(tmp_path_factory.mktemp("pi"), [
        NvmNamespace(MemoryBackend(1 << 20), lba_size=lba, ms=ms, mset=mset, pi=pi, pil=pil, pif=pif)
        for lba, ms, mset, pi, pil, pif in LAYOUT.values()])
    yield g
    g.close()


def io(g, opcode, nsid, slba, nlb, *, data=b"", md=None, flags=0, reftag=None, apptag=0, appmask=0xFFFF,
       cdw3=0, length=None, mptr=None):
    """One I/O command; ``data``/``md`` are written to the buffers first. Returns the status."""
    if data:
        g.ram.write(g.buf, data)
    if md is not None:
        g.ram.write(g.md, md)
    n = length if length is not None else len(data) or 0
    prp2 = 0
    if n > 4096:
        pages = [g.buf + 4096 * i for i in range(1, (n + 4095) // 4096)]
        if len(pages) == 1:
            prp2 = pages[0]
        else:
            g.ram.write(g.prpl, struct.pack(f"<{len(pages)}Q", *pages))
            prp2 = g.prpl
    e = g.cmd(opcode, qid=1, nsid=nsid, dptr1=g.buf, dptr2=prp2, mptr=g.md if mptr is None else mptr,
              cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=(nlb - 1) | flags, cdw3=cdw3,
              cdw14=slba & 0xFFFFFFFF if reftag is None else reftag, cdw15=apptag | appmask << 16)
    return (e.status >> 1) & 0x7FF


def tuple16(data: bytes, apptag: int, reftag: int, covered: bytes = b"") -> bytes:
    return struct.pack(">HHI", ref_crc16(data + covered), apptag, reftag)


def tuple64(data: bytes, apptag: int, reftag: int, covered: bytes = b"") -> bytes:
    return struct.pack(">QH", ref_crc64(data + covered), apptag) + reftag.to_bytes(6, "big")


def last_error(g):
    e = g.cmd(AdminOpcode.GET_LOG_PAGE, nsid=0xFFFFFFFF, dptr1=g.md, cdw10=0x01 | ((64 // 4 - 1) << 16))
    assert e.status >> 1 == 0
    raw = g.ram.read(g.md, 64)
    count, sqid, cid, status = struct.unpack_from("<QHHH", raw)
    lba, nsid = struct.unpack_from("<QI", raw, 16)
    return (status >> 1) & 0x7FF, lba, nsid


def payload(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


# ---------------------------------------------------------------- PRACT
def test_pract_insert_on_write_and_strip_on_read(host):
    g = host
    data = payload(1024, 1)
    assert io(g, NvmOpcode.WRITE, 1, 40, 2, data=data, flags=PRACT, apptag=0x1234, mptr=0) == 0
    # Read without PRACT returns the generated tuples through MPTR.
    assert io(g, NvmOpcode.READ, 1, 40, 2, length=1024) == 0
    assert g.ram.read(g.buf, 1024) == data
    assert g.ram.read(g.md, 16) == tuple16(data[:512], 0x1234, 40) + tuple16(data[512:], 0x1234, 41)
    # PRACT read with every check: the tuples are checked, then stripped (MPTR unused).
    assert io(g, NvmOpcode.READ, 1, 40, 2, length=1024, flags=PRACT | G | A | R, apptag=0x1234, mptr=0) == 0
    assert g.ram.read(g.buf, 1024) == data


def test_pract_with_metadata_larger_than_the_tuple_keeps_the_host_bytes(host):
    g = host
    data = payload(512, 2)
    host_md = payload(64, 9)
    assert io(g, NvmOpcode.WRITE, 5, 3, 1, data=data, md=host_md, flags=PRACT, apptag=7) == 0
    assert io(g, NvmOpcode.READ, 5, 3, 1, length=512) == 0
    got = g.ram.read(g.md, 64)
    assert got[:8] == tuple16(data, 7, 3) and got[8:] == host_md[8:]    # PIL=1: first bytes, guard = data only


def test_last_bytes_tuple_guard_covers_the_metadata_before_it(host):
    g = host
    data = payload(512, 3)
    md = bytearray(payload(64, 4))
    md[48:] = tuple64(data, 5, 9, covered=bytes(md[:48]))
    assert io(g, NvmOpcode.WRITE, 6, 9, 1, data=data, md=bytes(md), flags=G | A | R, apptag=5) == 0
    md[0] ^= 1                                                              # a covered byte changes the guard
    assert io(g, NvmOpcode.WRITE, 6, 9, 1, data=data, md=bytes(md), flags=G) == Status.GUARD_CHECK_ERROR


# ---------------------------------------------------------------- every type x check bit
@pytest.mark.parametrize("nsid", [1, 2, 4])
@pytest.mark.parametrize("bit, field, status", [
    (G, "guard", Status.GUARD_CHECK_ERROR),
    (A, "apptag", Status.APPLICATION_TAG_CHECK_ERROR),
    (R, "reftag", Status.REFERENCE_TAG_CHECK_ERROR),
])
def test_each_check_bit_on_read_write_compare_verify(host, nsid, bit, field, status):
    g = host
    lba, ms, _, pi, _, pif = LAYOUT[nsid]
    make = tuple64 if pif else tuple16
    data = payload(2 * lba, nsid)
    slba = 100 + nsid
    ref = 0x55 if pi == 3 else slba
    good = [make(data[:lba], 0xA5A5, ref), make(data[lba:], 0xA5A5, ref + (pi != 3))]
    bad = bytearray(good[1])
    pos = {"guard": 0, "apptag": 2 if not pif else 8, "reftag": 4 if not pif else 10}[field]
    bad[pos] ^= 0x10
    md = good[0] + bytes(bad)
    if pi == 3 and bit == R:
        # type 3 has no reference tag to check: asking for it is Invalid Protection Information
        assert io(g, NvmOpcode.WRITE, nsid, slba, 2, data=data, md=md, flags=R, reftag=ref) == \
            Status.INVALID_PROTECTION_INFORMATION
        return
    # Write with the check fails on block 1 and stores nothing; the error log names LBA slba+1.
    assert io(g, NvmOpcode.WRITE, nsid, slba, 2, data=data, md=md, flags=bit, reftag=ref, apptag=0xA5A5) == status
    assert last_error(g) == (status, slba + 1, nsid)
    # Without checks the bad tuple is stored as given ...
    assert io(g, NvmOpcode.WRITE, nsid, slba, 2, data=data, md=md, reftag=ref) == 0
    others = (G | A | R) & ~bit if pi != 3 else (G | A) & ~bit
    # ... read, verify and compare find it only when that bit is set.
    assert io(g, NvmOpcode.READ, nsid, slba, 2, length=2 * lba, flags=others, reftag=ref, apptag=0xA5A5) == 0
    assert g.ram.read(g.md, 2 * ms) == md
    assert io(g, NvmOpcode.READ, nsid, slba, 2, length=2 * lba, flags=bit, reftag=ref, apptag=0xA5A5) == status
    assert last_error(g)[1] == slba + 1
    assert io(g, NvmOpcode.VERIFY, nsid, slba, 2, flags=bit, reftag=ref, apptag=0xA5A5) == status
    assert io(g, NvmOpcode.VERIFY, nsid, slba, 2, flags=others, reftag=ref, apptag=0xA5A5) == 0
    assert io(g, NvmOpcode.COMPARE, nsid, slba, 2, data=data, md=md, flags=bit, reftag=ref,
              apptag=0xA5A5) == status
    assert io(g, NvmOpcode.COMPARE, nsid, slba, 2, data=data, md=md, flags=others, reftag=ref,
              apptag=0xA5A5) == 0


def test_reftag_rules(host):
    g = host
    data = payload(512, 5)
    # Type 1 with reference tag checking: ILBRT must be the SLBA.
    assert io(g, NvmOpcode.WRITE, 1, 7, 1, data=data, flags=PRACT | R, reftag=8, mptr=0) == \
        Status.INVALID_PROTECTION_INFORMATION
    # Type 2: any ILBRT, incremented per block.
    d2 = payload(8192, 6)
    assert io(g, NvmOpcode.WRITE, 3, 2, 2, data=d2, flags=PRACT, reftag=1000, apptag=3) == 0
    assert io(g, NvmOpcode.READ, 3, 2, 2, length=2 * (4096 + 8), flags=G | A | R, reftag=1000, apptag=3) == 0
    assert io(g, NvmOpcode.READ, 3, 2, 2, length=2 * (4096 + 8), flags=R, reftag=1001) == \
        Status.REFERENCE_TAG_CHECK_ERROR
    # 64b guard: the 48-bit ILBRT comes from CDW14 and CDW3 bits 15:0.
    assert io(g, NvmOpcode.WRITE, 2, 0x1_0000_0010, 1, data=data, flags=PRACT | R, reftag=0x10, cdw3=1,
              mptr=0) == Status.LBA_OUT_OF_RANGE
    assert io(g, NvmOpcode.WRITE, 2, 0x10, 1, data=data, flags=PRACT, reftag=0x10, cdw3=0xAB, mptr=0) == 0
    assert io(g, NvmOpcode.READ, 2, 0x10, 1, length=512) == 0
    assert g.ram.read(g.md, 16) == tuple64(data, 0, 0xAB_0000_0010)


def test_escape_values_and_unwritten_blocks(host):
    g = host
    every = G | A | R
    # Never written: metadata reads as all ones, which disables checking.
    assert io(g, NvmOpcode.READ, 1, 900, 2, length=1024, flags=every, reftag=900) == 0
    assert g.ram.read(g.md, 16) == b"\xff" * 16
    assert io(g, NvmOpcode.READ, 4, 900, 1, length=512, flags=G | A) == 0
    data = payload(512, 8)
    # Type 1: apptag FFFFh alone disables the checks of that block.
    assert io(g, NvmOpcode.WRITE, 1, 50, 1, data=data, md=struct.pack(">HHI", 0xDEAD, 0xFFFF, 1), flags=every,
              reftag=50, apptag=0) == 0
    # Type 3: only with the reference tag all ones too.
    assert io(g, NvmOpcode.WRITE, 4, 50, 1, data=data, md=struct.pack(">HHI", 0xDEAD, 0xFFFF, 1),
              flags=G) == Status.GUARD_CHECK_ERROR
    assert io(g, NvmOpcode.WRITE, 4, 50, 1, data=data, md=struct.pack(">HHI", 0xDEAD, 0xFFFF, 0xFFFFFFFF),
              flags=G | A) == 0


# ---------------------------------------------------------------- placements
def test_extended_lbas_interleave_data_and_metadata(host):
    g = host
    lba, ms = 4096, 8
    blocks = [payload(lba, 10), payload(lba, 11)]
    md = [tuple16(blocks[0], 1, 77), tuple16(blocks[1], 1, 78)]
    wire = blocks[0] + md[0] + blocks[1] + md[1]                    # block 1 straddles a page boundary
    assert io(g, NvmOpcode.WRITE, 3, 20, 2, data=wire, flags=G | A | R, reftag=77, apptag=1, mptr=0) == 0
    ns = g.ctrl.namespaces[3]
    assert ns.backend.read(20 * lba, 2 * lba) == blocks[0] + blocks[1]
    g.ram.write(g.buf, bytes(len(wire)))
    assert io(g, NvmOpcode.READ, 3, 20, 2, length=len(wire), flags=G | A | R, reftag=77, apptag=1, mptr=0) == 0
    assert g.ram.read(g.buf, len(wire)) == wire
    # PRACT with 8-byte metadata: only the data crosses the bus, even on an extended format.
    assert io(g, NvmOpcode.READ, 3, 20, 2, length=2 * lba, flags=PRACT | G, mptr=0) == 0
    assert g.ram.read(g.buf, 2 * lba) == blocks[0] + blocks[1]
    bad = bytearray(wire)
    bad[lba + ms + 5] ^= 1                                          # data of block 1
    assert io(g, NvmOpcode.WRITE, 3, 20, 2, data=bytes(bad), flags=G, reftag=77) == Status.GUARD_CHECK_ERROR
    assert last_error(g)[1] == 21
    assert io(g, NvmOpcode.COMPARE, 3, 20, 2, data=wire, mptr=0) == 0
    assert io(g, NvmOpcode.COMPARE, 3, 20, 2, data=bytes(bad), mptr=0) == Status.COMPARE_FAILURE
    # 64b guard, type 3, tuple first, extended
    d = payload(512, 12)
    assert io(g, NvmOpcode.WRITE, 8, 4, 1, data=d + bytes(16), flags=PRACT, apptag=9, reftag=0x3456789A,
              cdw3=0x12, mptr=0) == 0
    assert io(g, NvmOpcode.READ, 8, 4, 1, length=528, mptr=0) == 0
    assert g.ram.read(g.buf + 512, 16) == tuple64(d, 9, 0x12_3456789A)


def test_metadata_without_pi_is_stored_and_compared(host):
    g = host
    data, md = payload(1024, 13), payload(16, 14)
    assert io(g, NvmOpcode.WRITE, 7, 5, 2, data=data, md=md, flags=PRACT | G) == 0   # PRINFO ignored without PI
    assert io(g, NvmOpcode.READ, 7, 5, 2, length=1024) == 0
    assert g.ram.read(g.md, 16) == md
    assert io(g, NvmOpcode.COMPARE, 7, 5, 2, data=data, md=md) == 0
    assert io(g, NvmOpcode.COMPARE, 7, 5, 2, data=data, md=md[:-1] + b"\0") == Status.COMPARE_FAILURE
    assert io(g, NvmOpcode.READ, 7, 5, 2, length=1024, mptr=0x7000_0000) == Status.DATA_TRANSFER_ERROR


# ---------------------------------------------------------------- write zeroes, copy
def test_write_zeroes_with_and_without_pract(host):
    g = host
    assert io(g, NvmOpcode.WRITE_ZEROES, 1, 60, 2, flags=G) == Status.INVALID_PROTECTION_INFORMATION
    assert io(g, NvmOpcode.WRITE_ZEROES, 1, 60, 2, flags=PRACT, apptag=4) == 0
    assert io(g, NvmOpcode.READ, 1, 60, 2, length=1024, flags=G | A | R, apptag=4) == 0
    assert g.ram.read(g.md, 16) == tuple16(bytes(512), 4, 60) + tuple16(bytes(512), 4, 61)
    assert io(g, NvmOpcode.WRITE_ZEROES, 2, 60, 1, flags=PRACT, apptag=4) == 0
    assert io(g, NvmOpcode.READ, 2, 60, 1, length=512) == 0
    assert g.ram.read(g.md, 16) == tuple64(bytes(512), 4, 60)
    assert io(g, NvmOpcode.WRITE_ZEROES, 1, 60, 2) == 0                    # metadata reads as unwritten
    assert io(g, NvmOpcode.READ, 1, 60, 2, length=1024) == 0
    assert g.ram.read(g.md, 16) == b"\xff" * 16


def copy(g, nsid, ranges, sdlba, fmt, *, prinfor=0, prinfow=0, reftag=0, apptag=0, snsid=0):
    entries = b""
    for slba, nlb, eilbrt, elbat in ranges:
        if fmt in (0, 2):
            entry = struct.pack("<8xQH2xIHH4x", slba, nlb - 1, eilbrt, elbat, 0xFFFF)
        else:
            entry = struct.pack("<8xQH12x", slba, nlb - 1) + eilbrt.to_bytes(6, "big") + \
                struct.pack("<HH", elbat, 0xFFFF)
        entries += struct.pack("<I", snsid) + entry[4:] if fmt >= 2 else entry
    g.ram.write(g.buf, entries)
    cdw12 = (len(ranges) - 1) | fmt << 8 | prinfor << 12 | prinfow << 26
    e = g.cmd(NvmOpcode.COPY, qid=1, nsid=nsid, dptr1=g.buf, cdw10=sdlba, cdw12=cdw12,
              cdw14=reftag, cdw15=apptag | 0xFFFF << 16)
    return (e.status >> 1) & 0x7FF


@pytest.mark.parametrize("nsid, fmt", [(1, 0), (2, 1)])
def test_copy_checks_sources_and_regenerates_pi(host, nsid, fmt):
    g = host
    lba = LAYOUT[nsid][0]
    data = payload(2 * lba, 20)
    assert io(g, NvmOpcode.WRITE, nsid, 200, 2, data=data, flags=PRACT, apptag=6, mptr=0) == 0
    assert copy(g, nsid, [(200, 2, 200, 6)], 300, fmt, prinfor=0x7, prinfow=0x8, reftag=300, apptag=8) == 0
    assert io(g, NvmOpcode.READ, nsid, 300, 2, length=2 * lba, flags=G | A | R, apptag=8) == 0
    assert g.ram.read(g.buf, 2 * lba) == data
    # type 1: a source range's expected reference tag must be its SLBA
    assert copy(g, nsid, [(200, 2, 201, 6)], 400, fmt, prinfor=0x1, prinfow=0x8, reftag=400) == \
        Status.INVALID_PROTECTION_INFORMATION
    assert copy(g, nsid, [(200, 2, 200, 7)], 400, fmt, prinfor=0x2, prinfow=0x8, reftag=400) == \
        Status.APPLICATION_TAG_CHECK_ERROR
    # without PRACT the copied tuples are checked against the destination's tags
    assert copy(g, nsid, [(200, 2, 200, 6)], 400, fmt, prinfow=0x1, reftag=400) == Status.REFERENCE_TAG_CHECK_ERROR
    assert io(g, NvmOpcode.READ, nsid, 400, 2, length=2 * lba) == 0
    assert g.ram.read(g.md, 8) == b"\xff" * 8
    assert copy(g, nsid, [(200, 2, 200, 6)], 400, 1 - fmt) == Status.INVALID_FORMAT   # other guard's format


def test_copy_between_namespaces_formats_2_and_3(host):
    g = host
    data = payload(1024, 21)
    assert io(g, NvmOpcode.WRITE, 5, 30, 2, data=data, md=bytes(128), flags=PRACT, apptag=3) == 0
    # formats 2/3 are off until the host enables them (Host Behavior Support, CDFE)
    assert copy(g, 1, [(30, 2, 30, 3)], 600, 2, snsid=5) == Status.INVALID_FIELD
    hbs = bytearray(512)
    hbs[4:6] = (0b1100).to_bytes(2, "little")
    g.ram.write(g.md, bytes(hbs))
    assert g.cmd(AdminOpcode.SET_FEATURES, cdw10=0x16, dptr1=g.md).status >> 1 == 0
    # namespace 5 (512 + 64, tuple first) is formatted unlike namespace 1 (512 + 8)
    assert copy(g, 1, [(30, 2, 30, 3)], 600, 2, snsid=5) == Status.INCOMPATIBLE_NAMESPACE_OR_FORMAT
    assert copy(g, 1, [(30, 2, 30, 3)], 600, 2, snsid=99) == Status.INCOMPATIBLE_NAMESPACE_OR_FORMAT
    # 64b guard across namespaces: namespace 2 -> namespace 6 differ (16 vs 64 bytes) too
    assert copy(g, 6, [(30, 2, 30, 3)], 600, 3, snsid=2) == Status.INCOMPATIBLE_NAMESPACE_OR_FORMAT
    # a like-formatted source: namespace 1 -> namespace 1 through format 2 (SNSID = the destination)
    d1 = payload(1024, 22)
    assert io(g, NvmOpcode.WRITE, 1, 30, 2, data=d1, flags=PRACT, apptag=3, mptr=0) == 0
    assert copy(g, 1, [(30, 2, 30, 3)], 600, 2, snsid=1, prinfor=0x7, prinfow=0x8, reftag=600, apptag=4) == 0
    assert io(g, NvmOpcode.READ, 1, 600, 2, length=1024, flags=G | A | R, apptag=4) == 0
    assert g.ram.read(g.buf, 1024) == d1
    hbs[4:6] = bytes(2)
    g.ram.write(g.md, bytes(hbs))
    assert g.cmd(AdminOpcode.SET_FEATURES, cdw10=0x16, dptr1=g.md).status >> 1 == 0


def test_copy_across_namespaces_moves_data_and_metadata(tmp_path):
    g = pi_host(tmp_path, [NvmNamespace(MemoryBackend(1 << 20), ms=8, pi=1) for _ in (1, 2)], "trap")
    try:
        hbs = bytearray(512)
        hbs[4:6] = (0b0100).to_bytes(2, "little")
        g.ram.write(g.md, bytes(hbs))
        assert g.cmd(AdminOpcode.SET_FEATURES, cdw10=0x16, dptr1=g.md).status >> 1 == 0
        data = payload(1024, 23)
        assert io(g, NvmOpcode.WRITE, 2, 8, 2, data=data, flags=PRACT, apptag=5, mptr=0) == 0
        # source ranges of namespace 2 checked with their tags, destination in namespace 1 regenerated
        assert copy(g, 1, [(8, 2, 8, 5)], 100, 2, snsid=2, prinfor=0x7, prinfow=0x8, reftag=100, apptag=5) == 0
        assert io(g, NvmOpcode.READ, 1, 100, 2, length=1024, flags=G | A | R, apptag=5) == 0
        assert g.ram.read(g.buf, 1024) == data
        assert g.ram.read(g.md, 16) == tuple16(data[:512], 5, 100) + tuple16(data[512:], 5, 101)
    finally:
        g.close()


# ---------------------------------------------------------------- format nvm
def test_format_nvm_each_field(tmp_path):
    path = tmp_path / "ns.img"
    ns = NvmNamespace(FileBackend(str(path), size=1 << 20))
    g = pi_host(tmp_path, [ns], "trap")
    try:
        buf = g.alloc(4096)

        def fmt(cdw10):
            return (g.cmd(AdminOpcode.FORMAT_NVM, nsid=1, cdw10=cdw10).status >> 1) & 0x7FF

        def idns():
            assert g.cmd(AdminOpcode.IDENTIFY, nsid=1, dptr1=buf, cdw10=0).status >> 1 == 0
            return g.ram.read(buf, 4096)

        assert fmt(0 | 1 << 5) == Status.INVALID_FORMAT             # PI without metadata
        assert fmt(0 | 1 << 4) == Status.INVALID_FORMAT             # MSET without metadata
        assert fmt(8) == Status.INVALID_FORMAT                      # no such LBAF
        assert fmt(1 << 12) == Status.INVALID_FORMAT                # upper LBAF bits: format 16
        assert fmt(1 | 2 << 9) == Status.INVALID_FIELD              # crypto erase is not offered
        assert fmt(1 | 4 << 5) == Status.INVALID_FIELD
        # LBAF 5 (4096 + 8), MSET, PI type 2, PIL first, SES user data erase
        assert fmt(5 | 1 << 4 | 2 << 5 | 1 << 8 | 1 << 9) == 0
        d = idns()
        assert (d[26], d[29]) == (0x15, 0x0A) and struct.unpack_from("<Q", d)[0] == 256
        assert ns.lba_size == 4096 and ns.ms == 8 and ns.fmt.extended and ns.protection.pi_type == 2
        assert (tmp_path / "ns.img.meta").stat().st_size == 256 * 8      # the companion metadata file
        assert fmt(1 | 1 << 5) == 0                                 # 512 + 8, type 1, separate, last bytes
        d = idns()
        assert (d[26], d[29]) == (0x01, 0x01)
        assert (tmp_path / "ns.img.meta").stat().st_size == 2048 * 8
        assert fmt(0) == 0 and ns.metadata is None and ns.protection is None
    finally:
        g.close()


def test_metadata_persists_in_the_file_backend(tmp_path):
    path = str(tmp_path / "p.img")
    ns = NvmNamespace(FileBackend(path, size=1 << 20), ms=8, pi=1)
    ns.metadata.write(3, b"12345678")
    ns.close()
    again = NvmNamespace(FileBackend(path, size=1 << 20), ms=8, pi=1)
    buf = bytearray(16)
    again.metadata.read(3, buf)
    assert bytes(buf) == b"12345678" + b"\xff" * 8
    again.close()


# ---------------------------------------------------------------- fault injection
@pytest.mark.parametrize("nsid, field, pos", [(1, "guard", 0), (1, "reftag", 4), (2, "apptag", 8), (3, "reftag", 4)])
def test_pi_corrupt_fault_damages_the_returned_tuple_only(host, nsid, field, pos):
    from nvshell.device.faults import FaultRule, FaultSet
    from nvshell.device.nvme.fault_injector import install
    g = host
    lba, ms, mset = LAYOUT[nsid][:3]
    data = payload(2 * lba, 30)
    assert io(g, NvmOpcode.WRITE, nsid, 210, 2, data=data, flags=PRACT, mptr=0) == 0
    faults = FaultSet()
    injector = g.run(install, g.ctrl, faults)
    try:
        faults.add(FaultRule.from_args({"id": "p1", "action": "pi-corrupt", "field": field, "nsid": nsid,
                                        "slba": 211, "nlb": 1}))
        length = 2 * (lba + ms) if mset else 2 * lba
        assert io(g, NvmOpcode.READ, nsid, 210, 2, length=length, flags=G | A | R, mptr=0 if mset else None) == 0
        wire = g.ram.read(g.buf, length)
        md = (wire[lba:lba + ms] + wire[2 * lba + ms:]) if mset else g.ram.read(g.md, 2 * ms)
        clean = tuple64 if LAYOUT[nsid][5] else tuple16
        assert md[:ms] == clean(data[:lba], 0, 210)                   # block 210 is outside the rule
        second = clean(data[lba:], 0, 211)
        assert md[ms + pos] == second[pos] ^ 0x5A and md[ms:ms + pos] == second[:pos]
        assert (wire[:lba] + wire[lba + ms:2 * lba + ms] if mset else wire) == data   # the data is intact
        faults.remove("p1")
        assert io(g, NvmOpcode.READ, nsid, 210, 2, length=length, mptr=0 if mset else None) == 0
        md = g.ram.read(g.buf + 2 * lba + ms, ms) if mset else g.ram.read(g.md, 2 * ms)[ms:]
        assert md[:len(second)] == second                              # the media never changed
    finally:
        g.run(injector.uninstall)


def test_pi_corrupt_rule_arguments():
    from nvshell.device.errors import PropertyError
    from nvshell.device.faults import FaultRule
    rule = FaultRule.from_args({"id": "p", "action": "pi-corrupt", "field": "apptag"})
    assert rule.describe()["field"] == "apptag" and rule.describe()["opcode"] == "read"
    with pytest.raises(PropertyError, match="Parameter 'field' expects one of guard, apptag, reftag"):
        FaultRule.from_args({"id": "p", "action": "pi-corrupt", "field": "crc"})
    with pytest.raises(PropertyError, match="only used by action=pi-corrupt"):
        FaultRule.from_args({"id": "p", "action": "corrupt", "field": "guard"})
    with pytest.raises(PropertyError, match="applies to reads"):
        FaultRule.from_args({"id": "p", "action": "pi-corrupt", "opcode": "write"})


def test_corrupt_fault_flips_data_bits_only_with_extended_lbas(host):
    from nvshell.device.faults import FaultRule, FaultSet
    from nvshell.device.nvme.fault_injector import install
    g = host
    lba, ms = 4096, 8
    blocks = [payload(lba, 40), payload(lba, 41)]
    assert io(g, NvmOpcode.WRITE, 3, 230, 2, data=blocks[0] + blocks[1], flags=PRACT, mptr=0, length=2 * lba) == 0
    assert io(g, NvmOpcode.READ, 3, 230, 2, length=2 * (lba + ms), mptr=0) == 0
    clean = g.ram.read(g.buf, 2 * (lba + ms))
    faults = FaultSet()
    injector = g.run(install, g.ctrl, faults)
    try:
        faults.add(FaultRule.from_args({"id": "c1", "action": "corrupt", "bits": 8, "seed": 3, "nsid": 3}))
        assert io(g, NvmOpcode.READ, 3, 230, 2, length=2 * (lba + ms), mptr=0) == 0
        wire = g.ram.read(g.buf, 2 * (lba + ms))
    finally:
        g.run(injector.uninstall)
    assert wire[lba:lba + ms] == clean[lba:lba + ms] and wire[-ms:] == clean[-ms:]     # metadata untouched
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(wire, clean))
    assert 0 < flipped <= 8
