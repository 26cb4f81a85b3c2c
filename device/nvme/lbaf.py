"""The LBA formats every NVM namespace offers, and the format a namespace is in.

One table, used by Identify Namespace (the LBAF list, CNS 05's ELBAF list), by
Format NVM and Namespace Management create (which pick an index), and by the
namespace properties (``lba-size`` + ``ms`` name an index). The order is QEMU's,
so an ``nvme format --lbaf=N`` means the same on both devices.

A namespace's ``NsFormat`` adds what Format NVM also chooses: extended LBAs
(MSET), the protection information type and location (PI, PIL); the guard
format (PIF) is a property of the namespace's formats, fixed at creation.
"""

from __future__ import annotations

from dataclasses import dataclass

from nvshell.device.nvme.dif import GUARD_NAMES, TUPLE_SIZE, Protection
from nvshell.device.nvme.spec import LBA_FORMATS, lbaf_entry


@dataclass(frozen=True)
class LbaFormat:
    lba_size: int
    ms: int

    @property
    def lbads(self) -> int:
        return self.lba_size.bit_length() - 1

    def entry(self) -> int:
        """The LBA Format dword: MS (15:0), LBADS (23:16), RP (25:24, 0 = best)."""
        return lbaf_entry(self.lbads, self.ms)


#: ``spec.LBA_FORMATS`` as objects, same index.
FORMATS: tuple[LbaFormat, ...] = tuple(LbaFormat(1 << lbads, ms) for lbads, ms in LBA_FORMATS)
LBA_SIZES = tuple(sorted({f.lba_size for f in FORMATS}))
METADATA_SIZES = tuple(sorted({f.ms for f in FORMATS}))
PI_TYPES = (0, 1, 2, 3)
PIF_VALUES = tuple(GUARD_NAMES.values())

#: Identify Namespace DPC: types 1, 2, 3 and both tuple locations (first / last bytes).
DPC_ALL = 0x1F
#: Identify Namespace MC: extended LBAs (bit 0) and a separate metadata buffer (bit 1).
MC_BOTH = 0x3
DPS_FIRST = 1 << 3
FLBAS_EXTENDED = 1 << 4


def lbaf_index(lba_size: int, ms: int) -> int:
    for i, f in enumerate(FORMATS):
        if f.lba_size == lba_size and f.ms == ms:
            return i
    raise ValueError(f"no LBA format with {lba_size}-byte blocks and {ms}-byte metadata")


def split_flbas(flbas: int) -> tuple[int, bool]:
    """FLBAS -> (format index, extended): bits 3:0 low index, 6:5 high index bits, 4 MSET."""
    return (flbas & 0xF) | (((flbas >> 5) & 0x3) << 4), bool(flbas & FLBAS_EXTENDED)


def join_flbas(index: int, extended: bool) -> int:
    return (index & 0xF) | (((index >> 4) & 0x3) << 5) | (FLBAS_EXTENDED if extended else 0)


@dataclass(frozen=True)
class NsFormat:
    """A namespace's current format: LBA format index, MSET, PI type, PIL, guard format (PIF).

    Construct through ``make`` for validation; the error text names the field as
    the namespace properties spell it (one line each).
    """

    index: int
    extended: bool = False
    pi: int = 0
    first: bool = False
    pif: int = 0

    @classmethod
    def make(cls, index: int, *, extended: bool = False, pi: int = 0, first: bool = False,
             pif: int = 0) -> "NsFormat":
        if not 0 <= index < len(FORMATS):
            raise ValueError(f"LBA format {index} not supported (0..{len(FORMATS) - 1})")
        if pi not in PI_TYPES:
            raise ValueError(f"Parameter 'pi' expects 0, 1, 2 or 3, not {pi}")
        if pif not in PIF_VALUES:
            raise ValueError(f"Parameter 'pif' expects 0 (16b guard, CRC-16) or 2 (64b guard, CRC-64), not {pif}")
        ms = FORMATS[index].ms
        if pi and ms < TUPLE_SIZE[pif]:
            raise ValueError(f"Parameter 'pi' needs at least {TUPLE_SIZE[pif]} bytes of metadata ('ms') "
                             f"for guard format {pif}, the format has {ms}")
        if extended and not ms:
            raise ValueError("Parameter 'mset' needs metadata ('ms' > 0)")
        return cls(index, bool(extended), pi, bool(first) if pi else False, pif)

    @property
    def lbaf(self) -> LbaFormat:
        return FORMATS[self.index]

    @property
    def lba_size(self) -> int:
        return self.lbaf.lba_size

    @property
    def ms(self) -> int:
        return self.lbaf.ms

    @property
    def protection(self) -> Protection | None:
        return Protection(self.pi, self.pif, self.ms, self.first) if self.pi else None

    @property
    def flbas(self) -> int:
        return join_flbas(self.index, self.extended)

    @property
    def dps(self) -> int:
        return self.pi | (DPS_FIRST if self.first else 0)
