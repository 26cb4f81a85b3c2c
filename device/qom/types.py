"""Type registry: names, inheritance, interfaces and the properties each type declares.

Why a registry of plain data: ``-object help``, ``qom-list-types``,
``device-list-properties`` and the creation code must agree on what exists.  A type
is a ``TypeInfo`` (name, parent, Python class, properties); a subtype inherits its
parent's properties and may add or override them (``x-nvme-ns-zoned`` gets every
``x-nvme-ns-nvm`` property for free).

Nothing here knows about NVMe; ``device/objects.py`` registers those types.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nvshell.device.errors import TypeNotFound
from nvshell.device.qom.properties import Property

if TYPE_CHECKING:  # pragma: no cover
    from nvshell.device.qom.object import Object

#: Interface implemented by types that ``object-add`` / ``-object`` may create.
USER_CREATABLE = "user-creatable"
#: Root of every type ``device_add`` / ``-device`` may create.
TYPE_DEVICE = "device"
TYPE_OBJECT = "object"
TYPE_CONTAINER = "container"


@dataclass
class TypeInfo:
    """A QOM type.  ``cls`` is the Python class instantiated (inherited from the parent if None)."""

    name: str
    parent: str | None = TYPE_OBJECT
    cls: type | None = None
    abstract: bool = False
    properties: list[Property] = field(default_factory=list)
    description: str = ""
    interfaces: tuple[str, ...] = ()


class TypeRegistry:
    """All known types.  One global instance, ``TYPES``; tests may build their own."""

    def __init__(self) -> None:
        self._types: dict[str, TypeInfo] = {}
        self._lock = threading.Lock()
        self._prop_cache: dict[str, dict[str, Property]] = {}

    def register(self, info: TypeInfo, *, replace: bool = False) -> TypeInfo:
        """Add a type.  Its parent must already be registered (keeps the hierarchy a tree)."""
        with self._lock:
            if info.name in self._types and not replace:
                raise ValueError(f"type '{info.name}' is already registered")
            if info.parent is not None and info.parent not in self._types:
                raise ValueError(f"type '{info.name}': unknown parent type '{info.parent}'")
            names = [p.name for p in info.properties]
            if len(names) != len(set(names)):
                raise ValueError(f"type '{info.name}' declares a property twice")
            self._types[info.name] = info
            self._prop_cache.clear()
            return info

    def __contains__(self, name: str) -> bool:
        return name in self._types

    def get(self, name: str) -> TypeInfo:
        try:
            return self._types[name]
        except KeyError:
            raise TypeNotFound(f"invalid object type: {name}") from None

    def ancestors(self, name: str) -> list[TypeInfo]:
        """The type itself, then its parent, ... up to the root."""
        out = []
        info: TypeInfo | None = self.get(name)
        while info is not None:
            out.append(info)
            info = self._types.get(info.parent) if info.parent else None
        return out

    def implements(self, name: str, iface: str) -> bool:
        """True if ``name`` is ``iface``, descends from it, or an ancestor lists it as an interface."""
        if name not in self._types:
            return False
        return any(t.name == iface or iface in t.interfaces for t in self.ancestors(name))

    def python_class(self, name: str) -> type:
        for t in self.ancestors(name):
            if t.cls is not None:
                return t.cls
        from nvshell.device.qom.object import Object
        return Object

    def properties(self, name: str) -> dict[str, Property]:
        """All properties of a type, inherited ones first (a subtype may override by name)."""
        cached = self._prop_cache.get(name)
        if cached is not None:
            return cached
        props: dict[str, Property] = {}
        for t in reversed(self.ancestors(name)):
            for p in t.properties:
                props[p.name] = p
        self._prop_cache[name] = props
        return props

    def list_types(self, implements: str | None = None, abstract: bool = False) -> list[dict[str, Any]]:
        """``qom-list-types``: ObjectTypeInfo entries ``{name, parent?, abstract?, description?}``
        sorted by name (``description``: nvshell's addition, for ``-device help``/``-object help``).

        ``abstract=False`` leaves abstract types out, as QEMU does.
        """
        out = []
        for t in sorted(self._types.values(), key=lambda t: t.name):
            if t.abstract and not abstract:
                continue
            if implements is not None and not self.implements(t.name, implements):
                continue
            entry: dict[str, Any] = {"name": t.name}
            if t.parent:
                entry["parent"] = t.parent
            if t.abstract:
                entry["abstract"] = True
            if t.description:
                entry["description"] = t.description
            out.append(entry)
        return out

    def type_properties(self, name: str) -> list[dict[str, Any]]:
        """``qom-list-properties``: ``[{name, type, description?, default-value?}]``."""
        self.get(name)
        return [p.describe() for p in self.properties(name).values()]

    def instantiate(self, name: str, id: str | None) -> "Object":
        """Create an (incomplete) instance with defaults applied; the caller sets properties."""
        info = self.get(name)
        cls = self.python_class(name)
        return cls(self, info, id)


#: The process-wide registry.
TYPES = TypeRegistry()


def _register_base_types(reg: TypeRegistry) -> None:
    from nvshell.device.qom.object import Container, Object
    reg.register(TypeInfo(TYPE_OBJECT, parent=None, cls=Object, description="base of all types"))
    reg.register(TypeInfo(TYPE_CONTAINER, cls=Container, description="a node of the object tree"))
    reg.register(TypeInfo(TYPE_DEVICE, abstract=True, description="base of all devices"))
    reg.register(TypeInfo(USER_CREATABLE, abstract=True, description="interface: created with -object/object-add"))


def new_registry() -> TypeRegistry:
    """A registry with only the base types (for tests that must not see the NVMe types)."""
    reg = TypeRegistry()
    _register_base_types(reg)
    return reg


_register_base_types(TYPES)
