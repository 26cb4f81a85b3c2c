"""Declarative QMP command registry: one declaration validates arguments and generates the schema.

Why declarative: QEMU clients (``qmp-shell``, libvirt-style introspection, qemu's own
scripts) read ``query-qmp-schema`` to learn what a command accepts, and users read
the error messages when they get it wrong.  Declaring each command's arguments once
(``Arg(name, type, optional)``) keeps both in agreement: the same table checks every
request and produces QEMU's ``SchemaInfo`` list.

Open registration: any module may add commands with ``@qmp_command(...)``; the command
group modules are imported, in a fixed order, by ``monitor/loader.py`` (``default_registry()``).  Handlers are
``handler(ctx, args) -> result`` (plain or ``async``); ``args`` is the checked
argument dict with the wire names (``"qom-type"``), including extra keys when the
command was declared with ``flatten=True``.

``Registry.execute(name, arguments, ctx)`` is the single entry point used by QMP
sessions, the HMP layer and the shell.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Union

from nvshell.monitor.errors import ArgumentError, CommandNotFound, GenericError, QMPError, to_qmp_error


@dataclass(frozen=True)
class Struct:
    """A JSON object type with named members (QEMU's ``object`` meta-type)."""

    name: str
    members: tuple["Arg", ...] = ()


@dataclass(frozen=True)
class Enum:
    """A string restricted to ``values`` (QEMU's ``enum`` meta-type)."""

    name: str
    values: tuple[str, ...]


#: A type: a builtin name ("str", "int", "bool", "number", "size", "any", "dict", "null"),
#: a one-element list ``[T]`` for arrays, a ``Struct`` or an ``Enum``.
TypeSpec = Union[str, list, Struct, Enum]


@dataclass(frozen=True)
class Arg:
    """One declared argument (or struct member)."""

    name: str
    type: Any = "str"
    optional: bool = False
    doc: str = ""


#: The empty object: what commands without arguments take and what ``{}`` replies return.
EMPTY = Struct("Empty", ())

Handler = Callable[[Any, dict], Union[Any, Awaitable[Any]]]


@dataclass(frozen=True)
class EventDecl:
    """A declared event: its name and its ``data`` members (for ``query-qmp-schema``)."""

    name: str
    members: tuple[Arg, ...] = ()
    doc: str = ""


@dataclass
class Command:
    """A registered command: its declaration and its handler."""

    name: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    returns: Any = EMPTY
    doc: str = ""
    flatten: bool = False
    module: str = field(default="")


# name -> (json-type for the schema, human name used in "expected: ..." errors)
_BUILTINS: dict[str, tuple[str, str]] = {
    "str": ("string", "string"),
    "int": ("int", "integer"),
    "size": ("int", "size"),
    "number": ("number", "number"),
    "bool": ("boolean", "boolean"),
    "any": ("value", "value"),
    "null": ("null", "null"),
}


#: The largest integer a "number" argument takes (the largest finite double).
_MAX_NUMBER = int(sys.float_info.max)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_error(path: str, expected: str) -> ArgumentError:
    return ArgumentError(f"Invalid parameter type for '{path}', expected: {expected}")


def check_value(value: Any, typ: Any, path: str) -> None:
    """Raise ``ArgumentError`` worded like QEMU's input visitor if ``value`` is not a ``typ``."""
    if isinstance(typ, list):
        if not isinstance(value, list):
            raise _type_error(path, "array")
        for i, item in enumerate(value):
            check_value(item, typ[0], f"{path}[{i}]")
    elif isinstance(typ, Struct):
        if not isinstance(value, dict):
            raise _type_error(path, "object")
        check_members(value, typ.members, prefix=f"{path}.")
    elif isinstance(typ, Enum):
        if not isinstance(value, str):
            raise _type_error(path, "string")
        if value not in typ.values:
            raise ArgumentError(f"Parameter '{path}' does not accept value '{value}'")
    elif typ == "str":
        if not isinstance(value, str):
            raise _type_error(path, "string")
    elif typ == "int":
        if not _is_int(value):
            raise _type_error(path, "integer")
    elif typ == "size":
        if not _is_int(value) or value < 0:
            raise _type_error(path, "size")
    elif typ == "number":
        # an integer beyond a double's range is no number a command can use (found by the QMP fuzzer)
        if not (_is_int(value) and abs(value) <= _MAX_NUMBER or isinstance(value, float)):
            raise _type_error(path, "number")
    elif typ == "bool":
        if not isinstance(value, bool):
            raise _type_error(path, "boolean")
    elif typ == "dict":
        if not isinstance(value, dict):
            raise _type_error(path, "object")
    elif typ == "null":
        if value is not None:
            raise _type_error(path, "null")
    elif typ != "any":
        raise ValueError(f"unknown type {typ!r} in a command declaration")


def check_members(args: dict, members: Iterable[Arg], *, prefix: str = "", allow_extra: bool = False) -> None:
    """Check an object against declared members, in declaration order, then extra keys."""
    members = tuple(members)
    for member in members:
        path = prefix + member.name
        if member.name not in args:
            if not member.optional:
                raise ArgumentError(f"Parameter '{path}' is missing")
            continue
        check_value(args[member.name], member.type, path)
    if not allow_extra:
        known = {m.name for m in members}
        for key in args:
            if key not in known:
                raise ArgumentError(f"Parameter '{prefix}{key}' is unexpected")


def _validate_type(typ: Any) -> None:
    """Reject malformed declarations at registration time, not at the first request."""
    if isinstance(typ, list):
        if len(typ) != 1:
            raise ValueError("array types are written as a one-element list: ['str']")
        _validate_type(typ[0])
    elif isinstance(typ, Struct):
        for member in typ.members:
            _validate_type(member.type)
    elif isinstance(typ, Enum):
        if not typ.values:
            raise ValueError(f"enum {typ.name} has no values")
    elif typ not in _BUILTINS and typ != "dict":
        raise ValueError(f"unknown type {typ!r} in a command declaration")


def _stringify_scalars(arguments: dict, members: Iterable[Arg]) -> None:
    """Flattened commands (device_add, object-add) take ints/bools for string members, as
    QEMU's option parsing does (qmp-shell sends ``id=1`` as an int): 1 -> "1", True -> "on"."""
    for member in members:
        value = arguments.get(member.name)
        if member.type == "str" and isinstance(value, (int, bool)):
            arguments[member.name] = ("on" if value else "off") if isinstance(value, bool) else str(value)


def run_sync(awaitable: Awaitable[Any]) -> Any:
    """Drive a coroutine that never suspends to completion, without an event loop.

    Why: synchronous callers (an HMP handler running inside ``run_hmp``) may need to
    call commands whose handlers are plain functions; ``Registry.execute`` is a
    coroutine only so that async handlers are possible.
    """
    coro = awaitable.__await__()
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("command suspended; call it with 'await registry.execute(...)'")


class Registry:
    """The table of QMP commands."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._events: dict[str, EventDecl] = {}

    # -- declaration ---------------------------------------------------------
    def register(self, command: Command) -> Command:
        """Add a command; a second, different registration of the same name is a bug."""
        old = self._commands.get(command.name)
        if old is not None and (old.module, getattr(old.handler, "__qualname__", None)) != (
                command.module, getattr(command.handler, "__qualname__", None)):
            raise ValueError(f"QMP command {command.name!r} is already registered by {old.module}")
        for arg in command.args:
            _validate_type(arg.type)
        _validate_type(command.returns)
        self._commands[command.name] = command
        return command

    def command(self, name: str, *, args: Iterable[Arg] = (), returns: Any = EMPTY, doc: str = "",
                flatten: bool = False) -> Callable[[Handler], Handler]:
        """Decorator: ``@registry.command("x-foo", args=[Arg("nsid", "int")])``."""
        def decorate(handler: Handler) -> Handler:
            self.register(Command(name, handler, tuple(args), returns, doc or (inspect.getdoc(handler) or ""),
                                  flatten, getattr(handler, "__module__", "")))
            return handler
        return decorate

    def event(self, name: str, members: Iterable[Arg] = (), doc: str = "") -> EventDecl:
        """Declare an event the monitor sends (QEMU's SchemaInfoEvent in ``query-qmp-schema``)."""
        decl = EventDecl(name, tuple(members), doc)
        old = self._events.get(name)
        if old is not None and old != decl:
            raise ValueError(f"QMP event {name!r} is already declared differently")
        for member in decl.members:
            _validate_type(member.type)
        self._events[name] = decl
        return decl

    def event_names(self) -> list[str]:
        return sorted(self._events)

    def unregister(self, name: str) -> None:
        """Remove a command (tests, experimental commands that go away)."""
        self._commands.pop(name, None)

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def __contains__(self, name: object) -> bool:
        return name in self._commands

    # -- execution -----------------------------------------------------------
    def check(self, name: str, arguments: dict | None) -> Command:
        """Look a command up and check its arguments; raises ``QMPError``."""
        command = self._commands.get(name)
        if command is None:
            raise CommandNotFound(f"The command {name} has not been found")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            raise GenericError("QMP input member 'arguments' must be an object")
        if command.flatten:
            _stringify_scalars(arguments, command.args)
        check_members(arguments, command.args, allow_extra=command.flatten)
        return command

    async def execute(self, name: str, arguments: dict | None, ctx: Any) -> Any:
        """Check and run a command; every failure comes out as ``QMPError``."""
        command = self.check(name, arguments)
        try:
            result = command.handler(ctx, dict(arguments or {}))
            if inspect.isawaitable(result):
                result = await result
        except QMPError:
            raise
        except Exception as exc:  # the device model or a bug: never crash the caller
            raise to_qmp_error(exc) from exc
        return {} if result is None else result

    def execute_sync(self, name: str, arguments: dict | None, ctx: Any) -> Any:
        """``execute`` for synchronous callers; fails if the handler really awaits."""
        return run_sync(self.execute(name, arguments, ctx))

    # -- introspection ---------------------------------------------------------
    def schema(self) -> list[dict]:
        """QEMU's ``SchemaInfo`` list for ``query-qmp-schema``.

        Non-builtin type names are masked to numbers as QEMU does, so clients cannot
        depend on them; identical types share one entry.
        """
        builder = _SchemaBuilder()
        for name in self.names():
            command = self._commands[name]
            arg_type = builder.ref(Struct(f"{name}-args", command.args) if command.args else EMPTY)
            ret_type = builder.ref(command.returns)
            builder.entities.append({"name": name, "meta-type": "command", "arg-type": arg_type,
                                     "ret-type": ret_type, "allow-oob": False})
        for name in self.event_names():
            event = self._events[name]
            arg_type = builder.ref(Struct(f"{name}-data", event.members) if event.members else EMPTY)
            builder.entities.append({"name": name, "meta-type": "event", "arg-type": arg_type})
        return builder.entities


class _SchemaBuilder:
    """Assigns masked names to types and collects their SchemaInfo entries."""

    def __init__(self) -> None:
        self.entities: list[dict] = []
        self._names: dict[Any, str] = {}
        self._counter = 0

    def _masked(self) -> str:
        name = str(self._counter)
        self._counter += 1
        return name

    def _key(self, typ: Any) -> Any:
        if isinstance(typ, list):
            return ("array", self._key(typ[0]))
        if isinstance(typ, Struct):
            return ("object", tuple((m.name, self._key(m.type), m.optional) for m in typ.members))
        if isinstance(typ, Enum):
            return ("enum", typ.values)
        return ("builtin", "any" if typ == "dict" else typ)

    def ref(self, typ: Any) -> str:
        key = self._key(typ)
        name = self._names.get(key)
        if name is not None:
            return name
        if isinstance(typ, list):
            element = self.ref(typ[0])
            name = f"[{element}]"
            self._names[key] = name
            self.entities.append({"name": name, "meta-type": "array", "element-type": element})
        elif isinstance(typ, Struct):
            name = self._masked()
            self._names[key] = name
            members = []
            for member in typ.members:
                info: dict[str, Any] = {"name": member.name, "type": self.ref(member.type)}
                if member.optional:
                    info["default"] = None
                members.append(info)
            self.entities.append({"name": name, "meta-type": "object", "members": members})
        elif isinstance(typ, Enum):
            name = self._masked()
            self._names[key] = name
            self.entities.append({"name": name, "meta-type": "enum", "values": list(typ.values),
                                  "members": [{"name": v} for v in typ.values]})
        else:
            name = "any" if typ == "dict" else typ
            self._names[key] = name
            self.entities.append({"name": name, "meta-type": "builtin", "json-type": _BUILTINS[name][0]})
        return name


#: The process-wide registry that ``@qmp_command`` fills.
REGISTRY = Registry()


def qmp_command(name: str, *, args: Iterable[Arg] = (), returns: Any = EMPTY, doc: str = "",
                flatten: bool = False) -> Callable[[Handler], Handler]:
    """Register a command in the process-wide registry (usable from any module)."""
    return REGISTRY.command(name, args=args, returns=returns, doc=doc, flatten=flatten)


def qmp_event(name: str, members: Iterable[Arg] = (), doc: str = "") -> EventDecl:
    """Declare an event in the process-wide registry."""
    return REGISTRY.event(name, members, doc)


def default_registry() -> Registry:
    """The process-wide registry with every command group loaded (``monitor/loader.py``)."""
    from nvshell.monitor.loader import load  # the loader imports the groups, which import us
    return load()
