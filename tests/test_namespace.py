"""NvmNamespace: Identify layouts at the spec's offsets, identifiers, format, validation."""

from __future__ import annotations

import struct
import uuid

import pytest

from nvshell.device.backends import MemoryBackend
from nvshell.device.nvme.commands import NVM
from nvshell.device.nvme.namespace import NamespaceError, NvmNamespace
from nvshell.device.nvme.spec import ID_NS
from nvshell.device.nvme.spec import CSI
from nvshell.device.nvme.status import NvmeError, Status

U = "5c6b1f6a-8e0e-4d5e-9a1f-0123456789ab"


def make(**kw):
    return NvmNamespace(MemoryBackend(kw.pop("size", 1 << 30)), uuid=kw.pop("uuid", U), **kw)


def test_attributes():
    ns = make()
    assert ns.nsid == 0 and ns.csi == CSI.NVM and ns.commands is NVM
    assert ns.nlbas == (1 << 30) // 512 and ns.lba_size == 512 and ns.lbads == 9
    assert ns.ready and ns.shared and ns.size == 1 << 30


def test_identify_ns_offsets():
    ns = make(mssrl=128 * 1024, mcl=256 * 1024, msrc=16)
    d = ns.identify_ns()
    assert len(d) == 4096
    nsze, ncap, nuse = struct.unpack_from("<QQQ", d, 0)
    assert nsze == ncap == nuse == ns.nlbas
    assert d[25] == 1                      # NLBAF: two formats (0-based)
    assert d[26] == 0                      # FLBAS -> LBAF0
    assert d[30] & 1                       # NMIC shared
    assert d[33] == 0x09                   # DLFEAT
    assert d[24] & 0x10                    # NSFEAT OPTPERF
    assert struct.unpack_from("<H", d, 64)[0] == 7      # NPWG 4 KiB in 512 B blocks, 0-based
    assert struct.unpack_from("<H", d, 74)[0] == 256    # MSSRL blocks
    assert struct.unpack_from("<I", d, 76)[0] == 512    # MCL blocks
    assert d[80] == 15                                  # MSRC 0-based
    assert int.from_bytes(d[48:64], "little") == 1 << 30  # NVMCAP
    assert d[104:120] == ns.nguid and d[120:128] == ns.eui64
    lbaf0, lbaf1 = struct.unpack_from("<II", d, 128)
    assert (lbaf0 >> 16) & 0xFF == 9 and (lbaf1 >> 16) & 0xFF == 12
    assert lbaf0 & 0xFFFF == 0 and lbaf1 & 0xFFFF == 0   # no metadata
    assert ID_NS.offsets["nsze"] == 0 and ID_NS.offsets["flbas"] == 26 and ID_NS.offsets["lbaf0"] == 128
    assert ID_NS.offsets["nguid"] == 104 and ID_NS.offsets["eui64"] == 120


def test_identify_private_and_4k():
    ns = make(shared=False, lba_size=4096)
    d = ns.identify_ns()
    assert d[30] == 0 and d[26] == 1
    assert struct.unpack_from("<Q", d, 0)[0] == (1 << 30) // 4096
    assert struct.unpack_from("<H", d, 64)[0] == 0


def test_identify_ns_csi():
    assert make().identify_ns_csi() == bytes(4096)


def test_id_descriptors():
    ns = make()
    d = ns.id_descriptors()
    assert len(d) == 4096
    pos, seen = 0, {}
    while d[pos]:
        nidt, nidl = d[pos], d[pos + 1]
        seen[nidt] = d[pos + 4:pos + 4 + nidl]
        pos += 4 + nidl
    assert seen == {1: ns.eui64, 2: ns.nguid, 3: uuid.UUID(U).bytes, 4: b"\x00"}


def test_identifiers_derived_stable_and_distinct():
    a, b = make(), make()
    assert a.eui64 == b.eui64 and a.nguid == b.nguid              # same UUID -> same identifiers
    c = make(uuid="11111111-2222-3333-4444-555555555555")
    assert c.eui64 != a.eui64 and c.nguid != a.nguid
    assert any(a.eui64) and any(a.nguid)
    r1, r2 = NvmNamespace(MemoryBackend(4096)), NvmNamespace(MemoryBackend(4096))
    assert r1.uuid != r2.uuid                                     # no UUID given: a fresh random one


def test_explicit_identifiers():
    ns = make(eui64=0x5254000000000001, nguid="00112233-4455-6677-8899-aabbccddeeff")
    assert ns.eui64 == bytes.fromhex("5254000000000001")
    assert ns.nguid == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert make(eui64="52:54:00:00:00:00:00:02").eui64 == bytes.fromhex("5254000000000002")
    for bad in ({"eui64": "xyz"}, {"eui64": "0102"}, {"nguid": 1 << 130}, {"uuid": "not-a-uuid"},
                {"lba_size": 1024}, {"msrc": 0}, {"msrc": 300}, {"mssrl": 0}, {"mcl": 512, "mssrl": 4096}):
        with pytest.raises(NamespaceError):
            make(**bad)
    with pytest.raises(NamespaceError):
        NvmNamespace(MemoryBackend(256))


def test_format_changes_lba_size_and_destroys_data():
    ns = make(size=1 << 20, mssrl=64 * 1024)
    ns.backend.write(0, b"\x01" * 4096)
    assert ns.mssrl == 128
    ns.format(1)
    assert ns.lba_size == 4096 and ns.lbads == 12 and ns.nlbas == 256 and ns.mssrl == 16
    assert ns.backend.is_zero(0, 1 << 20) and ns.backend.allocated == 0
    assert ns.identify_ns()[26] == 1
    ns.format(0)
    assert ns.lba_size == 512
    with pytest.raises(NvmeError) as info:
        ns.format(2)
    assert info.value.status == Status.INVALID_FORMAT


def test_close():
    ns = make()
    ns.close()
    assert not ns.ready and ns.backend.closed
    assert ns.info()["ready"] is False
