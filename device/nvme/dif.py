"""End-to-end data protection (T10 PI) arithmetic: guard CRCs, PI tuples, checks.

Pure functions and one small value class; no I/O. The NVM command handlers
(``nvm_pi.py``) feed it the blocks as they stream between guest memory and the
backend, one block (a few memoryviews when a block straddles data segments) at
a time, so no second copy of the data is ever made.

Two guard formats (the NVM Command Set's Protection Information Format, PIF):
- 16b guard (PIF 0): an 8-byte tuple ``guard(2) apptag(2) reftag(4)``, the
  guard is CRC-16 T10-DIF (poly 0x8BB7, init 0, no reflection).
- 64b guard (PIF 2): a 16-byte tuple ``guard(8) apptag(2) reftag(6)``, the
  guard is the NVMe CRC-64 (Rocksoft: poly 0xAD93D23594C93659, reflected,
  init and xorout all ones), the reference tag 48 bits (no storage tag).

The CRCs come from ``anycrc`` (compiled, ~0.5 us per 4 KiB block; a Python
table loop costs ~1 ms per block, which would make PI unusable).

Where the tuple sits: PIL=1 puts it in the first bytes of the metadata (the
guard covers the data only); PIL=0 in the last bytes (the guard also covers
the metadata bytes before it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

import anycrc

from nvshell.device.nvme.status import Status

_CRC16 = anycrc.Model("CRC16-T10-DIF")
_CRC64 = anycrc.Model("CRC64-NVME")

PIF_16 = 0
PIF_64 = 2
#: Property spelling of each guard format, and its tuple size in bytes.
GUARD_NAMES = {"crc16": PIF_16, "crc64": PIF_64}
TUPLE_SIZE = {PIF_16: 8, PIF_64: 16}
REFTAG_MASK = {PIF_16: 0xFFFFFFFF, PIF_64: 0xFFFFFFFFFFFF}

#: PRINFO (CDW12 bits 29:26 of Read/Write/...): PRACT and the three PRCHK bits.
PRINFO_PRACT = 0x8
PRCHK_GUARD = 0x4
PRCHK_APP = 0x2
PRCHK_REF = 0x1
PRCHK_MASK = 0x7

_T16 = struct.Struct(">HHI")
_T64 = struct.Struct(">QH")


def crc16(data: Iterable, crc: int = 0) -> int:
    """CRC-16 T10-DIF over the buffers in ``data``, continuing from ``crc``."""
    for piece in data:
        crc = _CRC16.calc(piece, crc)
    return crc


def crc64(data: Iterable, crc: int | None = None) -> int:
    """NVMe CRC-64 over the buffers in ``data``, continuing from ``crc`` (None: a new CRC)."""
    for piece in data:
        crc = _CRC64.calc(piece) if crc is None else _CRC64.calc(piece, crc)
    return _CRC64.calc(b"") if crc is None else crc


class PiError(Exception):
    """A protection check failed: ``status`` (Guard/App/Ref Tag Check Error) for block ``index``."""

    def __init__(self, status: Status, index: int, msg: str):
        self.status = status
        self.index = index
        super().__init__(msg)


@dataclass(frozen=True)
class Protection:
    """How one LBA format protects its blocks: type (1..3), guard format, where the tuple is.

    ``ms`` is the metadata size; ``first`` is PIL=1 (tuple in the first bytes).
    """

    pi_type: int
    pif: int
    ms: int
    first: bool
    size: int = field(init=False)
    offset: int = field(init=False)

    def __post_init__(self) -> None:
        size = TUPLE_SIZE[self.pif]
        if self.pi_type not in (1, 2, 3):
            raise ValueError(f"protection information type {self.pi_type} is not 1, 2 or 3")
        if self.ms < size:
            raise ValueError(f"{self.ms}-byte metadata cannot hold a {size}-byte protection information tuple")
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "offset", 0 if self.first else self.ms - size)

    @property
    def reftag_mask(self) -> int:
        return REFTAG_MASK[self.pif]

    @property
    def increments(self) -> bool:
        """Types 1 and 2 expect the reference tag to grow by one per block; type 3 does not."""
        return self.pi_type != 3

    # -------------------------------------------------------- guard and tuples
    def guard(self, data: Iterable, md: memoryview | bytes) -> int:
        """The guard of one block: its data pieces, then the metadata bytes before the tuple."""
        if self.pif == PIF_16:
            crc = crc16(data)
            return _CRC16.calc(md[:self.offset], crc) if self.offset else crc
        c64 = crc64(data)
        return _CRC64.calc(md[:self.offset], c64) if self.offset else c64

    def pack(self, guard: int, apptag: int, reftag: int) -> bytes:
        if self.pif == PIF_16:
            return _T16.pack(guard & 0xFFFF, apptag & 0xFFFF, reftag & 0xFFFFFFFF)
        return _T64.pack(guard, apptag & 0xFFFF) + (reftag & 0xFFFFFFFFFFFF).to_bytes(6, "big")

    def unpack(self, md: memoryview | bytes) -> tuple[int, int, int]:
        """(guard, apptag, reftag) of the tuple inside one block's metadata ``md``."""
        t = md[self.offset:self.offset + self.size]
        if self.pif == PIF_16:
            return _T16.unpack(t)
        g, a = _T64.unpack(t[:10])
        return g, a, int.from_bytes(t[10:16], "big")

    def insert(self, data: Iterable, md: memoryview, apptag: int, reftag: int) -> None:
        """PRACT on a write: compute the guard and store the tuple into ``md`` (one block's metadata)."""
        md[self.offset:self.offset + self.size] = self.pack(self.guard(data, md), apptag, reftag)

    def escaped(self, apptag: int, reftag: int) -> bool:
        """The escape values that switch checking off for a block (all-ones tags; type 3 needs both)."""
        if apptag != 0xFFFF:
            return False
        return self.pi_type != 3 or reftag == self.reftag_mask

    def check(self, data: Iterable, md: memoryview | bytes, prchk: int, apptag: int, appmask: int,
              reftag: int, index: int = 0) -> None:
        """Check one block's tuple; raises ``PiError`` with the spec's status for the first failing field.

        ``data`` is only iterated when the guard is checked (it may be a generator).
        """
        g, a, r = self.unpack(md)
        if self.escaped(a, r):
            return
        if prchk & PRCHK_GUARD:
            want = self.guard(data, md)
            if g != want:
                raise PiError(Status.GUARD_CHECK_ERROR, index, f"guard {g:#x} != computed {want:#x}")
        if prchk & PRCHK_APP and (a & appmask) != (apptag & appmask):
            raise PiError(Status.APPLICATION_TAG_CHECK_ERROR, index,
                          f"application tag {a:#06x} != {apptag:#06x} (mask {appmask:#06x})")
        if prchk & PRCHK_REF and r != reftag & self.reftag_mask:
            raise PiError(Status.REFERENCE_TAG_CHECK_ERROR, index, f"reference tag {r:#x} != {reftag:#x}")

    def check_run(self, data_blocks: Iterable[list], md: memoryview, prchk: int, apptag: int, appmask: int,
                  reftag: int) -> None:
        """``check`` over consecutive blocks (their data pieces, their metadata back to back in ``md``),
        the reference tag advancing per block. Same results as a loop of ``check``, with the
        per-block work kept to a CRC call and a few integer tests (this runs for every block read)."""
        ms, size, off, pif = self.ms, self.size, self.offset, self.pif
        mask = self.reftag_mask
        incr = self.increments
        type3 = self.pi_type == 3
        guard_on, app_on, ref_on = prchk & PRCHK_GUARD, prchk & PRCHK_APP, prchk & PRCHK_REF
        want_app = apptag & appmask
        calc = _CRC16.calc if pif == PIF_16 else _CRC64.calc
        start64 = None if pif == PIF_16 else True
        if pif == PIF_16 and ms == size:
            tuples = _T16.iter_unpack(md)
        else:
            tuples = (self.unpack(md[i:i + ms]) for i in range(0, len(md), ms))
        for i, (pieces, (g, a, r)) in enumerate(zip(data_blocks, tuples)):
            if a == 0xFFFF and (not type3 or r == mask):
                reftag = (reftag + 1) & mask if incr else reftag
                continue
            if guard_on:
                if start64 is None:
                    crc = 0
                    for p in pieces:
                        crc = calc(p, crc)
                    if off:
                        crc = calc(md[i * ms:i * ms + off], crc)
                else:
                    crc = None
                    for p in pieces:
                        crc = calc(p) if crc is None else calc(p, crc)
                    if off:
                        crc = calc(md[i * ms:i * ms + off], crc)
                if g != crc:
                    raise PiError(Status.GUARD_CHECK_ERROR, i, f"guard {g:#x} != computed {crc:#x}")
            if app_on and (a & appmask) != want_app:
                raise PiError(Status.APPLICATION_TAG_CHECK_ERROR, i,
                              f"application tag {a:#06x} != {apptag:#06x} (mask {appmask:#06x})")
            if ref_on and r != reftag & mask:
                raise PiError(Status.REFERENCE_TAG_CHECK_ERROR, i, f"reference tag {r:#x} != {reftag:#x}")
            if incr:
                reftag = (reftag + 1) & mask

    def check_command(self, prinfo: int, slba: int, reftag: int) -> Status | None:
        """Command-level PI field checks (before any block): Invalid Protection Information or None.

        Type 1 with reference tag checking needs ILBRT == SLBA (its low 32/48 bits);
        type 3 has no reference tag to check.
        """
        if prinfo & PRCHK_REF:
            if self.pi_type == 1 and reftag != slba & self.reftag_mask:
                return Status.INVALID_PROTECTION_INFORMATION
            if self.pi_type == 3:
                return Status.INVALID_PROTECTION_INFORMATION
        return None

    def strips(self, prinfo: int) -> bool:
        """PRACT with metadata that is exactly the tuple: no metadata crosses the bus."""
        return bool(prinfo & PRINFO_PRACT) and self.ms == self.size

    def next_reftag(self, reftag: int) -> int:
        return (reftag + 1) & self.reftag_mask if self.increments else reftag


def command_reftag(pif: int, cdw3: int, cdw14: int) -> int:
    """ILBRT/EILBRT of an I/O command: CDW14, plus CDW3 bits 15:0 as bits 47:32 for the 64b guard."""
    if pif == PIF_64:
        return ((cdw3 & 0xFFFF) << 32) | cdw14
    return cdw14


#: The fields of a PI tuple a fault rule can damage.
TUPLE_FIELDS = ("guard", "apptag", "reftag")
#: Byte offset of each field inside the tuple, per guard format.
_FIELD_OFFSETS = {PIF_16: {"guard": 0, "apptag": 2, "reftag": 4}, PIF_64: {"guard": 0, "apptag": 8, "reftag": 10}}


def field_offset(prot: Protection, what: str) -> int:
    """Offset inside one block's metadata of the first byte of a tuple field."""
    return prot.offset + _FIELD_OFFSETS[prot.pif][what]


def corrupt_tuple(prot: Protection, md: memoryview, what: str) -> None:
    """Fault injection: damage one field of the tuple in ``md`` (the data stays intact)."""
    md[field_offset(prot, what)] ^= CORRUPT_MASK


#: What a PI fault XORs into the first byte of the field: never a no-op, never all ones.
CORRUPT_MASK = 0x5A
