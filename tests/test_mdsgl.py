"""Metadata SGLs (PSDT 10b): MPTR holds the address of one SGL descriptor for the separate metadata.

Driven through the real controller and the vfio-user client on the PI namespaces of
``tests.test_pi`` (nsid 1: 512 + 8 bytes, type 1; nsid 7: 512 + 8 without PI).
"""

from __future__ import annotations

import struct

import pytest

from nvshell.device.nvme.admin_identify import ID_CTRL
from nvshell.device.nvme.spec import AdminOpcode, NvmOpcode
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, status
from tests.test_pi import G, A, R, PRACT, host, last_error, payload, tuple16  # noqa: F401  (host: fixture)

PSDT_MPTR_SGL = 2 << 6
DATA, BUCKET, SEGMENT, LAST = 0x0, 0x1, 0x2, 0x3


def desc(addr: int, length: int, dtype: int) -> bytes:
    return struct.pack("<QI3xB", addr, length, dtype << 4)


@pytest.fixture(scope="module")
def g(host):
    host.desc = host.alloc(4096)     # the descriptor MPTR points at, then the segments behind it
    host.mdx = host.alloc(4096)      # metadata pieces
    return host


def sgl_io(g, opcode, nsid, slba, nlb, mdesc: list[bytes], *, data=b"", flags=0, reftag=None, apptag=0,
           appmask=0xFFFF, mptr=None):
    """One command with a data block SGL for the data and ``mdesc`` written at MPTR. Returns the status."""
    if data:
        g.ram.write(g.buf, data)
    g.ram.write(g.desc, b"".join(mdesc))
    e = g.cmd(opcode, qid=1, nsid=nsid, flags=PSDT_MPTR_SGL, dptr1=g.buf, dptr2=(512 * nlb),
              mptr=g.desc if mptr is None else mptr, cdw10=slba, cdw12=(nlb - 1) | flags,
              cdw14=slba if reftag is None else reftag, cdw15=apptag | appmask << 16)
    return (e.status >> 1) & 0x7FF


def test_identify_advertises_mptr_sgl_only(tmp_path):
    h = NvmeTestHost.serve(tmp_path, ns_size=1 << 20).enable(admin_depth=64)
    try:
        e, d = h.admin(AdminOpcode.IDENTIFY, cdw10=1, length=4096)
    finally:
        h.close()
    assert status(e) == 0
    sgls = struct.unpack_from("<I", d, ID_CTRL.offsets["sgls"])[0]
    assert sgls & 0x3 == 1 and sgls & (1 << 16) and sgls & (1 << 19)     # SGLs, bit bucket, MPTR SGL
    assert not sgls & (1 << 20) and not sgls & (1 << 2)                   # no offsets, no keyed SGLs


def test_metadata_through_one_data_block(g):
    data, md = payload(1024, 11), payload(16, 12)
    g.ram.write(g.mdx, md)
    assert sgl_io(g, NvmOpcode.WRITE, 7, 10, 2, [desc(g.mdx, 16, DATA)], data=data) == 0
    g.ram.write(g.mdx, bytes(16))
    assert sgl_io(g, NvmOpcode.READ, 7, 10, 2, [desc(g.mdx + 64, 16, DATA)]) == 0
    assert g.ram.read(g.mdx + 64, 16) == md and g.ram.read(g.buf, 1024) == data


def test_metadata_through_a_segment_chain(g):
    """MPTR -> segment (data block + segment descriptor) -> last segment (two data blocks)."""
    data, md = payload(2048, 13), payload(32, 14)
    seg1, seg2 = g.desc + 256, g.desc + 512
    pieces = [(g.mdx + 0x100, 8), (g.mdx + 0x300, 16), (g.mdx + 0x200, 8)]
    for (addr, n), off in zip(pieces, (0, 8, 24)):
        g.ram.write(addr, md[off:off + n])
    g.ram.write(seg1, desc(pieces[0][0], 8, DATA) + desc(seg2, 32, LAST))
    g.ram.write(seg2, desc(pieces[1][0], 16, DATA) + desc(pieces[2][0], 8, DATA))
    first = [desc(seg1, 32, SEGMENT)]
    assert sgl_io(g, NvmOpcode.WRITE, 7, 20, 4, first, data=data) == 0
    # Read it back into one data block: the same metadata, in order.
    assert sgl_io(g, NvmOpcode.READ, 7, 20, 4, [desc(g.mdx + 0x800, 32, DATA)]) == 0
    assert g.ram.read(g.mdx + 0x800, 32) == md
    # ... and scattered again through the last segment descriptor form.
    g.ram.write(seg2, desc(g.mdx + 0x900, 20, DATA) + desc(g.mdx + 0xA00, 12, DATA))
    assert sgl_io(g, NvmOpcode.READ, 7, 20, 4, [desc(seg2, 32, LAST)]) == 0
    assert g.ram.read(g.mdx + 0x900, 20) + g.ram.read(g.mdx + 0xA00, 12) == md


def test_bit_bucket_discards_metadata_on_read_only(g):
    data, md = payload(1024, 15), payload(16, 16)
    g.ram.write(g.mdx, md)
    assert sgl_io(g, NvmOpcode.WRITE, 7, 30, 2, [desc(g.mdx, 16, DATA)], data=data) == 0
    seg = g.desc + 256
    g.ram.write(g.mdx + 0x400, bytes(16))
    g.ram.write(seg, desc(0, 8, BUCKET) + desc(g.mdx + 0x400, 8, DATA))
    assert sgl_io(g, NvmOpcode.READ, 7, 30, 2, [desc(seg, 32, LAST)]) == 0
    assert g.ram.read(g.mdx + 0x400, 8) == md[8:]                      # block 0's metadata dropped
    assert sgl_io(g, NvmOpcode.READ, 7, 30, 2, [desc(0, 16, BUCKET)]) == 0
    # Host-to-device metadata cannot come from a bit bucket.
    assert sgl_io(g, NvmOpcode.WRITE, 7, 30, 2, [desc(seg, 32, LAST)], data=data) == \
        Status.SGL_DESCRIPTOR_TYPE_INVALID


def test_wrong_length_metadata_sgl_and_bad_pointers(g):
    data = payload(1024, 17)
    for n in (8, 24):       # shorter and longer than 2 x 8 bytes
        assert sgl_io(g, NvmOpcode.WRITE, 7, 40, 2, [desc(g.mdx, n, DATA)], data=data) == \
            Status.METADATA_SGL_LENGTH_INVALID
        assert sgl_io(g, NvmOpcode.READ, 7, 40, 2, [desc(g.mdx, n, DATA)]) == Status.METADATA_SGL_LENGTH_INVALID
    assert last_error(g)[0] == Status.METADATA_SGL_LENGTH_INVALID
    # A chain that runs out early is too short as well.
    g.ram.write(g.desc + 256, desc(g.mdx, 8, DATA))
    assert sgl_io(g, NvmOpcode.READ, 7, 40, 2, [desc(g.desc + 256, 16, LAST)]) == \
        Status.METADATA_SGL_LENGTH_INVALID
    assert sgl_io(g, NvmOpcode.READ, 7, 40, 2, [desc(g.mdx, 16, DATA)], mptr=g.desc + 4) == Status.INVALID_FIELD
    assert sgl_io(g, NvmOpcode.READ, 7, 40, 2, [], mptr=0x7FFF_0000_0000) == Status.DATA_TRANSFER_ERROR
    assert sgl_io(g, NvmOpcode.READ, 7, 40, 2, [struct.pack("<QI3xB", g.mdx, 16, 0x01)]) == \
        Status.SGL_DESCRIPTOR_TYPE_INVALID                              # data block with subtype 1 (offset)
    assert sgl_io(g, NvmOpcode.READ, 7, 40, 2, [desc(g.mdx, 16, 0x4)]) == Status.SGL_DESCRIPTOR_TYPE_INVALID


def test_pi_checks_with_sgl_metadata(g):
    data = payload(1024, 18)
    md = tuple16(data[:512], 0xBEEF, 50) + tuple16(data[512:], 0xBEEF, 51)
    g.ram.write(g.mdx + 0x100, md[:8])
    g.ram.write(g.mdx + 0x300, md[8:])
    seg = g.desc + 256
    g.ram.write(seg, desc(g.mdx + 0x100, 8, DATA) + desc(g.mdx + 0x300, 8, DATA))
    chain = [desc(seg, 32, LAST)]
    assert sgl_io(g, NvmOpcode.WRITE, 1, 50, 2, chain, data=data, flags=G | A | R, apptag=0xBEEF) == 0
    assert sgl_io(g, NvmOpcode.READ, 1, 50, 2, [desc(g.mdx + 0x500, 16, DATA)], flags=G | A | R,
                  apptag=0xBEEF) == 0
    assert g.ram.read(g.mdx + 0x500, 16) == md
    # A bad guard in the second piece of the chain: Guard Check Error naming LBA 51.
    g.ram.write(g.mdx + 0x300, bytes([md[8] ^ 1]) + md[9:])
    assert sgl_io(g, NvmOpcode.WRITE, 1, 50, 2, chain, data=data, flags=G) == Status.GUARD_CHECK_ERROR
    assert last_error(g) == (Status.GUARD_CHECK_ERROR, 51, 1)
    # Compare checks the stored tuples (good) and compares the metadata from the chain (differs).
    assert sgl_io(g, NvmOpcode.COMPARE, 1, 50, 2, chain, data=data, flags=G) == Status.COMPARE_FAILURE
    g.ram.write(g.mdx + 0x300, md[8:])
    assert sgl_io(g, NvmOpcode.COMPARE, 1, 50, 2, chain, data=data, flags=G | A | R, apptag=0xBEEF) == 0
    # PRACT insert on write (MPTR unused); the generated tuples read back through the chain.
    assert sgl_io(g, NvmOpcode.WRITE, 1, 60, 2, [], data=data, flags=PRACT, apptag=3, mptr=0) == 0
    assert sgl_io(g, NvmOpcode.READ, 1, 60, 2, chain, flags=A | R, apptag=3) == 0
    assert g.ram.read(g.mdx + 0x100, 8) + g.ram.read(g.mdx + 0x300, 8) == \
        tuple16(data[:512], 3, 60) + tuple16(data[512:], 3, 61)


def test_trace_point_names_each_metadata_sgl(g):
    from nvshell.device import trace as T

    records: list[dict] = []
    sink = records.append
    T.TRACE.add_sink(sink)
    T.TRACE.set_state("nvme_metadata_sgl", True)
    try:
        assert sgl_io(g, NvmOpcode.READ, 7, 10, 2, [desc(g.mdx, 16, DATA)]) == 0
        assert sgl_io(g, NvmOpcode.READ, 7, 10, 2, [desc(g.mdx, 8, DATA)]) == Status.METADATA_SGL_LENGTH_INVALID
    finally:
        T.TRACE.set_state("nvme_metadata_sgl", False)
        T.TRACE.remove_sink(sink)
    got = [(r["ctrl"], r["qid"], r["nsid"], r["length"], r["pieces"]) for r in records
           if r["name"] == "nvme_metadata_sgl"]
    assert got == [(g.ctrl.name, 1, 7, 16, 1)]
