"""The object tree and the generic operations on it (object-add, device_add, qom-*).

Why generic: creating, deleting, listing and setting properties are the same for any
type; only the ``complete``/``finalize`` hooks differ.  ``ObjectTree`` implements the
QEMU rules once (ids, duplicate ids, unknown/read-only/immutable properties, missing
required ones, rollback when completion fails, refusal to delete an object others
link to) so that ``Machine`` only adds what is NVMe-specific.

Layout, as in QEMU::

    /                     container
    /objects/<id>         user-created objects (-object, object-add)
    /machine              the machine
    /machine/peripheral/<id>        devices with an id (-device, device_add)
    /machine/peripheral-anon/device[N]  devices without an id

Global properties (``-global DRIVER.PROP=VALUE``, QEMU's rule): ``add_global`` changes the
default of one property for every device of type DRIVER (or a subtype) built afterwards, from
the command line, ``-readconfig`` or ``device_add``; a property given on the device itself wins.
They are checked when they are added (the type must be a device type, the property one a
user may set, the value one it accepts), so a mistake stops the program before anything runs.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from nvshell.device.errors import NvshellError, ObjectError, ObjectNotFound, PropertyError, TypeNotFound
from nvshell.device.qom.object import Container, Object, resolve_path
from nvshell.device.qom.properties import LinkType
from nvshell.device.qom.types import TYPE_CONTAINER, TYPE_DEVICE, TYPES, USER_CREATABLE, TypeRegistry

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


def check_id(id: Any) -> str:
    """QEMU's id_wellformed: a letter, then letters, digits, '-', '.', '_'."""
    if id is None or id == "":
        raise PropertyError("Parameter 'id' is missing")
    if not isinstance(id, str) or not _ID_RE.match(id):
        raise PropertyError("Parameter 'id' expects an identifier")
    return id


@dataclass(frozen=True)
class GlobalProperty:
    """One ``-global``: the default of ``property`` for devices of type ``driver``.

    ``value`` is kept as given and parsed per device, like a property typed on its
    command line (a link names its target by id, resolved when that device is built)."""

    driver: str
    property: str
    value: Any

    def __str__(self) -> str:
        return f"{self.driver}.{self.property}={self.value}"


class ObjectTree:
    """Root of the tree plus the generic QOM operations.  Thread-safe (one re-entrant lock)."""

    def __init__(self, registry: TypeRegistry | None = None):
        self.registry = registry or TYPES
        self.lock = threading.RLock()
        self.root = self._container()
        self.objects_node = self._container()
        self.root.add_child("objects", self.objects_node)
        self.machine_node = self._container()
        self.root.add_child("machine", self.machine_node)
        self.peripheral = self._container()
        self.machine_node.add_child("peripheral", self.peripheral)
        self.peripheral_anon = self._container()
        self.machine_node.add_child("peripheral-anon", self.peripheral_anon)
        self._anon_seq = 0
        #: ``-global`` defaults, in the order given (a later one for the same property wins).
        self.globals: list[GlobalProperty] = []

    def _container(self) -> Container:
        obj = self.registry.instantiate(TYPE_CONTAINER, None)
        obj.completed = True
        assert isinstance(obj, Container)
        return obj

    # ----------------------------------------------------------- lookups
    def resolve(self, path: str) -> Object:
        """An object by absolute or partial QOM path."""
        with self.lock:
            return resolve_path(self.root, path)

    def find_object(self, id: str) -> Object | None:
        return self.objects_node.child(id)

    def find_device(self, id: str) -> Object | None:
        return self.peripheral.child(id)

    def objects(self) -> list[Object]:
        """User-visible objects under /objects, in creation order."""
        with self.lock:
            return list(self.objects_node.children().values())

    def devices(self) -> list[Object]:
        """Devices under /machine/peripheral and /machine/peripheral-anon."""
        with self.lock:
            return [*self.peripheral.children().values(), *self.peripheral_anon.children().values()]

    def resolve_link(self, pname: str, text: str, target_type: str) -> Object:
        """Turn a link property's value (an id or a path) into the object, checking its type.

        Ids are looked up in /objects, then /machine/peripheral, then as a partial path.
        """
        obj: Object | None = None
        if text.startswith("/"):
            try:
                obj = resolve_path(self.root, text)
            except ObjectNotFound:
                obj = None
        else:
            obj = self.objects_node.child(text) or self.peripheral.child(text)
            if obj is None:
                try:
                    obj = resolve_path(self.root, text)
                except NvshellError:
                    obj = None
        if obj is None:
            raise PropertyError(f"Property '{pname}': object '{text}' not found")
        if not obj.is_a(target_type):
            raise PropertyError(f"Property '{pname}': object '{text}' is a {obj.typename}, expected {target_type}")
        return obj

    # ---------------------------------------------------------- creation
    def _check_type(self, typename: Any, *, device: bool) -> None:
        what = "driver" if device else "qom-type"
        if typename is None or typename == "":
            raise PropertyError(f"Parameter '{what}' is missing")
        if not isinstance(typename, str):
            raise PropertyError(f"Invalid parameter type for '{what}', expected: string")
        if device:
            if typename not in self.registry or not self.registry.implements(typename, TYPE_DEVICE):
                raise TypeNotFound(f"'{typename}' is not a valid device model name")
        else:
            if typename not in self.registry:
                raise TypeNotFound(f"invalid object type: {typename}")
            if not self.registry.implements(typename, USER_CREATABLE):
                raise ObjectError(f"object type '{typename}' isn't supported by object-add")
        if self.registry.get(typename).abstract:
            raise ObjectError(f"Parameter '{what}' expects a non-abstract type, '{typename}' is abstract")

    def add_global(self, driver: str, prop: str, value: Any) -> GlobalProperty:
        """Register a ``-global``; raises (naming what is wrong) for a type that is not a device
        type, a property the type does not have or a user cannot set, or a value it refuses."""
        if not isinstance(driver, str) or driver not in self.registry \
                or not self.registry.implements(driver, TYPE_DEVICE):
            raise TypeNotFound(f"'{driver}' is not a valid device model name")
        p = self.registry.properties(driver).get(prop)
        if p is None:
            raise PropertyError(f"Property '{driver}.{prop}' not found")
        if not p.settable:
            raise PropertyError(f"Property '{driver}.{prop}' is read-only")
        if isinstance(p.type, LinkType):
            if not isinstance(value, str) or not value:
                raise p.type.bad_type(prop)
        else:
            p.type.parse(prop, value, self)
        g = GlobalProperty(driver, prop, value)
        with self.lock:
            self.globals.append(g)
        return g

    def globals_for(self, typename: str) -> dict[str, GlobalProperty]:
        """The ``-global`` defaults that apply to a new ``typename``, by property (last one wins)."""
        return {g.property: g for g in self.globals if self.registry.implements(typename, g.driver)}

    def build(self, typename: str, id: str | None, props: dict[str, Any]) -> Object:
        """Instantiate and set the initial properties (not yet completed nor in the tree):
        the ``-global`` defaults first, then ``props`` (which win over them)."""
        obj = self.registry.instantiate(typename, id)
        for key, g in self.globals_for(typename).items():
            if key in props:
                continue
            try:
                obj.set(key, g.value, self)
            except NvshellError as e:
                raise PropertyError(f"-global {g}: {e}") from None
        for key, raw in props.items():
            if key == "id":
                continue
            p = obj.find_property(key)  # "Property 'T.key' not found"
            if not p.settable:
                raise PropertyError(f"Property '{typename}.{key}' is read-only")
            obj.set(key, raw, self)
        for p in obj.list_properties():
            if p.required and not obj.is_set(p.name):
                raise PropertyError(f"Parameter '{p.name}' is missing")
        return obj

    def _insert(self, parent: Container, name: str, obj: Object, kind: str) -> Object:
        with self.lock:
            if parent.child(name) is not None:
                raise ObjectError(f"Duplicate ID '{name}' for {kind}")
            parent.add_child(name, obj)
            try:
                obj.complete(self)
            except BaseException:
                parent.remove_child(name)
                raise
            obj.completed = True
            return obj

    def object_add(self, qom_type: str, id: str, props: dict[str, Any] | None = None) -> Object:
        """``object-add``: create ``/objects/<id>``."""
        self._check_type(qom_type, device=False)
        check_id(id)
        with self.lock:
            if self.objects_node.child(id) is not None:
                raise ObjectError(f"Duplicate ID '{id}' for object")
            obj = self.build(qom_type, id, dict(props or {}))
            return self._insert(self.objects_node, id, obj, "object")

    def device_add(self, driver: str, id: str | None, props: dict[str, Any] | None = None) -> Object:
        """``device_add``: create ``/machine/peripheral/<id>`` (or peripheral-anon without id)."""
        self._check_type(driver, device=True)
        if id is not None:
            check_id(id)
        with self.lock:
            if id is not None and self.peripheral.child(id) is not None:
                raise ObjectError(f"Duplicate ID '{id}' for device")
            obj = self.build(driver, id, dict(props or {}))
            if id is None:
                name = f"device[{self._anon_seq}]"
                self._anon_seq += 1
                return self._insert(self.peripheral_anon, name, obj, "device")
            return self._insert(self.peripheral, id, obj, "device")

    # ---------------------------------------------------------- deletion
    def users_of(self, target: Object) -> list[Object]:
        """Objects whose link properties point at ``target``."""
        return [o for o in self.root.walk() if o is not target and any(r is target for r in o.references())]

    def _delete(self, obj: Object) -> None:
        with self.lock:
            obj.check_delete(self)
            users = self.users_of(obj)
            if users:
                names = ", ".join(u.id or u.path() for u in users)
                raise ObjectError(f"{obj.typename} '{obj.id}' is in use by {names}")
            # children first (e.g. implicit objects a device owns)
            obj.finalize(self)
            obj.completed = False
            if obj.parent is not None and obj.name is not None:
                obj.parent.remove_child(obj.name)

    def object_del(self, id: str) -> None:
        """``object-del``: refused (ObjectError) while the object is in use."""
        with self.lock:
            obj = self.objects_node.child(id) if isinstance(id, str) else None
            if obj is None:
                raise ObjectNotFound(f"object '{id}' not found")
            self._delete(obj)

    def lookup_device(self, id: str) -> Object:
        """A device by id, or by QOM path (QEMU's device_del accepts both)."""
        with self.lock:
            obj = self.peripheral.child(id) if isinstance(id, str) else None
            if obj is None and isinstance(id, str) and id.startswith("/"):
                try:
                    cand = resolve_path(self.root, id)
                except NvshellError:
                    cand = None
                if cand is not None and cand.is_a(TYPE_DEVICE):
                    obj = cand
            if obj is None:
                raise ObjectNotFound(f"Device '{id}' not found")
            return obj

    def device_del(self, id: str) -> Object:
        """``device_del``: remove the device; returns it (already removed from the tree)."""
        with self.lock:
            obj = self.lookup_device(id)
            self._delete(obj)
            return obj

    # ---------------------------------------------------------------- qom-*
    def qom_list(self, path: str) -> list[dict[str, str]]:
        """``qom-list``: ``[{"name", "type"}]`` for every property of the object at ``path``."""
        with self.lock:
            obj = self.resolve(path)
            out = []
            for p in obj.list_properties():
                entry = {"name": p.name, "type": p.qom_type}
                if p.description:
                    entry["description"] = p.description
                out.append(entry)
            return out

    def qom_get(self, path: str, prop: str) -> Any:
        """``qom-get``: the JSON value of one property."""
        with self.lock:
            return self.resolve(path).get_json(prop)

    def qom_set(self, path: str, prop: str, value: Any) -> None:
        """``qom-set``: change a mutable property (others are refused with a clear error)."""
        with self.lock:
            obj = self.resolve(path)
            obj.set(prop, value, self)

    def list_types(self, implements: str | None = None, abstract: bool = False) -> list[dict[str, Any]]:
        return self.registry.list_types(implements, abstract)

    def type_properties(self, typename: str) -> list[dict[str, Any]]:
        """``qom-list-properties`` / ``device-list-properties`` for ``typename``."""
        if not isinstance(typename, str) or typename not in self.registry:
            raise TypeNotFound(f"invalid object type: {typename}")
        return self.registry.type_properties(typename)

    # ---------------------------------------------------------------- trees
    def qom_tree(self, path: str = "/") -> dict[str, Any]:
        """Nested ``{"name", "type", "path", "children": [...]}`` (children sorted) for ``info qom-tree``."""
        with self.lock:
            def node(o: Object) -> dict[str, Any]:
                return {"name": o.name or "", "type": o.typename, "path": o.path(),
                        "children": [node(c) for _, c in sorted(o.children().items())]}
            return node(self.resolve(path))

    def format_qom_tree(self, path: str = "/") -> str:
        """QEMU's ``info qom-tree`` text: ``/name (type)``, +2 indent per level, children sorted."""
        lines: list[str] = []

        def emit(n: dict[str, Any], depth: int) -> None:
            lines.append(f"{'  ' * depth}/{n['name']} ({n['type']})")
            for c in n["children"]:
                emit(c, depth + 1)
        emit(self.qom_tree(path), 0)
        return "\n".join(lines) + "\n"

    def dump_config(self) -> dict[str, list[dict[str, Any]]]:
        """The tree as ``-readconfig`` JSON: ``{"objects": [...], "devices": [...]}``.

        Each entry holds the type, the id and every settable property with its *effective*
        value (what ``qom-get`` returns), so reading the dump back with ``-readconfig``
        rebuilds the same device as the guest sees it now (a guest's Format NVM and the
        namespaces it created included).  Links are written as the target's id, as a user
        would write them.  Order is creation order, which the reader does not need (it
        orders by references) but keeps the file readable.
        """
        with self.lock:
            return {"objects": [self._dump(o, "qom-type") for o in self.objects()],
                    "devices": [self._dump(d, "driver") for d in self.devices()]}

    def _dump(self, obj: Object, type_key: str) -> dict[str, Any]:
        entry: dict[str, Any] = {type_key: obj.typename}
        if obj.id:
            entry["id"] = obj.id
        for p in obj.registry.properties(obj.typename).values():
            if not p.settable:
                continue
            value = obj.get(p.name)
            if value is None:
                continue  # unset and without default: the reader applies the same rule
            if p.is_link():
                entry[p.name] = value.id or value.path()
            else:
                entry[p.name] = p.type.to_json(value)
        return entry

    def device_properties(self, obj: Object) -> list[tuple[str, str]]:
        """``(name, formatted value)`` of a device's declared properties, for ``info qtree``."""
        out = []
        for p in obj.registry.properties(obj.typename).values():
            try:
                out.append((p.name, p.type.format(obj.get(p.name))))
            except NvshellError as e:
                out.append((p.name, f"<error: {e}>"))
        return out


__all__ = ["GlobalProperty", "ObjectTree", "check_id", "LinkType"]
