"""Binary layouts declared once, as data, and used for both encoding and decoding.

Every on-the-wire or in-guest-memory structure of the project (vfio-user messages,
NVMe submission/completion entries, Identify data, log pages) is a ``Layout``: an
ordered list of named fields with ``struct`` format codes, optionally at explicit
byte offsets (gaps become padding). The same object packs a structure for the
device and unpacks it for the test client, so the two sides cannot drift apart.

Little-endian throughout: NVMe is little-endian by definition and vfio-user uses
host byte order, which on every platform we run on is little-endian.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any, Iterable, NamedTuple, Sequence

FieldSpec = tuple[str, str] | tuple[int, str, str]


class LayoutError(ValueError):
    """A layout declaration is inconsistent (overlapping offsets, too large)."""


class Layout:
    """A named, fixed-size binary structure.

    ``fields`` holds ``(name, fmt)`` pairs laid out back to back, or
    ``(offset, name, fmt)`` triples placed at explicit offsets (the NVMe spec
    documents structures by byte offset, so declarations can be checked against
    it line by line). ``fmt`` is one ``struct`` code, optionally with a count
    (``"8s"`` for 8 raw bytes). ``size`` pads the structure to a fixed length.
    """

    def __init__(self, name: str, fields: Sequence[FieldSpec], size: int | None = None):
        self.name = name
        fmt = "<"
        pos = 0
        names: list[str] = []
        self.offsets: dict[str, int] = {}
        for spec in fields:
            if len(spec) == 3:
                offset, fname, code = spec  # type: ignore[misc]
                if offset < pos:
                    raise LayoutError(f"{name}.{fname} at {offset:#x} overlaps the previous field (ends {pos:#x})")
                if offset > pos:
                    fmt += f"{offset - pos}x"
                    pos = offset
            else:
                fname, code = spec  # type: ignore[misc]
            width = struct.calcsize("<" + code)
            self.offsets[fname] = pos
            names.append(fname)
            fmt += code
            pos += width
        if size is not None:
            if pos > size:
                raise LayoutError(f"{name} fields end at {pos:#x}, beyond its size {size:#x}")
            if size > pos:
                fmt += f"{size - pos}x"
        self.struct = struct.Struct(fmt)
        self.size = self.struct.size
        self.names: tuple[str, ...] = tuple(names)
        self.tuple = namedtuple(name, names)  # type: ignore[misc]
        self._defaults = tuple(b"" if _is_bytes(c) else 0 for c in _codes(fields))

    def unpack(self, buffer: Any, offset: int = 0) -> NamedTuple:
        """Decode the structure at ``offset`` of ``buffer`` (bytes, memoryview, mmap)."""
        return self.tuple._make(self.struct.unpack_from(buffer, offset))

    def pack(self, **values: Any) -> bytes:
        """Encode; fields not given are zero (or empty bytes)."""
        return self.struct.pack(*self._ordered(values))

    def pack_into(self, buffer: Any, offset: int = 0, **values: Any) -> None:
        self.struct.pack_into(buffer, offset, *self._ordered(values))

    def _ordered(self, values: dict[str, Any]) -> list[Any]:
        unknown = values.keys() - set(self.names)
        if unknown:
            raise TypeError(f"{self.name} has no field(s) {', '.join(sorted(unknown))}")
        return [values.get(n, d) for n, d in zip(self.names, self._defaults)]

    def __repr__(self) -> str:
        return f"Layout({self.name}, {self.size} bytes)"


def _codes(fields: Iterable[FieldSpec]) -> list[str]:
    return [spec[-1] for spec in fields]  # type: ignore[index]


def _is_bytes(code: str) -> bool:
    return code.endswith("s") or code.endswith("p")
