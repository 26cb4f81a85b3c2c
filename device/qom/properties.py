"""Typed properties: the single description of every configurable knob.

Why data and not code: the command line, QMP ``object-add``/``qom-set``, HMP and the
``help``/``info`` output all need the same facts about a property (its QOM type name,
default, description, whether it can change after creation).  A ``Property`` holds
them once; a ``PropType`` turns any user input (a keyval string, a JSON value from
QMP, an int or bool that qmp-shell produced where a string was meant) into one
canonical Python value, or raises a ``PropertyError`` whose message names the
parameter and says what it expects.

Nothing here knows about NVMe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from nvshell.device.keyval import parse_bool
from nvshell.device.errors import PropertyError

if TYPE_CHECKING:  # pragma: no cover
    from nvshell.device.qom.object import Object


# ----------------------------------------------------------------------------- types
class PropType:
    """How values of one kind are parsed, validated and shown.

    ``name`` is what ``qom-list`` reports ("str", "uint32", "size", "link<T>"...).
    ``parse`` accepts user input and returns the canonical value.
    ``to_json`` is what ``qom-get`` returns, ``format`` what ``info qtree`` prints.
    """

    name = "any"
    json_name = "any"  # for "Invalid parameter type for 'x', expected: <json_name>"

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> Any:
        return raw

    def to_json(self, value: Any) -> Any:
        return value

    def format(self, value: Any) -> str:
        if value is None:
            return "<null>"
        return str(self.to_json(value))

    def bad_type(self, pname: str) -> PropertyError:
        return PropertyError(f"Invalid parameter type for '{pname}', expected: {self.json_name}")


class StrType(PropType):
    """A string; ints and bools are accepted because qmp-shell converts ``k=1`` to 1."""

    name = "str"
    json_name = "string"

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> str:
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, int):
            return str(raw)
        if not isinstance(raw, str):
            raise self.bad_type(pname)
        return raw

    def format(self, value: Any) -> str:
        return '"' + str(value) + '"' if value is not None else "<null>"


class EnumType(StrType):
    """A string restricted to a fixed set of values."""

    def __init__(self, values: Sequence[str], name: str = "str"):
        self.values = tuple(values)
        self.name = name

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> str:
        s = super().parse(pname, raw, ctx)
        if s not in self.values:
            raise PropertyError(f"Parameter '{pname}' expects {_alternatives(self.values)}")
        return s


_INT_RANGES = {
    "uint8": (0, 0xFF),
    "uint16": (0, 0xFFFF),
    "uint32": (0, 0xFFFFFFFF),
    "uint64": (0, 0xFFFFFFFFFFFFFFFF),
    "int8": (-0x80, 0x7F),
    "int16": (-0x8000, 0x7FFF),
    "int32": (-0x80000000, 0x7FFFFFFF),
    "int64": (-0x8000000000000000, 0x7FFFFFFFFFFFFFFF),
}


class IntType(PropType):
    """A fixed-width integer, optionally restricted to ``choices`` or ``[minimum, maximum]``.

    Strings in decimal or 0x-hex are accepted (command line, HMP); ``aliases`` maps
    words to numbers (``nsid=auto`` -> 0).
    """

    json_name = "integer"

    def __init__(self, name: str = "uint32", *, minimum: int | None = None, maximum: int | None = None,
                 choices: Sequence[int] | None = None, aliases: dict[str, int] | None = None):
        if name not in _INT_RANGES:
            raise ValueError(f"unknown integer type {name}")
        self.name = name
        lo, hi = _INT_RANGES[name]
        self.minimum = lo if minimum is None else minimum
        self.maximum = hi if maximum is None else maximum
        self.choices = tuple(choices) if choices else None
        self.aliases = dict(aliases or {})

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> int:
        if isinstance(raw, bool):
            raise self.bad_type(pname)
        if isinstance(raw, str):
            s = raw.strip()
            if s in self.aliases:
                return self.aliases[s]
            try:
                value = int(s, 0)
            except ValueError:
                words = "".join(f" or '{a}'" for a in self.aliases)
                raise PropertyError(f"Parameter '{pname}' expects an integer{words}") from None
        elif isinstance(raw, int):
            value = raw
        else:
            raise self.bad_type(pname)
        if self.choices is not None:
            if value not in self.choices:
                raise PropertyError(f"Parameter '{pname}' expects {_alternatives([str(c) for c in self.choices])}")
        elif not (self.minimum <= value <= self.maximum):
            raise PropertyError(f"Parameter '{pname}' expects a value between {self.minimum} and {self.maximum}")
        return value


class BoolType(PropType):
    """A boolean; accepts on/off, yes/no, true/false (keyval) and JSON booleans."""

    name = "bool"
    json_name = "boolean"
    def parse(self, pname: str, raw: Any, ctx: Any = None) -> bool:
        if isinstance(raw, (bool, str)) or isinstance(raw, int) and raw in (0, 1):
            return parse_bool(raw, pname)       # the one list of boolean words (device/keyval.py)
        raise self.bad_type(pname)

    def format(self, value: Any) -> str:
        return "true" if value else "false"


_SIZE_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|0x[0-9a-fA-F]+)\s*([kKmMgGtTpPeEbB]?)(?:i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """Parse '1G', '512M', '4k', '1.5G', '0x1000', '4096' into bytes (binary multiples, as QEMU).

    Raises ValueError with no message; callers word the error for their context.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(text)
    num, suffix = m.group(1), m.group(2).upper()
    mult = _SIZE_SUFFIX[suffix]
    if num.lower().startswith("0x"):
        if suffix not in ("", "B"):
            raise ValueError(text)
        value = int(num, 16)
    elif "." in num:
        if mult == 1:
            raise ValueError(text)  # fractional bytes make no sense
        from fractions import Fraction
        exact = Fraction(num) * mult
        if exact.denominator != 1:
            raise ValueError(text)
        value = int(exact)
    else:
        value = int(num) * mult
    if value >= 1 << 64:
        raise ValueError(text)
    return value


def format_size(value: int) -> str:
    """Largest exact binary unit: 1073741824 -> '1G' (for help and qtree output)."""
    for suffix in "EPTGMK":
        mult = _SIZE_SUFFIX[suffix]
        if value and value % mult == 0:
            return f"{value // mult}{suffix}"
    return str(value)


class SizeType(PropType):
    """A byte count: integers over QMP, or strings with K/M/G/T/P/E suffixes."""

    name = "size"
    json_name = "size"

    def __init__(self, *, multiple_of: int = 1, minimum: int = 0):
        self.multiple_of = multiple_of
        self.minimum = minimum

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> int:
        if isinstance(raw, bool):
            raise self.bad_type(pname)
        if isinstance(raw, int):
            value = raw
            if value < 0 or value >= 1 << 64:
                raise PropertyError(f"Parameter '{pname}' expects a non-negative size below 2^64")
        elif isinstance(raw, str):
            try:
                value = parse_size(raw)
            except ValueError:
                raise PropertyError(
                    f"Parameter '{pname}' expects a size (a number with an optional suffix K, M, G, T, P or E), "
                    f"got '{raw}'") from None
        else:
            raise self.bad_type(pname)
        if value < self.minimum:
            raise PropertyError(f"Parameter '{pname}' expects a size of at least {format_size(self.minimum)}")
        if self.multiple_of > 1 and value % self.multiple_of:
            raise PropertyError(f"Parameter '{pname}' expects a multiple of {self.multiple_of}")
        return value

    def format(self, value: Any) -> str:
        return f"{value} ({format_size(value)})" if value else str(value)


class ListType(PropType):
    """A repeatable property: a JSON list over QMP, repeated keys (or one value) on the command line.

    A single scalar is accepted as a one-element list so ``attached-to=ctrl0`` and
    ``qom-set ... attached-to ctrl0`` both work.
    """

    json_name = "array"

    def __init__(self, item: PropType):
        self.item = item
        self.name = f"{item.name}List"

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> list[Any]:
        if isinstance(raw, (list, tuple)):
            items = list(raw)
        elif isinstance(raw, str) and raw.startswith("[") and raw.endswith("]"):
            import json
            try:
                items = json.loads(raw)
            except ValueError:
                raise PropertyError(f"Parameter '{pname}' expects a list") from None
            if not isinstance(items, list):
                raise PropertyError(f"Parameter '{pname}' expects a list")
        else:
            items = [raw]
        out: list[Any] = []
        for it in items:
            v = self.item.parse(pname, it, ctx)
            if v not in out:
                out.append(v)
        return out

    def to_json(self, value: Any) -> Any:
        return [self.item.to_json(v) for v in (value or [])]

    def format(self, value: Any) -> str:
        return ",".join(str(self.item.to_json(v)) for v in (value or [])) or "<empty>"


class LinkType(PropType):
    """A reference to another object: set by id or QOM path, read back as a canonical path.

    ``ctx`` must provide ``resolve_link(pname, text, target_type) -> Object``.
    """

    json_name = "string"

    def __init__(self, target: str):
        self.target = target
        self.name = f"link<{target}>"

    def parse(self, pname: str, raw: Any, ctx: Any = None) -> Any:
        from nvshell.device.qom.object import Object
        if isinstance(raw, Object):
            return raw
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise self.bad_type(pname)
        if ctx is None:
            raise PropertyError(f"Parameter '{pname}': cannot resolve '{raw}' here")
        return ctx.resolve_link(pname, raw, self.target)

    def to_json(self, value: Any) -> Any:
        return value.path() if value is not None else ""

    def format(self, value: Any) -> str:
        return f'"{value.path()}"' if value is not None else '""'


def _alternatives(values: Sequence[str]) -> str:
    values = list(values)
    if len(values) == 1:
        return values[0]
    return ", ".join(values[:-1]) + " or " + values[-1]


# -------------------------------------------------------------------------- property
Getter = Callable[["Object"], Any]
Setter = Callable[["Object", Any], None]


@dataclass
class Property:
    """One property of a type.

    * ``default``: value (or zero-argument callable, evaluated per instance, e.g. a random uuid)
      used when the user gives none; ``None`` means "unset".
    * ``required``: creation fails with "Parameter 'x' is missing" when absent.
    * ``read_only``: computed (``getter``), never settable.
    * ``mutable``: may be changed with ``qom-set`` after the object is complete (most
      properties are fixed once created, as in the QEMU RFC for NVMe objects).
    * ``live``: the value in effect, read from the running model (``live(obj)``) once the object
      is complete and ``obj.is_live()``; before that the user's value (or the default) reads back.
      Why: what the user asked for is not always what the device does (defaults resolved at
      creation, a serial derived from the id, a guest's Format NVM changing the LBA format), and
      introspection must show what the guest sees.  A property with ``live`` may still be set at
      creation like any other; a mutable one applies the change in ``property_changed``.
    * ``refers_to``: for string properties naming other objects by id (``attached-to``);
      ``(container path, special words)`` lets the command line check references and
      order creation without knowing what the names mean.
    """

    name: str
    type: PropType
    default: Any = None
    description: str = ""
    required: bool = False
    read_only: bool = False
    mutable: bool = False
    getter: Getter | None = None
    setter: Setter | None = None
    live: Getter | None = None
    refers_to: tuple[str, tuple[str, ...]] | None = None
    hidden_default: bool = False  # do not show the default (e.g. random uuids)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def qom_type(self) -> str:
        return self.type.name

    def default_value(self) -> Any:
        d = self.default
        return d() if callable(d) else d

    def describe(self) -> dict[str, Any]:
        """The ``qom-list-properties`` / ``device-list-properties`` entry (ObjectPropertyInfo)."""
        info: dict[str, Any] = {"name": self.name, "type": self.qom_type}
        if self.description:
            info["description"] = self.description
        if self.default is not None and not callable(self.default) and not self.hidden_default:
            info["default-value"] = self.type.to_json(self.default)
        return info

    def is_link(self) -> bool:
        return isinstance(self.type, LinkType)

    @property
    def settable(self) -> bool:
        """The user may give it (at creation; afterwards only if ``mutable``)."""
        return not self.read_only and not (self.getter is not None and self.setter is None)
