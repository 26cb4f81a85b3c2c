"""Identify (06h): every CNS, its errors, and the Identify Controller byte offsets
checked against the NVMe base specification (not against our own Layout).

The commands run on real controllers in a real subsystem, sent by ``NvmeTestHost`` over vfio-user."""

from __future__ import annotations

import struct
from typing import Iterator

import pytest

from nvshell.device.backends import MemoryBackend
from nvshell.device.nvme.admin_identify import ID_CTRL, oncs
from nvshell.device.nvme.commands import CommandTable
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import CSI, NvmOpcode
from nvshell.device.nvme.status import Status
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.device.nvme.zoned import ZonedNamespace
from nvshell.testing import NvmeHostError, NvmeTestHost

NS_BYTES = 1024 * 512


def nvm_ns() -> NvmNamespace:
    return NvmNamespace(MemoryBackend(NS_BYTES), lba_size=512)


def served(directory, s: Subsystem, name: str, **config) -> NvmeTestHost:
    """An enabled host on a served controller in ``s`` (serial SER123, IEEE OUI 52:54:00)."""
    return NvmeTestHost.serve(directory, name=name, subsystem=s, serial="SER123", oui=0x525400, **config).enable()


@pytest.fixture
def setup(tmp_path) -> Iterator[tuple[Subsystem, NvmeTestHost, NvmeTestHost, NvmNamespace, ZonedNamespace]]:
    s = Subsystem("nqn.2024-01.io.nvshell:test")
    a, b = served(tmp_path, s, "a"), served(tmp_path, s, "b", cntlid=5)
    n1 = nvm_ns()
    n2 = ZonedNamespace(MemoryBackend(NS_BYTES), lba_size=512, zone_size=64 << 10)
    s.add_namespace(n1)      # nsid 1: attached to a
    s.add_namespace(n2, 3)   # nsid 3: attached to a and b
    s.attach(1, a.ctrl, notify=False)
    s.attach_all(3, notify=False)
    s.add_namespace(nvm_ns(), 2)  # nsid 2: allocated, not attached
    yield s, a, b, n1, n2
    a.close()
    b.close()


def identify(host: NvmeTestHost, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> bytes:
    out = host.identify(cns, nsid, cntid, csi)
    assert len(out) == 4096
    return out


def identify_error(host: NvmeTestHost, cns: int, nsid: int = 0, **kw: int) -> int:
    with pytest.raises(NvmeHostError) as e:
        identify(host, cns, nsid, **kw)
    return int(e.value.status)


def page(data: bytes) -> bytes:
    """A namespace's own structure as Identify returns it: one 4 KiB page."""
    return data.ljust(4096, b"\0")


def u16(b: bytes, off: int) -> int:
    return struct.unpack_from("<H", b, off)[0]


def u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def test_identify_controller_offsets(setup) -> None:
    s, a, b, *_ = setup
    d = identify(b, 0x01)
    assert u16(d, 0) == 0x4E58 and u16(d, 2) == 0x4E58          # VID, SSVID
    assert d[4:24] == b"SER123".ljust(20)                        # SN, space padded
    assert d[24:64] == b"nvshell NVMe Ctrl".ljust(40)            # MN
    assert d[64:72] == b"1.0     "                               # FR
    assert d[73:76] == b"\x00\x54\x52"                           # IEEE OUI (configured), LSB first
    assert d[76] & 0b10 and not d[76] & 0b1                      # CMIC multi-controller, one port
    assert d[77] == 7                                            # MDTS
    assert u16(d, 78) == 5                                       # CNTLID
    assert u32(d, 80) == 0x00020000                              # VER
    assert u32(d, 92) & (1 << 8)                                 # OAES NS attribute notices
    assert d[111] == 1                                           # CNTRLTYPE I/O
    oacs = u16(d, 256)
    assert oacs & (1 << 1) and oacs & (1 << 3) and oacs & (1 << 8)   # Format, NS Mgmt, Doorbell Buffer Config
    assert d[258] == 3 and d[259] == 3                           # ACL, AERL
    assert d[260] == 0b10111                                     # FRMW: 3 slots, slot 1 RO, activation w/o reset
    assert d[261] == 0b11111                                     # LPA: per-NS SMART, effects, extended, telemetry, PEL
    assert d[262] == 63                                          # ELPE
    assert d[263] == 0                                           # NPSS
    assert u16(d, 266) == 0x157 and u16(d, 268) == 0x175         # WCTEMP, CCTEMP
    assert d[512] == 0x66 and d[513] == 0x44                     # SQES, CQES
    assert u32(d, 516) == 256                                    # NN
    assert u16(d, 520) & (1 << 4)                                # ONCS save/select
    assert d[525] == 0b111                                       # VWC present + flush broadcast
    assert u32(d, 536) & 0b11 == 1 and u32(d, 536) & (1 << 16)   # SGLS
    assert u32(d, 540) == 256                                    # MNAN
    assert d[768:768 + 256].rstrip(b"\0") == b"nqn.2024-01.io.nvshell:test"
    assert u16(d, 2048) == 2500                                  # PSD0 MP
    tnvmcap = int.from_bytes(d[280:296], "little")
    unvmcap = int.from_bytes(d[296:312], "little")
    assert tnvmcap == s.capacity and unvmcap == s.capacity - 3 * 1024 * 512


def test_layout_offsets_match_spec() -> None:
    expected = dict(vid=0, ssvid=2, sn=4, mn=24, fr=64, rab=72, ieee=73, cmic=76, mdts=77, cntlid=78,
                    ver=80, rtd3e=88, oaes=92, ctratt=96, cntrltype=111, oacs=256, acl=258, aerl=259,
                    frmw=260, lpa=261, elpe=262, npss=263, wctemp=266, cctemp=268, tnvmcap=280,
                    kas=320, sqes=512, cqes=513, maxcmd=514, nn=516, oncs=520, fuses=522, vwc=525,
                    ocfs=534, sgls=536, mnan=540, subnqn=768, psd0=2048)
    for name, off in expected.items():
        assert ID_CTRL.offsets[name] == off, name
    assert ID_CTRL.size == 4096


def test_oncs_follows_nvm_table() -> None:
    table = CommandTable("t")
    assert oncs(table) == (1 << 4) | (1 << 6)
    for op in (NvmOpcode.COMPARE, NvmOpcode.DATASET_MANAGEMENT, NvmOpcode.WRITE_ZEROES,
               NvmOpcode.VERIFY, NvmOpcode.COPY):
        table.command(op)(lambda c, m: None)
    assert oncs(table) == 0x1DD


def test_identify_namespace(setup) -> None:
    s, a, b, n1, n2 = setup
    assert identify(a, 0x00, 1) == page(n1.identify_ns())
    assert identify(b, 0x00, 1) == bytes(4096)   # allocated elsewhere, not attached to b
    assert identify(a, 0x00, 2) == bytes(4096)   # allocated, attached nowhere
    assert identify(a, 0x00, 200) == bytes(4096)  # unallocated but valid
    assert identify_error(a, 0x00, 0) == Status.INVALID_NSID
    assert identify_error(a, 0x00, 257) == Status.INVALID_NSID
    common = identify(a, 0x00, 0xFFFFFFFF)
    assert common[25] == 7                                  # NLBAF: eight formats
    assert (u32(common, 128) >> 16) & 0xFF == 9             # LBAF0 512
    assert u32(common, 132) == 9 << 16 | 8                  # LBAF1 512 + 8 bytes of metadata
    assert (u32(common, 144) >> 16) & 0xFF == 12            # LBAF4 4096
    assert common[27] == 3 and common[28] == 0x1F           # MC, DPC


def test_active_namespace_list(setup) -> None:
    s, a, b, *_ = setup
    d = identify(a, 0x02, 0)
    assert struct.unpack_from("<3I", d) == (1, 3, 0)
    assert struct.unpack_from("<2I", identify(a, 0x02, 1)) == (3, 0)
    assert struct.unpack_from("<2I", identify(b, 0x02, 0)) == (3, 0)
    assert identify(a, 0x02, 3) == bytes(4096)
    assert identify_error(a, 0x02, 0xFFFFFFFE) == Status.INVALID_NSID
    assert identify_error(a, 0x02, 0xFFFFFFFF) == Status.INVALID_NSID


def test_descriptors(setup) -> None:
    s, a, b, n1, _ = setup
    assert identify(a, 0x03, 1) == page(n1.id_descriptors())
    assert identify_error(b, 0x03, 1) == Status.INVALID_FIELD
    assert identify_error(a, 0x03, 0) == Status.INVALID_NSID
    assert identify_error(a, 0x03, 0xFFFFFFFF) == Status.INVALID_NSID


def test_cs_namespace(setup) -> None:
    s, a, b, n1, n2 = setup
    assert identify(a, 0x05, 1, csi=CSI.NVM) == page(n1.identify_ns_csi())
    assert identify_error(a, 0x05, 1, csi=CSI.ZONED) == Status.INVALID_FIELD
    assert identify(a, 0x05, 3, csi=CSI.ZONED) == page(n2.identify_ns_csi())
    assert n2.identify_ns_csi() != n1.identify_ns_csi()
    assert identify(b, 0x05, 1, csi=CSI.NVM) == bytes(4096)
    assert identify_error(a, 0x05, 0) == Status.INVALID_NSID


def test_cs_controller(setup) -> None:
    s, a, *_ = setup
    d = identify(a, 0x06, csi=CSI.NVM)
    assert d[3] == 255                  # DMRL
    assert identify(a, 0x06, csi=CSI.ZONED)[0] == 0   # ZASL 0: Zone Append limited by MDTS
    assert identify_error(a, 0x06, csi=1) == Status.INVALID_FIELD
    assert identify_error(a, 0x06, csi=0x30) == Status.INVALID_FIELD


def test_cs_active_list(setup) -> None:
    s, a, *_ = setup
    assert struct.unpack_from("<2I", identify(a, 0x07, csi=CSI.NVM)) == (1, 0)
    assert struct.unpack_from("<2I", identify(a, 0x07, csi=CSI.ZONED)) == (3, 0)
    assert identify_error(a, 0x07, csi=0x30) == Status.INVALID_FIELD


def test_independent_namespace(setup) -> None:
    s, a, b, n1, _ = setup
    d = identify(a, 0x08, 1)
    assert d[1] == 1 and d[14] == 1                       # NMIC shared, NSTAT ready
    assert u16(d, 10) == u16(n1.identify_ns(), 100)       # NVMSETID, from the namespace's own CNS 00
    n1.ready = False
    assert identify(a, 0x08, 1)[14] == 0
    assert identify(b, 0x08, 1) == bytes(4096)
    assert identify_error(a, 0x08, 0) == Status.INVALID_NSID


def test_allocated_lists(setup) -> None:
    s, a, b, n1, _ = setup
    assert struct.unpack_from("<4I", identify(b, 0x10, 0)) == (1, 2, 3, 0)
    assert struct.unpack_from("<2I", identify(b, 0x10, 2)) == (3, 0)
    assert identify(b, 0x11, 1) == page(n1.identify_ns())    # allocated, not attached to b
    assert identify(b, 0x11, 9) == bytes(4096)
    assert identify_error(b, 0x11, 0) == Status.INVALID_NSID
    assert struct.unpack_from("<3I", identify(b, 0x1A, 0, csi=CSI.NVM)) == (1, 2, 0)
    assert identify(b, 0x1B, 1, csi=CSI.NVM) == page(n1.identify_ns_csi())
    assert identify_error(b, 0x1B, 1, csi=CSI.ZONED) == Status.INVALID_FIELD


def test_controller_lists(setup) -> None:
    s, a, b, *_ = setup
    assert struct.unpack_from("<3H", identify(a, 0x12, 3)) == (2, 1, 5)
    assert struct.unpack_from("<2H", identify(a, 0x12, 1)) == (1, 1)
    assert struct.unpack_from("<2H", identify(a, 0x12, 3, cntid=2)) == (1, 5)
    assert struct.unpack_from("<H", identify(a, 0x12, 2)) == (0,)
    assert identify_error(a, 0x12, 0) == Status.INVALID_NSID
    assert struct.unpack_from("<3H", identify(a, 0x13)) == (2, 1, 5)
    assert struct.unpack_from("<2H", identify(a, 0x13, cntid=5)) == (1, 5)
    assert struct.unpack_from("<H", identify(a, 0x13, cntid=6)) == (0,)


def test_io_command_sets(setup) -> None:
    s, a, *_ = setup
    d = identify(a, 0x1C)
    assert struct.unpack_from("<Q", d)[0] == 0b101 and d[8:] == bytes(4088)   # NVM (bit 0) + Zoned (bit 2)


@pytest.mark.parametrize("cns", [0x04, 0x09, 0x14, 0x15, 0x1F, 0xFF])
def test_unknown_cns(setup, cns: int) -> None:
    s, a, *_ = setup
    assert identify_error(a, cns) == Status.INVALID_FIELD


def test_with_real_namespace(tmp_path) -> None:
    """CNS 00/03/05/08 on a 4 KiB-block namespace."""
    s = Subsystem()
    a = served(tmp_path, s, "a")
    ns = NvmNamespace(MemoryBackend(1 << 20), lba_size=4096)
    nsid = s.add_namespace(ns)
    s.attach_all(nsid, notify=False)
    d = identify(a, 0x00, nsid)
    assert struct.unpack_from("<Q", d)[0] == 256 and d[30] & 1
    desc = identify(a, 0x03, nsid)
    assert desc[0] in (1, 2, 3, 4)
    assert len(identify(a, 0x05, nsid, csi=CSI.NVM)) == 4096
    ind = identify(a, 0x08, nsid)
    assert ind[1] == 1 and ind[14] == 1
    assert struct.unpack_from("<2I", identify(a, 0x02)) == (nsid, 0)
    a.close()
    ns.close()
