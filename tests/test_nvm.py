"""NVM I/O commands against the real controller (its CommandEngine) with real guest memory (memfd)."""

from __future__ import annotations

import random
import struct

import pytest

from nvshell.device.backends import BackendError, FileBackend, MemoryBackend
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.nvm import COPY_RANGE_F0, DSM_RANGE
from nvshell.device.nvme.spec import NvmOpcode
from nvshell.device.nvme.status import Status
from tests.nvm_rig import PAGE, Guest, NvmHost, make_cmd

PSDT_SGL = 1 << 6


@pytest.fixture
def env():
    g = Guest()
    ns = NvmNamespace(MemoryBackend(1 << 24), lba_size=512, mssrl=64 * 512, mcl=128 * 512, msrc=4)
    ns.nsid = 1
    ctrl = NvmHost(g.memory)
    ctrl.namespaces[1] = ns
    yield g, ns, ctrl
    g.close()


def rw(opcode, slba, nlb, prp1=0, prp2=0, cdw12=0, nsid=1, flags=0):
    return make_cmd(opcode, nsid=nsid, flags=flags, dptr1=prp1, dptr2=prp2, cdw10=slba & 0xFFFFFFFF,
                    cdw11=slba >> 32, cdw12=((nlb - 1) & 0xFFFF) | cdw12)


def data(n, seed=3):
    return random.Random(seed).randbytes(n)


def test_write_then_read(env):
    g, ns, ctrl = env
    src, dst = g.alloc(2), g.alloc(2)
    payload = data(8192)
    g.write(src, payload)
    assert ctrl.run(rw(NvmOpcode.WRITE, 10, 16, src, src + PAGE)) == Status.SUCCESS
    assert ns.backend.read(10 * 512, 8192) == payload
    assert ctrl.run(rw(NvmOpcode.READ, 10, 16, dst, dst + PAGE)) == Status.SUCCESS
    assert g.read(dst, 8192) == payload
    assert ctrl.stats.bytes_written == 8192 and ctrl.stats.bytes_read == 8192


def test_read_write_4k_format_and_64bit_slba(env):
    g, _, ctrl = env
    ns = NvmNamespace(MemoryBackend(1 << 46), lba_size=4096)
    ctrl.namespaces[2] = ns
    slba = (1 << 32) + 5          # crosses the cdw10/cdw11 boundary
    buf = g.alloc()
    g.write(buf, b"\x77" * 4096)
    assert ctrl.run(rw(NvmOpcode.WRITE, slba, 1, buf, nsid=2)) == Status.SUCCESS
    assert ns.backend.read(slba * 4096, 4096) == b"\x77" * 4096
    assert ns.backend.allocated == MemoryBackend.CHUNK


def test_read_via_sgl_with_bit_bucket(env):
    g, ns, ctrl = env
    ns.backend.write(0, data(1536))
    a, seg = g.alloc(), g.alloc()
    g.write(seg, struct.pack("<QI3xB", a, 512, 0x00) + struct.pack("<QI3xB", 0, 1024, 0x10))
    first = struct.pack("<QI3xB", seg, 32, 0x30)
    p1, p2 = struct.unpack("<QQ", first)
    assert ctrl.run(rw(NvmOpcode.READ, 0, 3, p1, p2, flags=PSDT_SGL)) == Status.SUCCESS
    assert g.read(a, 512) == data(1536)[:512]
    # the same SGL for a write is invalid
    assert ctrl.run(rw(NvmOpcode.WRITE, 0, 3, p1, p2, flags=PSDT_SGL)) == Status.SGL_DESCRIPTOR_TYPE_INVALID


def test_rw_errors(env):
    g, ns, ctrl = env
    buf = g.alloc()
    last = ns.nlbas
    assert ctrl.run(rw(NvmOpcode.READ, last - 1, 1, buf)) == Status.SUCCESS
    assert ctrl.run(rw(NvmOpcode.READ, last - 1, 2, buf, buf + PAGE)) == Status.LBA_OUT_OF_RANGE
    assert ctrl.run(rw(NvmOpcode.WRITE, last, 1, buf)) == Status.LBA_OUT_OF_RANGE
    assert ctrl.run(rw(NvmOpcode.READ, 1 << 63, 1, buf)) == Status.LBA_OUT_OF_RANGE
    # MDTS 7 -> 512 KiB: 1025 blocks of 512 is too big (checked before the LBA range)
    assert ctrl.run(rw(NvmOpcode.READ, last, 1025, buf)) == Status.INVALID_FIELD
    ctrl.mdts = 0
    assert ctrl.run(rw(NvmOpcode.READ, last, 1025, buf)) == Status.LBA_OUT_OF_RANGE
    assert ctrl.run(rw(NvmOpcode.READ, 0, 1, 0x4000_0000)) == Status.DATA_TRANSFER_ERROR
    assert ctrl.run(rw(NvmOpcode.WRITE, 0, 1, buf + 1)) == Status.PRP_OFFSET_INVALID
    assert ctrl.run(rw(NvmOpcode.WRITE, 0, 1, buf, flags=3 << 6)) == Status.INVALID_FIELD
    assert ctrl.stats.bytes_written == 0


class FailingBackend(MemoryBackend):
    def readinto(self, offset, buf):
        raise BackendError("boom", 5)

    def write(self, offset, data):
        raise BackendError("boom", 5)

    def flush(self):
        raise BackendError("boom", 5)


def test_backend_errors_become_media_errors(env):
    g, _, ctrl = env
    ctrl.namespaces[3] = NvmNamespace(FailingBackend(1 << 20))
    buf = g.alloc()
    assert ctrl.run(rw(NvmOpcode.READ, 0, 1, buf, nsid=3)) == Status.UNRECOVERED_READ_ERROR
    assert ctrl.run(rw(NvmOpcode.WRITE, 0, 1, buf, nsid=3)) == Status.WRITE_FAULT
    assert ctrl.run(make_cmd(NvmOpcode.FLUSH, nsid=3)) == Status.WRITE_FAULT
    assert ctrl.run(rw(NvmOpcode.VERIFY, 0, 1, nsid=3)) == Status.UNRECOVERED_READ_ERROR


def test_fua_flushes(env, tmp_path):
    g, _, ctrl = env
    flushed = []
    backend = FileBackend(str(tmp_path / "f.img"), size=1 << 20)
    backend.flush = lambda: flushed.append(1)  # type: ignore[method-assign]
    ctrl.namespaces[4] = NvmNamespace(backend)
    buf = g.alloc()
    assert ctrl.run(rw(NvmOpcode.WRITE, 0, 1, buf, nsid=4)) == Status.SUCCESS
    assert not flushed
    assert ctrl.run(rw(NvmOpcode.WRITE, 0, 1, buf, cdw12=1 << 30, nsid=4)) == Status.SUCCESS
    assert flushed == [1]
    backend.close()


def test_flush_single_and_broadcast(env):
    _, _, ctrl = env
    calls = []
    for nsid in (1, 5):
        ns = ctrl.namespaces.get(nsid) or NvmNamespace(MemoryBackend(1 << 20))
        ctrl.namespaces[nsid] = ns
        ns.backend.flush = (lambda n=nsid: calls.append(n))  # type: ignore[method-assign]
    assert ctrl.run(make_cmd(NvmOpcode.FLUSH, nsid=5)) == Status.SUCCESS
    assert calls == [5]
    assert ctrl.run(make_cmd(NvmOpcode.FLUSH, nsid=0xFFFFFFFF)) == Status.SUCCESS
    assert sorted(calls[1:]) == [1, 5]
    assert ctrl.run(make_cmd(NvmOpcode.FLUSH, nsid=0)) == Status.INVALID_NSID
    assert ctrl.run(make_cmd(NvmOpcode.FLUSH, nsid=9)) == Status.INVALID_NSID


def test_compare(env):
    g, ns, ctrl = env
    payload = data(2048)
    ns.backend.write(4 * 512, payload)
    buf = g.alloc()
    g.write(buf, payload)
    assert ctrl.run(rw(NvmOpcode.COMPARE, 4, 4, buf)) == Status.SUCCESS
    g.write(buf + 2047, b"\x00" if payload[-1] else b"\x01")
    assert ctrl.run(rw(NvmOpcode.COMPARE, 4, 4, buf)) == Status.COMPARE_FAILURE
    assert ctrl.run(rw(NvmOpcode.COMPARE, ns.nlbas - 1, 4, buf)) == Status.LBA_OUT_OF_RANGE


def test_write_zeroes_and_deac(env):
    _, ns, ctrl = env
    ns.backend.write(0, b"\xff" * (1 << 20))
    assert ctrl.run(rw(NvmOpcode.WRITE_ZEROES, 1, 2)) == Status.SUCCESS
    assert ns.backend.read(0, 4 * 512) == b"\xff" * 512 + bytes(1024) + b"\xff" * 512
    before = ns.backend.allocated
    assert ctrl.run(rw(NvmOpcode.WRITE_ZEROES, 256, 512, cdw12=1 << 25)) == Status.SUCCESS   # DEAC, whole chunks
    assert ns.backend.is_zero(256 * 512, 512 * 512)
    assert 512 * 512 % MemoryBackend.CHUNK == 0 and 256 * 512 % MemoryBackend.CHUNK == 0
    assert ns.backend.allocated == before - 512 * 512
    assert ctrl.run(rw(NvmOpcode.WRITE_ZEROES, ns.nlbas - 1, 2)) == Status.LBA_OUT_OF_RANGE


def test_dataset_management_deallocate(env):
    g, ns, ctrl = env
    ns.backend.write(0, b"\xaa" * (1 << 20))
    lst = g.alloc()
    ranges = [(10, 5), (100, 0), (1000, 128)]
    g.write(lst, b"".join(DSM_RANGE.pack(cattr=0, nlb=n, slba=s) for s, n in ranges))
    cmd = make_cmd(NvmOpcode.DATASET_MANAGEMENT, dptr1=lst, cdw10=len(ranges) - 1, cdw11=1 << 2)
    assert ctrl.run(cmd) == Status.SUCCESS
    assert ns.backend.is_zero(10 * 512, 5 * 512) and ns.backend.is_zero(1000 * 512, 128 * 512)
    assert ns.backend.read(9 * 512, 512) == b"\xaa" * 512
    assert ns.backend.read(15 * 512, 512) == b"\xaa" * 512
    # without AD nothing happens (hints only)
    g.write(lst, DSM_RANGE.pack(nlb=1, slba=0))
    assert ctrl.run(make_cmd(NvmOpcode.DATASET_MANAGEMENT, dptr1=lst, cdw10=0, cdw11=1)) == Status.SUCCESS
    assert ns.backend.read(0, 1) == b"\xaa"
    # 255 ranges (DMRL), the last one out of range: nothing is deallocated
    lst2 = g.alloc(2)
    entries = [DSM_RANGE.pack(nlb=1, slba=i) for i in range(254)] + [DSM_RANGE.pack(nlb=2, slba=ns.nlbas - 1)]
    g.write(lst2, b"".join(entries))
    cmd = make_cmd(NvmOpcode.DATASET_MANAGEMENT, dptr1=lst2, dptr2=lst2 + PAGE, cdw10=254, cdw11=1 << 2)
    assert ctrl.run(cmd) == Status.LBA_OUT_OF_RANGE
    assert ns.backend.read(0, 1) == b"\xaa"
    # 256 ranges: more than Identify DMRL (255) allows
    g.write(lst2, b"".join([DSM_RANGE.pack(nlb=1, slba=i) for i in range(256)]))
    cmd = make_cmd(NvmOpcode.DATASET_MANAGEMENT, dptr1=lst2, dptr2=lst2 + PAGE, cdw10=255, cdw11=1 << 2)
    assert ctrl.run(cmd) == Status.COMMAND_SIZE_LIMIT_EXCEEDED
    assert ns.backend.read(0, 1) == b"\xaa"


def test_verify(env):
    _, ns, ctrl = env
    assert ctrl.run(rw(NvmOpcode.VERIFY, 0, ns.nlbas)) == Status.SUCCESS     # 16 MiB: not bounded by MDTS
    assert ctrl.run(rw(NvmOpcode.VERIFY, ns.nlbas - 1, 2)) == Status.LBA_OUT_OF_RANGE


def copy_cmd(g, ranges, sdlba, fmt=0, fua=False):
    lst = g.alloc(2)
    g.write(lst, b"".join(COPY_RANGE_F0.pack(slba=s, nlb=n - 1) for s, n in ranges))
    cdw12 = (len(ranges) - 1) | (fmt << 8) | ((1 << 30) if fua else 0)
    return make_cmd(NvmOpcode.COPY, dptr1=lst, dptr2=lst + PAGE, cdw10=sdlba & 0xFFFFFFFF, cdw11=sdlba >> 32,
                    cdw12=cdw12)


def test_copy(env):
    g, ns, ctrl = env
    a, b = data(3 * 512, 1), data(2 * 512, 2)
    ns.backend.write(100 * 512, a)
    ns.backend.write(200 * 512, b)
    assert ctrl.run(copy_cmd(g, [(100, 3), (200, 2)], 1000)) == Status.SUCCESS
    assert ns.backend.read(1000 * 512, 5 * 512) == a + b
    # overlapping source and destination
    assert ctrl.run(copy_cmd(g, [(100, 3)], 101, fua=True)) == Status.SUCCESS
    assert ns.backend.read(101 * 512, 3 * 512) == a


def test_copy_limits_and_errors(env):
    g, ns, ctrl = env
    assert ns.mssrl == 64 and ns.mcl == 128 and ns.msrc == 4
    assert ctrl.run(copy_cmd(g, [(0, 1)] * 5, 1000)) == Status.COMMAND_SIZE_LIMIT_EXCEEDED      # MSRC
    assert ctrl.run(copy_cmd(g, [(0, 65)], 1000)) == Status.COMMAND_SIZE_LIMIT_EXCEEDED         # MSSRL
    assert ctrl.run(copy_cmd(g, [(0, 64), (0, 64), (0, 1)], 1000)) == Status.COMMAND_SIZE_LIMIT_EXCEEDED  # MCL
    assert ctrl.run(copy_cmd(g, [(0, 1)], 1000, fmt=1)) == Status.INVALID_FORMAT   # 64b guard format, 16b ns
    assert ctrl.run(copy_cmd(g, [(0, 1)], 1000, fmt=4)) == Status.INVALID_FIELD
    assert ctrl.run(copy_cmd(g, [(ns.nlbas - 1, 2)], 1000)) == Status.LBA_OUT_OF_RANGE
    assert ctrl.run(copy_cmd(g, [(0, 2)], ns.nlbas - 1)) == Status.LBA_OUT_OF_RANGE
    bad = copy_cmd(g, [(0, 1)], 10)
    bad.dptr1 = 0x4000_0000
    assert ctrl.run(bad) == Status.DATA_TRANSFER_ERROR


def test_handlers_registered_with_table_metadata():
    from nvshell.device.nvme.commands import EFFECT_LBCC, NVM
    names = {i.opcode: i for i in NVM}
    assert {0x00, 0x01, 0x02, 0x05, 0x08, 0x09, 0x0C, 0x19} <= set(names)
    assert names[0x00].nsid == "optional" and names[0x02].nsid == "required"
    assert names[0x01].effects & EFFECT_LBCC and not names[0x02].effects & EFFECT_LBCC
    assert names[0x02].direction == "to-host" and names[0x01].direction == "from-host"
