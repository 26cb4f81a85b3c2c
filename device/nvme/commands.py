"""Command tables: every NVMe command handler is a function registered by opcode.

A handler has the signature ``handler(ctrl: ControllerContext, cmd) -> None | DEFERRED``
(``context.py``) and lives in
the module of its command set (``admin_*.py``, ``nvm.py``). It reads its fields
from ``cmd`` (a decoded SQE), moves data with ``ctrl.transfer(cmd, length)``
(PRP or SGL, chosen by PSDT), and ends in one of three ways:

* returns normally: the command completes with ``Status.SUCCESS`` and ``cmd.result``
  as DW0 of the completion entry;
* raises ``NvmeError(status)``: the command completes with that status;
* returns ``DEFERRED``: the handler keeps ``cmd`` and completes it later with
  ``ctrl.complete(cmd, status)`` (Asynchronous Event Requests, delayed faults).

Returning ``DEFERRED`` is the only way to keep ``cmd`` (or its ``extra``) past the call:
the engine decodes each SQ slot's commands into one reused object
(``SubmissionQueue.commands``), and a command that completed is refilled by the next
submission to its slot. A kept command is detached from its slot, so it stays intact
for as long as anything holds it.

Everything that is the same for all commands (name for traces, command
effects for the log page, whether an NSID is required, the namespace lookup)
comes from the table entry, not from each handler.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from nvshell.device.nvme.spec import SQE, opcode_name

if TYPE_CHECKING:  # only for annotations: the controller imports this module
    from nvshell.device.nvme.context import ControllerContext, Namespace

#: Returned by a handler that completes its command later.
DEFERRED = object()


@dataclass(slots=True)
class Command:
    """One submitted command, decoded from its SQE (see ``spec.SQE``)."""

    sqid: int
    cid: int
    opcode: int
    flags: int
    nsid: int
    mptr: int
    dptr1: int
    dptr2: int
    cdw10: int
    cdw11: int
    cdw12: int
    cdw13: int
    cdw14: int
    cdw15: int
    #: CDW3: bits 15:0 are bits 47:32 of the 48-bit reference tag (64b guard PI).
    cdw3: int = 0
    #: DW0 (and DW1) of the completion entry, set by handlers that return a value.
    result: int = 0
    result_dw1: int = 0
    #: The namespace the command addresses, looked up by the dispatcher when the
    #: table entry says the command needs one.
    ns: "Namespace | None" = None
    #: Monotonic ns timestamp of the fetch (latency tracing, the per-SQ histogram).
    fetched_ns: int = 0
    #: Data bytes the command moved, as counted in the SMART byte tallies (``SmartStats.add_*``);
    #: the engine adds them to the SQ's own tallies at completion.
    nbytes: int = 0
    #: Free for handlers and fault rules (the failing LBA of a PI check, a corrupt rule);
    #: empty at the start of every command.
    extra: dict[str, Any] = field(default_factory=dict)

    #: ``from_sqe(sqid, raw) -> Command``: a new command from ``SQE.struct.unpack_from`` output
    #: (the field order is ``SQE``'s); generated below (``_decoders``).
    from_sqe: ClassVar[Callable[[int, tuple[int, ...]], "Command"]]
    #: ``cmd.refill(raw)``: the same decoding into an existing command of the same SQ (the
    #: engine's per-slot objects, ``SubmissionQueue.commands``): every SQE field assigned, every
    #: other field back to its declared default, ``extra`` empty. Only for an object nothing
    #: else holds any more (see the engine's ``defer``, which detaches kept commands).
    refill: ClassVar[Callable[["Command", tuple[int, ...]], None]]

    @property
    def psdt(self) -> int:
        return (self.flags >> 6) & 0x3

    @property
    def fuse(self) -> int:
        return self.flags & 0x3


def _decoders() -> tuple[Callable[..., Command], Callable[..., None]]:
    """``Command.from_sqe`` and ``Command.refill``, generated from the two declarations (the
    dataclass fields, ``spec.SQE``'s layout) so that no field's decoding or reset is written by
    hand, and the two cannot disagree: the SQE fields are assigned in one tuple unpacking (in
    ``SQE``'s order; the reserved CDW2 goes to ``_``), every other field gets its declared
    default. ``from_sqe`` makes the instance without the dataclass ``__init__`` (that took a
    third of the decoding time). A ``default_factory`` field (``extra``) must make an empty
    container: ``refill`` replaces it only when something put items in it, so the common
    command allocates nothing, and a replaced dict is never cleared under anyone's feet."""
    targets = ", ".join(f"cmd.{name}" if name in _FIELDS else "_" for name in SQE.names)
    new = ["def from_sqe(cls, sqid, raw):", "    cmd = _new(cls)", f"    {targets} = raw", "    cmd.sqid = sqid"]
    reuse = ["def refill(cmd, raw):", f"    {targets} = raw"]
    env: dict[str, Any] = {"_new": object.__new__}
    for f in fields(Command):
        if f.name in SQE.names or f.name == "sqid":     # sqid: fixed, the object's SQ
            continue
        if f.default_factory is not MISSING:
            if f.default_factory():
                raise TypeError(f"Command.{f.name}: a default_factory must make an empty container")
            env[f"_make_{f.name}"] = f.default_factory
            new.append(f"    cmd.{f.name} = _make_{f.name}()")
            reuse.append(f"    if cmd.{f.name}:\n        cmd.{f.name} = _make_{f.name}()")
        elif f.default is not MISSING:
            env[f"_default_{f.name}"] = f.default
            new.append(f"    cmd.{f.name} = _default_{f.name}")
            reuse.append(f"    cmd.{f.name} = _default_{f.name}")
        else:
            raise TypeError(f"Command.{f.name}: neither an SQE field nor a field with a default")
    new.append("    return cmd")
    exec("\n".join(new), env)    # noqa: S102 -- source built from the two declarations above
    exec("\n".join(reuse), env)  # noqa: S102
    return env["from_sqe"], env["refill"]


_FIELDS = {f.name for f in fields(Command)}
_from_sqe, _refill = _decoders()
Command.from_sqe = classmethod(_from_sqe)  # type: ignore[method-assign, assignment]
Command.refill = _refill  # type: ignore[method-assign, assignment]


@dataclass(frozen=True, slots=True)
class CommandInfo:
    opcode: int
    name: str
    handler: Callable[["ControllerContext", Command], Any]
    #: "none": NSID ignored; "required": an attached, active namespace (cmd.ns set,
    #: else Invalid Namespace or Format); "optional": looked up if nonzero and not
    #: broadcast (0xffffffff).
    nsid: str = "none"
    #: Commands Supported and Effects log entry (CSUPP is implied).
    effects: int = 0
    #: Data transfer direction, for tracing: "none", "to-host", "from-host", "both".
    direction: str = "none"


class CommandTable:
    """Opcode -> ``CommandInfo``; one table per command set (admin, NVM, zoned...)."""

    def __init__(self, name: str, parent: "CommandTable | None" = None):
        self.name = name
        self._entries: dict[int, CommandInfo] = dict(parent._entries) if parent else {}

    def command(self, opcode: int, name: str | None = None, *, nsid: str = "none", effects: int = 0,
                direction: str = "none") -> Callable[[Callable], Callable]:
        """Decorator registering ``handler`` for ``opcode``.

        ``opcode`` is an ``AdminOpcode``/``NvmOpcode`` member: its name is the
        command's one name (``spec.opcode_name``), the same in traces, fault rules
        and completion. A plain number needs ``name`` and must not collide with a
        declared opcode's name (tests/test_spec_facts.py checks every table).
        """
        if isinstance(opcode, enum.Enum):
            if name is not None and name != opcode_name(opcode):
                raise ValueError(f"opcode {opcode!r} is named {opcode_name(opcode)!r}, not {name!r}")
            name = opcode_name(opcode)
        elif name is None:
            raise ValueError(f"opcode {opcode:#x} is not a declared opcode: give it a name")
        if nsid not in ("none", "required", "optional"):
            raise ValueError(f"nsid must be none, required or optional, not {nsid!r}")

        def register(handler: Callable) -> Callable:
            self._entries[int(opcode)] = CommandInfo(int(opcode), name, handler, nsid, effects, direction)
            return handler
        return register

    def get(self, opcode: int) -> CommandInfo | None:
        return self._entries.get(opcode)

    def by_name(self, name: str) -> CommandInfo | None:
        for info in self._entries.values():
            if info.name == name:
                return info
        return None

    def __iter__(self) -> Iterator[CommandInfo]:
        return iter(sorted(self._entries.values(), key=lambda i: i.opcode))

    def __contains__(self, opcode: int) -> bool:
        return opcode in self._entries


#: Admin command set; handlers register from ``device.nvme.admin_*`` modules.
ADMIN = CommandTable("admin")
#: NVM command set; handlers register from ``device.nvme.nvm``.
NVM = CommandTable("nvm")

# Command effects bits (Commands Supported and Effects log).
EFFECT_CSUPP = 1 << 0
EFFECT_LBCC = 1 << 1      # logical block content change
EFFECT_NCC = 1 << 2       # namespace capability change
EFFECT_NIC = 1 << 3       # namespace inventory change
EFFECT_CCC = 1 << 4       # controller capability change
EFFECT_CSE_SINGLE = 1 << 16
