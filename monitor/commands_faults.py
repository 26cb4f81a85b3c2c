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
from nvshell.device.faults import FaultRule
from nvshell.monitor.errors import DeviceNotFound, GenericError
from nvshell.monitor.registry import Arg, qmp_command

#: The rule arguments, as QMP declares them ("any": a number or a string with one).
FAULT_ARGS = [
    Arg("id", "str", doc="rule name"),
    Arg("action", "str", True, "status (default), delay, drop, corrupt, pi-corrupt, dma-error, fatal, "
                               "ns-not-ready, ns-remove, aen, irq-loss, keep-alive-expire, self-test-fail, "
                               "zone-read-only, zone-offline"),
    Arg("ctrl", "str", True, "controller (device id) to match"),
    Arg("qid", "any", True, "submission queue id to match (0: admin)"),
    Arg("queue", "str", True, "admin or io: which opcode table 'opcode' names"),
    Arg("opcode", "any", True, "opcode name (read, write, identify, ...) or number"),
    Arg("nsid", "any", True, "namespace id to match"),
    Arg("slba", "any", True, "first LBA of the range to match (overlap)"),
    Arg("nlb", "any", True, "number of LBAs of the range (default: to the end)"),
    Arg("count", "any", True, "hit at most this many times"),
    Arg("skip", "any", True, "let this many matching commands through first"),
    Arg("probability", "any", True, "hit with this probability (0..1)"),
    Arg("seed", "any", True, "seed of the probability (and of the bits corrupt flips)"),
    Arg("status", "any", True, "action=status: status name, number or SCT/SC"),
    Arg("dnr", "any", True, "Do Not Retry bit (status, dma-error)"),
    Arg("more", "any", True, "More bit (status)"),
    Arg("delay", "any", True, "action=delay: milliseconds"),
    Arg("bits", "any", True, "action=corrupt: bits to flip (default 1)"),
    Arg("duration", "any", True, "ns-not-ready / ns-remove: milliseconds (default 1000)"),
    Arg("aen", "str", True, "action=aen: smart-critical, temperature, spare, ns-changed"),
    Arg("field", "str", True, "action=pi-corrupt: guard (default), apptag or reftag"),
    Arg("event", "any", True, "send X_NVME_FAULT_INJECTED per hit (default on)"),
    Arg("result", "any", True, "action=self-test-fail: self-test result code 1..9 (default 7, segment failed)"),
    Arg("segment", "any", True, "action=self-test-fail: number of the failing segment (default 7)"),
    Arg("lba", "any", True, "action=self-test-fail: failing LBA reported in the self-test log"),
]


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
    from nvshell.monitor.hmp import HMPError, parse_opts

    for text in options:
        try:
            add_rule(machine, parse_opts(text, "id"))
        except HMPError as exc:
            raise PropertyError(f"-fault '{text}': {exc}") from None
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


# The shell commands built on these register themselves on import.
from nvshell.monitor import hmp_faults as _hmp_faults  # noqa: E402,F401
