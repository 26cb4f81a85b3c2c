"""QEMU-style ``-object`` / ``-device`` / ``-global`` / ``-readconfig`` parsing, and applying it to a Machine.

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

``-global`` sets the default of a device property for every device of that type created
afterwards (those of the command line and of ``device_add``), as in QEMU; a property given on
the device wins.  Both of QEMU's spellings::

    -global x-nvme-ctrl.doorbells=mmap                  (the value is the rest, commas included)
    -global driver=x-nvme-ctrl,property=doorbells,value=mmap

An unknown driver or property, a read-only property or a bad value stops nvshell at start-up
with a message naming the option.

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
``parse(objects=, devices=, readconfig=, globals=) -> Specs``, ``apply(machine, specs)``,
``apply_globals(machine, specs.globals)``,
``default_topology(machine)``; lower level: ``help_text(kind, text)``.  The keyval syntax itself is
``nvshell.device.keyval.parse_keyval``, shared with the shell's ``object_add``/``device_add``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from nvshell.device.keyval import parse_keyval
from nvshell.device.errors import NvshellError, PropertyError
from nvshell.device.qom import TYPE_DEVICE, TYPES, USER_CREATABLE, GlobalProperty, ListType, TypeRegistry
from nvshell.device.qom.properties import LinkType


class CmdlineError(NvshellError):
    """A bad -object/-device/-readconfig; the message starts with the offending option."""


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


@dataclass(frozen=True)
class GlobalSpec(GlobalProperty):
    """One ``-global`` (``driver``, ``property``, ``value``) and the option it came from."""

    source: str = ""  # "-global x-nvme-ctrl.doorbells=mmap"


@dataclass
class Specs:
    """Everything the command line asked for, in the given order."""

    items: list[Spec] = field(default_factory=list)
    globals: list[GlobalSpec] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No object or device named: the default topology is built (``-global`` alone, as in
        QEMU, changes the default devices rather than replacing them)."""
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


#: The two spellings ``-global`` accepts, for error messages.
GLOBAL_SYNTAX = "DRIVER.PROPERTY=VALUE or driver=DRIVER,property=PROPERTY,value=VALUE"


def parse_global(text: str) -> GlobalSpec:
    """One ``-global`` argument, read as QEMU does: ``DRIVER.PROP=VALUE`` (DRIVER up to the first
    '.' or '=', PROP up to the first '=', VALUE the rest verbatim), else keyval with the keys
    ``driver``, ``property`` and ``value``."""
    source = f"-global {text}"
    driver, dot, rest = text.partition(".")
    prop, eq, value = rest.partition("=")
    if dot and eq and driver and "=" not in driver and prop:
        return GlobalSpec(driver, prop, value, source)
    if "=" not in text:
        raise CmdlineError(f"{source}: expected {GLOBAL_SYNTAX}")
    try:
        d = parse_keyval(text, None)
    except NvshellError as e:
        raise CmdlineError(f"{source}: {e}") from None
    unknown = sorted(set(d) - {"driver", "property", "value"})
    if unknown:
        raise CmdlineError(f"{source}: Invalid parameter '{unknown[0]}' (expected {GLOBAL_SYNTAX})")
    if not all(isinstance(d.get(k), str) and d.get(k) != "" for k in ("driver", "property")) \
            or not isinstance(d.get("value"), str):
        raise CmdlineError(f"{source}: options 'driver', 'property', and 'value' are required")
    return GlobalSpec(d["driver"], d["property"], d["value"], source)


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


def parse(objects: Iterable[str] = (), devices: Iterable[str] = (), readconfig: Iterable[str] | str = (),
          globals: Iterable[str] = ()) -> Specs:
    """All options into Specs: readconfig files first, then -object, then -device; ``-global``
    options apart (in their order: a later one for the same property wins).

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
    for text in globals or ():
        specs.globals.append(parse_global(text))
    return specs


# ------------------------------------------------------------------- apply
def _references(spec: Spec, registry: TypeRegistry,
                globals: Iterable[GlobalSpec] = ()) -> list[tuple[str, str, str | None, str]]:
    """``(property, target id, kind or None, source)`` this spec refers to, from the type's
    property data; a ``-global`` default counts where the spec does not set the property."""
    if spec.typename not in registry:
        return []
    props = registry.properties(spec.typename)
    given: dict[str, tuple[Any, str]] = {}
    for g in globals:
        if g.driver in registry and registry.implements(spec.typename, g.driver) and g.property not in spec.props:
            given[g.property] = (g.value, g.source)
    given.update((k, (v, spec.source)) for k, v in spec.props.items())
    out: list[tuple[str, str, str | None, str]] = []
    for key, (value, source) in given.items():
        p = props.get(key)
        if p is None:
            continue
        values = value if isinstance(value, list) else [value]
        if isinstance(p.type, LinkType):
            for v in values:
                if isinstance(v, str) and v and not v.startswith("/"):
                    out.append((key, v, None, source))
        elif p.refers_to is not None:
            container, special = p.refers_to
            kind = "device" if container.startswith("/machine/peripheral") else "object"
            for v in values:
                if isinstance(v, str) and v and v not in special:
                    out.append((key, v, kind, source))
    return out


def order_specs(specs: Specs | list[Spec], machine: Any = None, registry: TypeRegistry | None = None) -> list[Spec]:
    """Dependency order (stable otherwise); checks duplicate ids and dangling references."""
    registry = registry or getattr(machine, "registry", None) or TYPES
    items = list(specs)
    globals = specs.globals if isinstance(specs, Specs) else []
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
        for key, target, kind, source in _references(s, registry, globals):
            kinds = [kind] if kind else ["object", "device"]
            found = [by_id[(k, target)] for k in kinds if (k, target) in by_id]
            if found:
                deps[n].update(f for f in found if f != n)
            elif not any(exists(k, target) for k in kinds):
                raise CmdlineError(f"{source}: Parameter '{key}' refers to '{target}', which is not defined")
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


def apply_globals(machine: Any, globals: Iterable[GlobalSpec]) -> None:
    """Register ``-global`` defaults on the machine (before anything is created); the first bad
    one raises CmdlineError naming the option."""
    for g in globals:
        try:
            machine.add_global(g.driver, g.property, g.value)
        except NvshellError as e:
            raise CmdlineError(f"{g.source}: {e}") from None


def apply(machine: Any, specs: Specs | list[Spec]) -> None:
    """Register the ``-global`` defaults (of a ``Specs``), then create everything in dependency
    order; the first failure raises CmdlineError naming the option."""
    registry = getattr(machine, "registry", TYPES)
    if isinstance(specs, Specs):
        apply_globals(machine, specs.globals)
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
#: The shell command that shares each option's syntax (and so its help).
_HMP_COMMAND = {"object": "object_add", "device": "device_add"}


def help_text(kind: str, text: str) -> str:
    """``-object help``, ``-device X,help``...: exactly what ``object_add``/``device_add``
    print for the same text, because it is those commands that answer (on a machine
    with nothing in it)."""
    import asyncio
    import tempfile

    from nvshell.device.machine import Machine
    from nvshell.monitor.context import MonitorContext
    from nvshell.monitor.hmp import execute_line

    async def ask() -> Any:
        with tempfile.TemporaryDirectory(prefix="nvshell-help-") as run_dir:
            return await execute_line(f"{_HMP_COMMAND[kind]} {text}", MonitorContext(machine=Machine(run_dir)))

    result = asyncio.run(ask())
    if not result.ok:
        raise CmdlineError(result.text.strip().removeprefix("Error: "))
    return result.text


def help_request(objects: Iterable[str] = (), devices: Iterable[str] = ()) -> str | None:
    """If any option asks for help, the text to print (and exit); else None."""
    for kind, texts in (("object", objects), ("device", devices)):
        for text in texts or ():
            try:
                d = parse_keyval(text, "qom-type" if kind == "object" else "driver")
            except NvshellError:
                continue
            if d.get("help") or d.get("qom-type" if kind == "object" else "driver") in ("help", "?"):
                return help_text(kind, text)
    return None


__all__ = ["CmdlineError", "GLOBAL_SYNTAX", "GlobalSpec", "Spec", "Specs", "apply", "apply_globals",
           "default_topology", "help_request", "help_text", "order_specs", "parse", "parse_global", "parse_option",
           "read_config"]
