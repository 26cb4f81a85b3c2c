"""QEMU-style ``-object`` / ``-device`` / ``-readconfig`` parsing, and applying it to a Machine.

Syntax (QEMU keyval)::

    -object x-nvme-subsystem,id=subsys0
    -device x-nvme-ctrl,id=ctrl0,subsys=subsys0,socket=/run/ctrl0.sock
    -object x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1G,attached-to=ctrl0,attached-to=ctrl1
    -object help            -device help            -object x-nvme-ns-nvm,help

* The first item without ``=`` is the type (``qom-type`` / ``driver``).
* A comma inside a value is written doubled: ``file=/tmp/a,,b`` is the path ``/tmp/a,b``.
* A repeated key makes a list (only valid for repeatable properties such as ``attached-to``).
* Options may come in any order: references (``subsys=``, ``attached-to=``) to objects defined
  later are resolved by creating objects in dependency order; a reference to an id defined
  nowhere is an error that names it.

``-readconfig FILE`` reads JSON (chosen over QEMU's ini format because values keep their
types and lists need no repetition)::

    {
      "objects": [
        {"qom-type": "x-nvme-subsystem", "id": "subsys0"},
        {"qom-type": "x-nvme-ns-nvm", "id": "ns1", "subsys": "subsys0", "size": "1G",
         "attached-to": ["ctrl0"]}
      ],
      "devices": [
        {"driver": "x-nvme-ctrl", "id": "ctrl0", "subsys": "subsys0", "socket": "/run/ctrl0.sock"}
      ]
    }

Values may be strings (as on the command line), numbers, booleans or lists of strings.

API used by ``nvshell/main.py``: ``help_request(objects, devices) -> str | None``,
``parse(objects=, devices=, readconfig=) -> Specs``, ``apply(machine, specs)``,
``default_topology(machine)``; lower level: ``parse_keyval``, ``help_text``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from nvshell.device.keyval import split_items
from nvshell.device.errors import NvshellError, PropertyError
from nvshell.device.qom import TYPE_DEVICE, TYPES, USER_CREATABLE, ListType, TypeRegistry
from nvshell.device.qom.properties import LinkType


class CmdlineError(NvshellError):
    """A bad -object/-device/-readconfig; the message starts with the offending option."""


# ------------------------------------------------------------------ keyval
def parse_keyval(text: str, implied_key: str | None = None) -> dict[str, Any]:
    """Parse ``type,k=v,k2=v,,with-comma`` into a dict; repeated keys become lists.

    ``implied_key`` names the value of a first item without ``=`` (QEMU's implied key).
    A bare ``help`` or ``?`` item sets ``{"help": True}``.
    """
    if not isinstance(text, str):
        raise PropertyError("expected a string of key=value pairs")
    items = split_items(text)
    out: dict[str, Any] = {}
    for n, item in enumerate(items):
        if item in ("help", "?"):
            out["help"] = True
            continue
        if "=" not in item:
            if n == 0 and implied_key is not None and item:
                out[implied_key] = item
                continue
            if item == "":
                raise PropertyError("Invalid parameter ''" if n else "Parameter 'id' is missing")
            raise PropertyError(f"Expected '=' after parameter '{item}'")
        key, _, value = item.partition("=")
        if not key:
            raise PropertyError(f"Invalid parameter '' in '{item}'")
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------- specs
@dataclass
class Spec:
    """One object or device to create."""

    kind: str  # "object" | "device"
    typename: str
    id: str | None
    props: dict[str, Any]
    source: str  # for error messages: "-object x-nvme-ns-nvm,id=ns1,..." or "file.json: objects[2]"

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.id)


@dataclass
class Specs:
    """Everything the command line asked for, in the given order."""

    items: list[Spec] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.items

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def _spec_from_dict(kind: str, d: dict[str, Any], source: str) -> Spec:
    type_key = "qom-type" if kind == "object" else "driver"
    d = dict(d)
    if d.get("help"):
        raise CmdlineError(f"{source}: 'help' is only valid on its own")
    typename = d.pop(type_key, None)
    if not typename or not isinstance(typename, str):
        raise CmdlineError(f"{source}: Parameter '{type_key}' is missing")
    ident = d.pop("id", None)
    if ident is not None and not isinstance(ident, str):
        raise CmdlineError(f"{source}: Invalid parameter type for 'id', expected: string")
    if kind == "object" and not ident:
        raise CmdlineError(f"{source}: Parameter 'id' is missing")
    return Spec(kind, typename, ident, d, source)


def parse_option(kind: str, text: str) -> Spec:
    """One ``-object`` (kind "object") or ``-device`` (kind "device") argument."""
    source = f"-{kind} {text}"
    try:
        d = parse_keyval(text, "qom-type" if kind == "object" else "driver")
    except NvshellError as e:
        raise CmdlineError(f"{source}: {e}") from None
    return _spec_from_dict(kind, d, source)


def read_config(path: str) -> list[Spec]:
    """Specs from a ``-readconfig`` JSON file (format in the module docstring)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise CmdlineError(f"-readconfig {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CmdlineError(f"-readconfig {path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CmdlineError(f"-readconfig {path}: expected a JSON object with 'objects' and/or 'devices'")
    unknown = set(data) - {"objects", "devices"}
    if unknown:
        raise CmdlineError(f"-readconfig {path}: unexpected key '{sorted(unknown)[0]}' "
                           f"(expected 'objects' and/or 'devices')")
    specs = []
    for section, kind in (("objects", "object"), ("devices", "device")):
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise CmdlineError(f"-readconfig {path}: '{section}' must be a list")
        for i, entry in enumerate(entries):
            source = f"-readconfig {path}: {section}[{i}]"
            if not isinstance(entry, dict):
                raise CmdlineError(f"{source}: expected a JSON object")
            specs.append(_spec_from_dict(kind, entry, source))
    return specs


def parse(objects: Iterable[str] = (), devices: Iterable[str] = (), readconfig: Iterable[str] | str = ()) -> Specs:
    """All options into Specs: readconfig files first, then -object, then -device.

    Order does not matter for correctness (``apply`` orders by dependencies).
    """
    if isinstance(readconfig, str):
        readconfig = [readconfig]
    specs = Specs()
    for path in readconfig or ():
        specs.items.extend(read_config(path))
    for text in objects or ():
        specs.items.append(parse_option("object", text))
    for text in devices or ():
        specs.items.append(parse_option("device", text))
    return specs


# ------------------------------------------------------------------- apply
def _references(spec: Spec, registry: TypeRegistry) -> list[tuple[str, str, str | None]]:
    """``(property, target id, kind or None)`` this spec refers to, from the type's property data."""
    if spec.typename not in registry:
        return []
    props = registry.properties(spec.typename)
    out: list[tuple[str, str, str | None]] = []
    for key, value in spec.props.items():
        p = props.get(key)
        if p is None:
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(p.type, LinkType):
            for v in values:
                if isinstance(v, str) and v and not v.startswith("/"):
                    out.append((key, v, None))
        elif p.refers_to is not None:
            container, special = p.refers_to
            kind = "device" if container.startswith("/machine/peripheral") else "object"
            for v in values:
                if isinstance(v, str) and v and v not in special:
                    out.append((key, v, kind))
    return out


def order_specs(specs: Specs | list[Spec], machine: Any = None, registry: TypeRegistry | None = None) -> list[Spec]:
    """Dependency order (stable otherwise); checks duplicate ids and dangling references."""
    registry = registry or getattr(machine, "registry", None) or TYPES
    items = list(specs)
    by_id: dict[tuple[str, str], int] = {}
    for n, s in enumerate(items):
        if s.id is None:
            continue
        k = (s.kind, s.id)
        if k in by_id:
            raise CmdlineError(f"{s.source}: Duplicate ID '{s.id}' for {s.kind}")
        by_id[k] = n

    def exists(kind: str, ident: str) -> bool:
        if machine is None:
            return False
        if kind == "object":
            return machine.find_object(ident) is not None
        return machine.find_device(ident) is not None

    deps: list[set[int]] = [set() for _ in items]
    for n, s in enumerate(items):
        for key, target, kind in _references(s, registry):
            kinds = [kind] if kind else ["object", "device"]
            found = [by_id[(k, target)] for k in kinds if (k, target) in by_id]
            if found:
                deps[n].update(f for f in found if f != n)
            elif not any(exists(k, target) for k in kinds):
                raise CmdlineError(f"{s.source}: Parameter '{key}' refers to '{target}', which is not defined")
    order: list[Spec] = []
    done: set[int] = set()
    while len(done) < len(items):
        ready = [n for n in range(len(items)) if n not in done and deps[n] <= done]
        if not ready:
            stuck = [items[n].id or items[n].typename for n in range(len(items)) if n not in done]
            raise CmdlineError(f"circular references between {', '.join(stuck)}")
        done.add(ready[0])
        order.append(items[ready[0]])
    return order


def apply(machine: Any, specs: Specs | list[Spec]) -> None:
    """Create everything in dependency order; the first failure raises CmdlineError naming the option."""
    registry = getattr(machine, "registry", TYPES)
    for s in order_specs(specs, machine, registry):
        props = dict(s.props)
        if s.typename in registry:
            tprops = registry.properties(s.typename)
            for k, v in props.items():
                p = tprops.get(k)
                if isinstance(v, list) and p is not None and not isinstance(p.type, ListType):
                    raise CmdlineError(f"{s.source}: Parameter '{k}' given more than once")
        try:
            if s.kind == "object":
                machine.object_add(s.typename, s.id, props)
            else:
                machine.device_add(s.typename, s.id, props)
        except NvshellError as e:
            raise CmdlineError(f"{s.source}: {e}") from None


def default_topology(machine: Any) -> None:
    """subsys0 + ctrl0 (socket run_dir/ctrl0.sock) + 1 GiB in-memory ns1 attached to all."""
    from nvshell.device.machine import default_topology as _default
    _default(machine)


# -------------------------------------------------------------------- help
def _type_list(kind: str, registry: TypeRegistry) -> str:
    if kind == "object":
        names = [t["name"] for t in registry.list_types(USER_CREATABLE)
                 if not registry.implements(t["name"], TYPE_DEVICE)]
        return "List of user creatable object types:\n" + "".join(f"  {n}\n" for n in names)
    lines = ["Storage devices:"]
    for t in registry.list_types(TYPE_DEVICE):
        desc = registry.get(t["name"]).description
        lines.append(f'name "{t["name"]}"' + (f', desc "{desc}"' if desc else ""))
    return "\n".join(lines) + "\n"


def _type_props(typename: str, registry: TypeRegistry) -> str:
    lines = [f"{typename} options:"]
    for p in registry.properties(typename).values():
        if p.read_only or (p.getter is not None and p.setter is None):
            continue
        left = f"  {p.name}=<{p.qom_type}>"
        text = p.description
        info = p.describe()
        if "default-value" in info and info["default-value"] not in ("", [], None):
            dv = info["default-value"]
            if p.qom_type == "size" and isinstance(dv, int):
                from nvshell.device.qom import format_size
                dv = format_size(dv)
            text += f" (default: {json.dumps(dv) if not isinstance(dv, str) or p.qom_type != 'size' else dv})"
        lines.append(f"{left:<32} - {text}" if text else left)
    return "\n".join(lines) + "\n"


def help_text(kind: str, typename: str | None = None, registry: TypeRegistry | None = None) -> str:
    """``-object help`` (kind "object"), ``-device help``, or ``-object TYPE,help``."""
    import nvshell.device.objects  # noqa: F401  (registers the x-nvme-* types)
    registry = registry or TYPES
    if typename is None:
        return _type_list(kind, registry)
    if typename not in registry:
        if kind == "device":
            raise CmdlineError(f"'{typename}' is not a valid device model name")
        raise CmdlineError(f"invalid object type: {typename}")
    return _type_props(typename, registry)


def help_request(objects: Iterable[str] = (), devices: Iterable[str] = ()) -> str | None:
    """If any option asks for help, the text to print (and exit); else None."""
    for kind, texts in (("object", objects), ("device", devices)):
        for text in texts or ():
            try:
                d = parse_keyval(text, "qom-type" if kind == "object" else "driver")
            except NvshellError:
                continue
            typename = d.get("qom-type" if kind == "object" else "driver")
            if typename in ("help", "?"):
                return help_text(kind)
            if d.get("help"):
                return help_text(kind, typename if isinstance(typename, str) else None)
    return None


__all__ = ["CmdlineError", "Spec", "Specs", "apply", "default_topology", "help_request", "help_text",
           "order_specs", "parse", "parse_keyval", "parse_option", "read_config"]
