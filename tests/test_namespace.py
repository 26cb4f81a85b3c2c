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
    assert d[25] == 7                      # NLBAF: eight formats (0-based)
    assert d[27] == 3 and d[28] == 0x1F and d[29] == 0   # MC, DPC, DPS
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
    lbafs = struct.unpack_from("<8I", d, 128)
    assert [((f >> 16) & 0xFF, f & 0xFFFF) for f in lbafs] == [
        (9, 0), (9, 8), (9, 16), (9, 64), (12, 0), (12, 8), (12, 16), (12, 64)]  # QEMU's order
    assert ID_NS.offsets["nsze"] == 0 and ID_NS.offsets["flbas"] == 26 and ID_NS.offsets["lbaf0"] == 128
    assert ID_NS.offsets["nguid"] == 104 and ID_NS.offsets["eui64"] == 120


def test_identify_private_and_4k():
    ns = make(shared=False, lba_size=4096)
    d = ns.identify_ns()
    assert d[30] == 0 and d[26] == 4
    assert struct.unpack_from("<Q", d, 0)[0] == (1 << 30) // 4096
    assert struct.unpack_from("<H", d, 64)[0] == 0


def test_identify_ns_csi():
    assert make().identify_ns_csi() == bytes(4096)
    d = make(ms=16, pi=1, pif=2).identify_ns_csi()     # ELBAF: PIF 2 (64b guard) for every format
    assert struct.unpack_from("<8I", d, 12) == (2 << 7,) * 8


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


@pytest.mark.parametrize("bad, message", [
    ({"ms": 4}, "Parameter 'ms' expects 0, 8, 16, 64"),
    ({"ms": 8, "mset": 2}, "Parameter 'mset' expects 0 or 1"),
    ({"mset": 1}, "Parameter 'mset' needs metadata"),
    ({"ms": 8, "pi": 4}, "Parameter 'pi' expects 0, 1, 2 or 3"),
    ({"pi": 1}, "Parameter 'pi' needs at least 8 bytes of metadata"),
    ({"ms": 8, "pi": 1, "pif": 2}, "Parameter 'pi' needs at least 16 bytes of metadata"),
    ({"ms": 8, "pil": 1}, "Parameter 'pil' needs protection information"),
    ({"ms": 8, "pil": 3, "pi": 1}, "Parameter 'pil' expects 0 or 1"),
    ({"ms": 16, "pi": 1, "pif": 1}, "Parameter 'pif' expects 0 .* or 2"),
])
def test_metadata_properties_one_error_line_each(bad, message):
    with pytest.raises(NamespaceError, match=message) as info:
        make(**bad)
    assert "\n" not in str(info.value)


def test_format_changes_lba_size_and_destroys_data():
    ns = make(size=1 << 20, mssrl=64 * 1024)
    ns.backend.write(0, b"\x01" * 4096)
    assert ns.mssrl == 128
    ns.format(4)
    assert ns.lba_size == 4096 and ns.lbads == 12 and ns.nlbas == 256 and ns.mssrl == 16
    assert ns.backend.is_zero(0, 1 << 20) and ns.backend.allocated == 0
    assert ns.identify_ns()[26] == 4
    ns.format(0)
    assert ns.lba_size == 512
    for bad in ({"lbaf": 8}, {"lbaf": 0, "pi": 1}, {"lbaf": 0, "mset": 1}):
        with pytest.raises(NvmeError) as info:
            ns.format(**bad)
        assert info.value.status == Status.INVALID_FORMAT
    with pytest.raises(NvmeError) as info:
        ns.format(0, ses=2)
    assert info.value.status == Status.INVALID_FIELD
    ns.format(5, mset=1, pi=2, pil=1, ses=1)                # 4096+8, extended, type 2, first bytes
    d = ns.identify_ns()
    assert (ns.lba_size, ns.ms, d[26], d[29]) == (4096, 8, 0x15, 0x0A)
    assert ns.metadata is not None and ns.metadata.ms == 8


def test_close():
    ns = make()
    ns.close()
    assert not ns.ready and ns.backend.closed
    assert ns.info()["ready"] is False
