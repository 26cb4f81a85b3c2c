"""Write Uncorrectable (NVM opcode 04h, ONCS bit 1) and the LBAs a namespace tracks as
potentially unrecoverable.

Two range sets per namespace:

* *uncorrectable*: LBAs Write Uncorrectable marked; reading them (Read, Compare,
  Verify) is Unrecovered Read Error until they are written again (Write, Write
  Zeroes, Copy destination, deallocation, Format, Sanitize);
* *tracked*: what Get LBA Status and the LBA Status Information log (0Eh) report
  (``admin_lba_status``): the uncorrectable LBAs, plus ranges where a fault rule
  injected a media error (``note_media_error``), as a device would after a failed
  read. Writing the LBAs drops them from both.

The sets live beside the namespaces (weak references: a deleted namespace takes
its sets with it). ``ANY`` is true while some namespace has uncorrectable LBAs,
so the read path of a device without any pays one module attribute load.
"""

from __future__ import annotations

import bisect
import weakref
from typing import Any, Iterator

from nvshell.device.nvme.commands import EFFECT_LBCC, NVM, Command
from nvshell.device.nvme.spec import NvmOpcode
from nvshell.device.nvme.status import NvmeError, Status


class RangeSet:
    """Disjoint, sorted LBA ranges [start, end)."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(first LBA, count) of every range, ascending."""
        return ((s, e - s) for s, e in zip(self.starts, self.ends))

    def add(self, start: int, count: int) -> None:
        end = start + count
        lo = bisect.bisect_left(self.ends, start)      # first range ending at/after start
        hi = bisect.bisect_right(self.starts, end)     # ranges starting at/before end
        if lo < hi:
            start = min(start, self.starts[lo])
            end = max(end, self.ends[hi - 1])
        self.starts[lo:hi] = [start]
        self.ends[lo:hi] = [end]

    def remove(self, start: int, count: int) -> bool:
        """Drop [start, start+count); True if anything was removed."""
        end = start + count
        lo = bisect.bisect_right(self.ends, start)
        hi = bisect.bisect_left(self.starts, end)
        if lo >= hi:
            return False
        new_s: list[int] = []
        new_e: list[int] = []
        if self.starts[lo] < start:
            new_s.append(self.starts[lo])
            new_e.append(start)
        if self.ends[hi - 1] > end:
            new_s.append(end)
            new_e.append(self.ends[hi - 1])
        self.starts[lo:hi] = new_s
        self.ends[lo:hi] = new_e
        return True

    def overlaps(self, start: int, count: int) -> bool:
        i = bisect.bisect_right(self.ends, start)
        return i < len(self.starts) and self.starts[i] < start + count

    def first_overlap(self, start: int, count: int) -> int | None:
        """The lowest LBA of [start, start+count) in the set, or None."""
        i = bisect.bisect_right(self.ends, start)
        if i < len(self.starts) and self.starts[i] < start + count:
            return max(start, self.starts[i])
        return None

    def within(self, start: int, count: int) -> list[tuple[int, int]]:
        """The parts of the set inside [start, start+count), as (first LBA, count)."""
        end = start + count
        out = []
        i = bisect.bisect_right(self.ends, start)
        while i < len(self.starts) and self.starts[i] < end:
            s, e = max(self.starts[i], start), min(self.ends[i], end)
            out.append((s, e - s))
            i += 1
        return out

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()

    @property
    def total(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))


_UNCORRECTABLE: "weakref.WeakKeyDictionary[Any, RangeSet]" = weakref.WeakKeyDictionary()
_TRACKED: "weakref.WeakKeyDictionary[Any, RangeSet]" = weakref.WeakKeyDictionary()
#: Some namespace has uncorrectable LBAs (the read path's fast check).
ANY = False
#: Some namespace has tracked LBAs (the write path's fast check).
TRACKING = False
#: LBA Status Generation Counter: changes whenever a tracked set changes.
generation = 0


def _sync() -> None:
    global ANY, TRACKING
    ANY = any(bool(r) for r in _UNCORRECTABLE.values())
    TRACKING = any(bool(r) for r in _TRACKED.values())


def _changed() -> None:
    global generation
    generation = (generation + 1) & 0xFFFF


def uncorrectable(ns: Any) -> RangeSet:
    return _UNCORRECTABLE.get(ns) or RangeSet()


def tracked(ns: Any) -> RangeSet:
    return _TRACKED.get(ns) or RangeSet()


def tracked_namespaces() -> list[tuple[Any, RangeSet]]:
    return [(ns, r) for ns, r in list(_TRACKED.items()) if r]


def mark_uncorrectable(ns: Any, slba: int, nlb: int) -> None:
    _UNCORRECTABLE.setdefault(ns, RangeSet()).add(slba, nlb)
    _TRACKED.setdefault(ns, RangeSet()).add(slba, nlb)
    _changed()
    _sync()


def note_media_error(ns: Any, slba: int, nlb: int) -> None:
    """A media error was reported for these LBAs: track them (reads keep working)."""
    nlb = min(nlb, ns.nlbas - slba)
    if nlb <= 0:
        return
    ranges = _TRACKED.setdefault(ns, RangeSet())
    if ranges.within(slba, nlb) != [(slba, nlb)]:
        ranges.add(slba, nlb)
        _changed()
        _sync()


def written(ns: Any, slba: int, nlb: int) -> None:
    """New data in [slba, slba+nlb): no longer uncorrectable, no longer tracked."""
    changed = False
    for table in (_UNCORRECTABLE, _TRACKED):
        ranges = table.get(ns)
        if ranges is not None and ranges.remove(slba, nlb):
            changed = True
    if changed:
        _changed()
        _sync()


def erased(ns: Any) -> None:
    """Format / Sanitize: every LBA has new content."""
    for table in (_UNCORRECTABLE, _TRACKED):
        table.pop(ns, None)
    _changed()
    _sync()


def check_readable(ns: Any, slba: int, nlb: int) -> None:
    """Unrecovered Read Error for a read touching an uncorrectable LBA (call if ``ANY``)."""
    ranges = _UNCORRECTABLE.get(ns)
    if ranges is not None:
        lba = ranges.first_overlap(slba, nlb)
        if lba is not None:
            raise NvmeError(Status.UNRECOVERED_READ_ERROR, msg=f"LBA {lba:#x} marked uncorrectable")


@NVM.command(NvmOpcode.WRITE_UNCORRECTABLE, nsid="required", effects=EFFECT_LBCC)
def write_uncorrectable(ctrl: Any, cmd: Command) -> None:
    """Mark the LBAs invalid: reads fail until they are written (WUSL 0: no limit)."""
    from nvshell.device.nvme.nvm import check_range, rw_fields
    ns = cmd.ns
    slba, nlb = rw_fields(cmd)
    check_range(ns, slba, nlb)
    mark_uncorrectable(ns, slba, nlb)
