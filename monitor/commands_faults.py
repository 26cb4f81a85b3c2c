"""QMP fault injection: ``x-nvme-fault-add``, ``x-nvme-fault-del``, ``x-nvme-fault-list``.

Why QMP first: the shell's ``fault_add``/``fault_del``/``info faults`` (monitor/hmp_faults.py)
and the ``-fault`` command line option all go through ``add_rule`` here, so a rule is
validated the same way (``FaultRule.from_args``, one clear error) wherever it comes from.
Arguments carry the same names everywhere; numeric ones accept numbers or strings
("0x281", "2/0x81") because the shell's keyval syntax has only strings.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.errors import PropertyError
from nvshell.device.faults import FAULT_ARGS as RULE_ARGS
from nvshell.device.faults import FAULT_EVENT, FaultRule
from nvshell.device.keyval import parse_keyval
from nvshell.monitor.errors import DeviceNotFound, GenericError
from nvshell.monitor.registry import Arg, Enum, qmp_command, qmp_event

#: The rule arguments as QMP declares them, derived from ``device.faults.FAULT_ARGS``
#: (fixed word sets become enums, so ``query-qmp-schema`` and completion list them).
FAULT_ARGS = [Arg(a.name, Enum(f"FaultRule-{a.name}", a.choices) if a.choices else a.type, a.name != "id", a.doc)
              for a in RULE_ARGS]


qmp_event(FAULT_EVENT, [Arg("id", "str", doc="rule"), Arg("action", "str"), Arg("device", "str"), Arg("qid", "int"),
                        Arg("cid", "int"), Arg("opcode", "str", doc="opcode name (or 0x.. without one)"),
                        Arg("nsid", "int"), Arg("hits", "int", doc="this hit's number"),
                        Arg("slba", "int", True, "LBA commands: first LBA"), Arg("nlb", "int", True, "blocks")],
          "a fault rule with event=on hit a command")


def _machine(ctx: Any) -> Any:
    machine = getattr(ctx, "machine", None)
    if machine is None or getattr(machine, "faults", None) is None:
        raise GenericError("No machine with fault injection is attached to this monitor")
    return machine


def _controller_ids(machine: Any) -> list[str]:
    out = []
    for d in machine.devices():
        is_a = getattr(d, "is_a", None)
        if d.id and (is_a("x-nvme-ctrl") if is_a else getattr(d, "typename", "") == "x-nvme-ctrl"):
            out.append(d.id)
    return out


def add_rule(machine: Any, args: dict[str, Any]) -> FaultRule:
    """Validate and add one rule; raises ``NvshellError`` subclasses with one clear message."""
    rule = FaultRule.from_args({k: v for k, v in args.items() if v is not None})
    if rule.ctrl is not None:
        ids = _controller_ids(machine)
        if rule.ctrl not in ids:
            raise PropertyError(f"Parameter 'ctrl': no NVMe controller '{rule.ctrl}' "
                                f"(controllers: {', '.join(ids) or 'none'})")
    return machine.faults.add(rule)


def apply_fault_options(machine: Any, options: list[str]) -> None:
    """The ``-fault KEYVAL`` command line options (nvshell/main.py), after the machine is built."""

    for text in options:
        try:
            add_rule(machine, parse_keyval(text, "id"))
        except PropertyError as exc:
            raise PropertyError(f"-fault '{text}': {exc}") from None


@qmp_command("x-nvme-fault-add", args=FAULT_ARGS, returns="any")
def fault_add(ctx: Any, args: dict) -> dict[str, Any]:
    """Add a fault rule; returns it as ``x-nvme-fault-list`` shows it."""
    return add_rule(_machine(ctx), args).describe()


@qmp_command("x-nvme-fault-del", args=[Arg("id", "str")])
def fault_del(ctx: Any, args: dict) -> dict[str, Any]:
    """Remove a fault rule (its running effects end: e.g. an AEN's critical warning clears)."""
    rule_id = args["id"]
    faults = _machine(ctx).faults
    if faults.get(rule_id) is None:
        known = ", ".join(r.id for r in faults) or "none"
        raise DeviceNotFound(f"Fault rule '{rule_id}' not found (rules: {known})")
    faults.remove(rule_id)
    return {}


@qmp_command("x-nvme-fault-list", returns=["any"])
def fault_list(ctx: Any, args: dict) -> list[dict[str, Any]]:
    """Every rule: its match, action, parameters and counters (``hits``, ``matched``)."""
    return [rule.describe() for rule in _machine(ctx).faults]
