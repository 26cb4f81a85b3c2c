"""Objects and the object tree.

Why a tree: QEMU tools (``qom-list``, ``qom-get``, ``info qom-tree``, qom-fuse) address
everything by path, ``/objects/<id>`` for objects and ``/machine/peripheral/<id>``
for devices.  An ``Object`` owns its property values and its children (``child<T>``
properties) and may carry ``link<T>`` properties pointing elsewhere.  Every property
listed by ``list_properties`` can be read with ``get``; a getter that fails raises
``PropertyError`` instead of crashing the caller.

Lifecycle hooks for subclasses (the NVMe glue in ``device/objects.py``):

* ``complete(ctx)``: all initial properties are set; build the real thing (QEMU's
  ``user_creatable_complete`` / ``realize``).  Raise ``NvshellError`` to refuse.
* ``check_delete(ctx)``: raise ``ObjectError`` if deleting now is not allowed.
* ``finalize(ctx)``: tear down (must not fail; log instead).
* ``property_changed(name, old, new, ctx)``: a mutable property changed after completion;
  raise to refuse (the old value is restored).
* ``is_live()``: the running model exists, so properties with a ``live`` getter read their
  effective value from it (``Property.live``); False while the model is being built or torn down.

``ctx`` is whatever the owner passes (the ``Machine``); it must offer ``resolve_link``
for link properties.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterator

from nvshell.device.errors import NvshellError, ObjectError, ObjectNotFound, PropertyError
from nvshell.device.qom.properties import LinkType, Property, PropType, StrType

if TYPE_CHECKING:  # pragma: no cover
    from nvshell.device.qom.types import TypeInfo, TypeRegistry

log = logging.getLogger(__name__)


class _ChildType(PropType):
    """Type of a ``child<T>`` property: reads back as the child's path."""

    json_name = "string"

    def __init__(self, target: str):
        self.name = f"child<{target}>"

    def to_json(self, value: Any) -> Any:
        return value.path() if value is not None else ""


class _TypeNameType(StrType):
    name = "string"  # QEMU reports the "type" property as "string"


class Object:
    """An instance of a QOM type."""

    def __init__(self, registry: "TypeRegistry", type_info: "TypeInfo", id: str | None):
        self.registry = registry
        self.type_info = type_info
        self.id = id
        self.parent: Object | None = None
        self.name: str | None = None
        self.completed = False
        self._children: dict[str, Object] = {}
        self._dynamic: dict[str, Property] = {}
        self._values: dict[str, Any] = {}
        for p in self._static_props().values():
            if p.getter is None and callable(p.default):
                self._values[p.name] = p.default_value()

    # ------------------------------------------------------------ identity
    @property
    def typename(self) -> str:
        return self.type_info.name

    def path(self) -> str:
        if self.parent is None:
            return "/"
        base = self.parent.path()
        return (base if base.endswith("/") else base + "/") + (self.name or "")

    def is_a(self, typename: str) -> bool:
        return self.registry.implements(self.typename, typename)

    def __repr__(self) -> str:
        return f"<{self.typename} {self.path() if self.parent else self.id!r}>"

    # ----------------------------------------------------------- properties
    def _static_props(self) -> dict[str, Property]:
        return self.registry.properties(self.typename)

    def list_properties(self) -> list[Property]:
        """``type`` first, then declared properties (inherited first), then child/link ones."""
        type_prop = Property("type", _TypeNameType(), description="QOM type name", read_only=True,
                             getter=lambda o: o.typename)
        return [type_prop, *self._static_props().values(), *self._dynamic.values()]

    def find_property(self, name: str) -> Property:
        if name == "type":
            return self.list_properties()[0]
        p = self._static_props().get(name) or self._dynamic.get(name)
        if p is None:
            raise PropertyError(f"Property '{self.typename}.{name}' not found")
        return p

    def has_property(self, name: str) -> bool:
        return name == "type" or name in self._static_props() or name in self._dynamic

    def get(self, name: str) -> Any:
        """The canonical Python value (Objects for links and children)."""
        p = self.find_property(name)
        reader = p.getter
        if reader is None and p.live is not None and self.completed and self.is_live():
            reader = p.live
        if reader is not None:
            try:
                return reader(self)
            except NvshellError:
                raise
            except Exception as e:  # a listed property must fail cleanly, never crash qom tools
                log.exception("reading %s.%s", self.typename, name)
                raise PropertyError(f"Property '{self.typename}.{name}' cannot be read: {e}") from e
        if name in self._values:
            return self._values[name]
        return p.default_value()

    def get_json(self, name: str) -> Any:
        """The value as ``qom-get`` returns it (paths for links, ints for sizes, lists...)."""
        p = self.find_property(name)
        return p.type.to_json(self.get(name))

    def is_set(self, name: str) -> bool:
        """True if the user (or a default factory) gave a value, as opposed to the static default."""
        return name in self._values

    def set(self, name: str, raw: Any, ctx: Any = None) -> None:
        """Parse and store a value; after completion only ``mutable`` properties may change."""
        p = self.find_property(name)
        if not p.settable:
            raise PropertyError(f"Property '{self.typename}.{name}' is read-only")
        if self.completed and not p.mutable:
            can = [q.name for q in self._static_props().values() if q.mutable]
            hint = f" (run-time changes: {', '.join(can)})" if can else ""
            raise PropertyError(f"Property '{self.typename}.{name}' cannot be changed after the object is "
                                f"created{hint}")
        value = p.type.parse(name, raw, ctx)
        if not self.completed:
            self._store(p, value)
            return
        old = self.get(name)
        self._store(p, value)
        try:
            self.property_changed(name, old, value, ctx)
        except BaseException:
            self._store(p, old)
            raise

    def _store(self, p: Property, value: Any) -> None:
        if p.setter is not None:
            p.setter(self, value)
        else:
            self._values[p.name] = value

    # --------------------------------------------------------------- tree
    def add_child(self, name: str, child: "Object") -> None:
        if not name or "/" in name:
            raise ObjectError(f"invalid child name '{name}'")
        if self.has_property(name):
            raise ObjectError(f"attempt to add duplicate property '{name}' to object (type '{self.typename}')")
        if child.parent is not None:
            raise ObjectError(f"object '{child.path()}' already has a parent")
        self._children[name] = child
        self._dynamic[name] = Property(name, _ChildType(child.typename), read_only=True,
                                       getter=lambda o, n=name: o._children.get(n))
        child.parent = self
        child.name = name

    def remove_child(self, name: str) -> "Object":
        child = self._children.pop(name, None)
        if child is None:
            raise ObjectNotFound(f"Path '{self.path().rstrip('/')}/{name}' not found")
        self._dynamic.pop(name, None)
        child.parent = None
        return child

    def add_link(self, name: str, target_type: str, getter: Any) -> None:
        """A read-only ``link<T>`` property computed by ``getter(obj) -> Object | None``."""
        if self.has_property(name):
            raise ObjectError(f"attempt to add duplicate property '{name}' to object (type '{self.typename}')")
        self._dynamic[name] = Property(name, LinkType(target_type), read_only=True, getter=getter)

    def child(self, name: str) -> "Object | None":
        return self._children.get(name)

    def children(self) -> dict[str, "Object"]:
        return dict(self._children)

    def walk(self) -> Iterator["Object"]:
        yield self
        for c in list(self._children.values()):
            yield from c.walk()

    def step(self, name: str) -> "Object | None":
        """Follow one path component: a child, or a link property."""
        c = self._children.get(name)
        if c is not None:
            return c
        p = self._static_props().get(name) or self._dynamic.get(name)
        if p is not None and p.is_link():
            try:
                v = self.get(name)
            except NvshellError:
                return None
            return v if isinstance(v, Object) else None
        return None

    # --------------------------------------------------------------- hooks
    def is_live(self) -> bool:
        """True when ``live`` property getters may read the running model (see ``Property.live``)."""
        return True

    def complete(self, ctx: Any) -> None:
        """Build the real thing once the initial properties are set."""

    def check_delete(self, ctx: Any) -> None:
        """Raise ObjectError if the object may not be deleted now."""

    def finalize(self, ctx: Any) -> None:
        """Tear down; must not raise."""

    def property_changed(self, name: str, old: Any, new: Any, ctx: Any) -> None:
        """A mutable property changed on a complete object; raise to refuse."""

    def references(self) -> list["Object"]:
        """Objects this one depends on (link values); used to refuse deleting them."""
        out = []
        for p in self._static_props().values():
            if p.is_link() and p.getter is None:
                v = self._values.get(p.name)
                if isinstance(v, Object):
                    out.append(v)
        return out


class Container(Object):
    """A plain node of the tree (``/objects``, ``/machine/peripheral``)."""


def resolve_path(root: Object, path: str) -> Object:
    """Resolve an absolute path (``/objects/ns1``) or a partial one (``ns1``, ``peripheral/ctrl0``).

    A partial path must match the end of exactly one object's path, as in QEMU.
    """
    if not isinstance(path, str) or not path:
        raise ObjectNotFound(f"Path '{path}' not found")
    if path.startswith("/"):
        obj: Object | None = root
        for comp in [c for c in path.split("/") if c]:
            obj = obj.step(comp) if obj is not None else None
            if obj is None:
                raise ObjectNotFound(f"Path '{path}' not found")
        assert obj is not None
        return obj
    comps = [c for c in path.split("/") if c]
    matches = []
    for o in root.walk():
        if o.parent is None:
            continue
        parts = [c for c in o.path().split("/") if c]
        if parts[-len(comps):] == comps:
            matches.append(o)
    if not matches:
        raise ObjectNotFound(f"Path '{path}' not found")
    if len(matches) > 1:
        raise ObjectError(f"Path '{path}' is ambiguous")
    return matches[0]
