"""PI arithmetic (device/nvme/dif.py): known-answer CRC vectors, tuples, checks."""

from __future__ import annotations

import pytest

from nvshell.device.nvme.dif import (PIF_16, PIF_64, PRCHK_APP, PRCHK_GUARD, PRCHK_REF, PiError, Protection,
                                     command_reftag, corrupt_tuple, crc16, crc64)
from nvshell.device.nvme.status import Status


def ref_crc16(data: bytes) -> int:
    """Bit-at-a-time CRC-16 T10-DIF (poly 0x8BB7, init 0, MSB first): the definition."""
    crc = 0
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8BB7) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def ref_crc64(data: bytes) -> int:
    """Bit-at-a-time NVMe CRC-64 (reflected poly 0x9A6C9329AC4BC9B5, init/xorout all ones)."""
    crc = (1 << 64) - 1
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x9A6C9329AC4BC9B5 if crc & 1 else crc >> 1
    return crc ^ ((1 << 64) - 1)


INC32 = bytes(range(32))
INC4K = bytes(i & 0xFF for i in range(4096))
DEC4K = bytes(0xFF - (i & 0xFF) for i in range(4096))


@pytest.mark.parametrize("data, want", [
    # NVM Command Set specification, 16b guard CRC test cases (32-byte buffers)
    (bytes(32), 0x0000), (b"\xff" * 32, 0xA293), (INC32, 0x0224),
    (b"123456789", 0xD0DB),                                   # the CRC catalogue's check value
])
def test_crc16_known_answers(data, want):
    assert crc16([data]) == want == ref_crc16(data)


@pytest.mark.parametrize("data, want", [
    # NVM Command Set specification, 64b guard CRC test cases (4 KiB buffers)
    (bytes(4096), 0x6482D367EB22B64E), (b"\xff" * 4096, 0xC0DDBA7302ECA3AC),
    (INC4K, 0x3E729F5F6750449C), (DEC4K, 0x9A2DF64B8E9E517E),
    (b"123456789", 0xAE8B14860A799888),
])
def test_crc64_known_answers(data, want):
    assert crc64([data]) == want
    if len(data) < 100:
        assert ref_crc64(data) == want


def test_crcs_continue_across_pieces():
    data = bytes(range(256)) * 3
    for cut in (1, 100, 511):
        assert crc16([data[:cut], data[cut:]]) == crc16([data]) == ref_crc16(data)
        assert crc64([data[:cut], data[cut:]]) == crc64([data]) == ref_crc64(data)


def test_tuple_layouts_and_location():
    p16 = Protection(1, PIF_16, 8, first=False)
    assert (p16.size, p16.offset) == (8, 0)
    assert p16.pack(0x1234, 0x5678, 0x9ABCDEF0) == bytes.fromhex("123456789abcdef0")
    p64 = Protection(1, PIF_64, 64, first=False)
    assert (p64.size, p64.offset) == (16, 48)
    t = p64.pack(0x0102030405060708, 0xAABB, 0x112233445566)
    assert t == bytes.fromhex("0102030405060708" "aabb" "112233445566")
    md = bytearray(64)
    md[48:] = t
    assert p64.unpack(md) == (0x0102030405060708, 0xAABB, 0x112233445566)
    with pytest.raises(ValueError, match="cannot hold"):
        Protection(1, PIF_64, 8, first=True)
    with pytest.raises(ValueError, match="type 4"):
        Protection(4, PIF_16, 8, first=True)


def test_guard_covers_metadata_before_a_last_bytes_tuple():
    data = bytes(range(256)) * 2
    last = Protection(1, PIF_16, 64, first=False)
    first = Protection(1, PIF_16, 64, first=True)
    md = bytearray(b"\x5a" * 64)
    assert first.guard([data], md) == ref_crc16(data)
    assert last.guard([data], md) == ref_crc16(data + bytes(md[:56]))
    last64 = Protection(1, PIF_64, 64, first=False)
    assert last64.guard([data], md) == crc64([data + bytes(md[:48])])


@pytest.mark.parametrize("pif", [PIF_16, PIF_64])
@pytest.mark.parametrize("pi_type", [1, 2, 3])
def test_check_each_field(pif, pi_type):
    ms = 16
    prot = Protection(pi_type, pif, ms, first=True)
    data = b"\x42" * 512
    md = memoryview(bytearray(ms))
    prot.insert([data], md, 0x1111, 77)
    every = PRCHK_GUARD | PRCHK_APP | PRCHK_REF
    prot.check([data], md, every, 0x1111, 0xFFFF, 77)
    cases = [(PRCHK_GUARD, "guard", Status.GUARD_CHECK_ERROR),
             (PRCHK_APP, "apptag", Status.APPLICATION_TAG_CHECK_ERROR),
             (PRCHK_REF, "reftag", Status.REFERENCE_TAG_CHECK_ERROR)]
    for bit, field, status in cases:
        bad = memoryview(bytearray(md))
        corrupt_tuple(prot, bad, field)
        with pytest.raises(PiError) as info:
            prot.check([data], bad, bit, 0x1111, 0xFFFF, 77, index=3)
        assert info.value.status == status and info.value.index == 3
        prot.check([data], bad, every & ~bit, 0x1111, 0xFFFF, 77)   # that field unchecked: passes
    # the application tag mask selects the bits compared
    prot.check([data], md, PRCHK_APP, 0x11FF, 0xFF00, 0)


@pytest.mark.parametrize("pif", [PIF_16, PIF_64])
def test_escape_values(pif):
    mask = (1 << 32) - 1 if pif == PIF_16 else (1 << 48) - 1
    every = PRCHK_GUARD | PRCHK_APP | PRCHK_REF
    garbage = b"\x99" * 512
    for pi_type in (1, 2):
        prot = Protection(pi_type, pif, 16, first=True)
        md = bytearray(16)
        md[:prot.size] = prot.pack(0, 0xFFFF, 5)          # apptag all ones: no checking at all
        prot.check([garbage], md, every, 0, 0xFFFF, 1234)
    prot = Protection(3, pif, 16, first=True)
    md = bytearray(16)
    md[:prot.size] = prot.pack(0, 0xFFFF, 5)              # type 3 needs the reftag all ones too
    with pytest.raises(PiError):
        prot.check([garbage], md, every, 0, 0xFFFF, 5)
    md[:prot.size] = prot.pack(0, 0xFFFF, mask)
    prot.check([garbage], md, every, 0, 0xFFFF, 5)
    assert prot.escaped(0xFFFF, mask) and not prot.escaped(0xFFFE, mask)


def test_command_level_rules_and_reftag_fields():
    t1 = Protection(1, PIF_16, 8, first=False)
    assert t1.check_command(PRCHK_REF, 0x1_0000_0005, 5) is None          # low 32 bits of the SLBA
    assert t1.check_command(PRCHK_REF, 6, 5) == Status.INVALID_PROTECTION_INFORMATION
    assert t1.check_command(PRCHK_GUARD, 6, 5) is None
    assert Protection(2, PIF_16, 8, first=False).check_command(PRCHK_REF, 6, 5) is None
    assert Protection(3, PIF_16, 8, first=False).check_command(PRCHK_REF, 6, 5) == \
        Status.INVALID_PROTECTION_INFORMATION
    assert t1.next_reftag(0xFFFFFFFF) == 0 and Protection(3, PIF_16, 8, first=False).next_reftag(9) == 9
    assert command_reftag(PIF_16, 0xFFFF, 7) == 7
    assert command_reftag(PIF_64, 0xABCD, 7) == 0xABCD_0000_0007
    assert t1.strips(0x8) and not Protection(1, PIF_16, 16, first=False).strips(0x8)


@pytest.mark.parametrize("pif, ms, first", [(PIF_16, 8, False), (PIF_16, 64, False), (PIF_64, 16, True),
                                            (PIF_64, 64, False)])
@pytest.mark.parametrize("pi_type", [1, 3])
def test_check_run_agrees_with_check_per_block(pif, ms, first, pi_type):
    import random
    rnd = random.Random(pif * 100 + ms + pi_type)
    prot = Protection(pi_type, pif, ms, first=first)
    every = PRCHK_GUARD | PRCHK_APP
    if pi_type == 1:
        every |= PRCHK_REF
    for trial in range(40):
        blocks = [rnd.randbytes(512) for _ in range(4)]
        md = memoryview(bytearray(rnd.randbytes(4 * ms)))
        for i, b in enumerate(blocks):
            prot.insert([b[:100], b[100:]], md[i * ms:(i + 1) * ms], 7, 10 + i if pi_type == 1 else 10)
        if trial % 2:
            i = rnd.randrange(4)
            md[i * ms + rnd.randrange(ms)] ^= 1 << rnd.randrange(8)      # maybe a tuple byte, maybe covered
        if trial % 5 == 0:
            md[prot.offset + 2 if pif == PIF_16 else prot.offset + 8:][:2] = b"\xff\xff"  # block 0 escaped?
        expected = None
        reftag = 10
        for i, b in enumerate(blocks):
            try:
                prot.check([b], md[i * ms:(i + 1) * ms], every, 7, 0xFFFF, reftag, i)
            except PiError as err:
                expected = (err.status, err.index)
                break
            reftag = prot.next_reftag(reftag)
        try:
            prot.check_run(([memoryview(b)] for b in blocks), md, every, 7, 0xFFFF, 10)
            got = None
        except PiError as err:
            got = (err.status, err.index)
        assert got == expected
