"""Shell commands for fault injection: ``fault_add``, ``fault_del``, ``info faults``.

Why thin: each one runs the QMP command of the same purpose (monitor/commands_faults.py)
so the shell, a remote shell and QMP clients see identical behaviour and errors; this
module only parses the QEMU-style keyval line and formats the rule table.
"""

from __future__ import annotations

from typing import Any

from nvshell.monitor import format as fmt
from nvshell.device.faults import FAULT_ARGS
from nvshell.device.keyval import parse_keyval
from nvshell.monitor.hmp import HMPError, hmp_command, info_command, qmp

#: The usage line, from the one declaration of the rule arguments (device.faults.FAULT_ARGS).
FAULT_PARAMS = ",".join(f"{a.name}={'|'.join(a.choices) if a.choices else a.meta}" if a.name == "id" else
                        f"[,{a.name}={'|'.join(a.choices) if a.choices else a.meta}]" for a in FAULT_ARGS
                        ).replace(",[,", "[,")


@hmp_command("fault_add", "options*", params=FAULT_PARAMS, complete={"options": "fault-opts"},
             help="add a fault injection rule (see README 'Fault injection')")
async def hmp_fault_add(ctx: Any, args: dict[str, Any]) -> str:
    opts = parse_keyval(args["options"], "id")
    if "id" not in opts:
        raise HMPError("Parameter 'id' is missing")
    await qmp(ctx, "x-nvme-fault-add", opts)
    return ""


@hmp_command("fault_del", "id", help="remove a fault injection rule", complete={"id": "fault-id"})
async def hmp_fault_del(ctx: Any, args: dict[str, Any]) -> str:
    await qmp(ctx, "x-nvme-fault-del", {"id": args["id"]})
    return ""


def _match_text(rule: dict[str, Any]) -> str:
    parts = []
    for key in ("ctrl", "qid", "opcode", "nsid"):
        if key in rule:
            parts.append(f"{key}={rule[key]}")
    if "slba" in rule:
        end = f"+{rule['nlb']}" if "nlb" in rule else "+"
        parts.append(f"lba={rule['slba']}{end}")
    return ",".join(parts) or "any"


def _when_text(rule: dict[str, Any]) -> str:
    parts = []
    if "skip" in rule:
        parts.append(f"skip {rule['skip']}")
    if "count" in rule:
        parts.append(f"first {rule['count']}")
    if "probability" in rule:
        parts.append(f"p={rule['probability']} seed={rule.get('seed', 0)}")
    return ", ".join(parts) or "always"


_ACTION_PARAMS = ("status", "dnr", "more", "delay", "bits", "duration", "aen", "field", "result", "segment", "lba")


def _action_text(rule: dict[str, Any]) -> str:
    params = []
    for key in _ACTION_PARAMS:
        if key not in rule:
            continue
        value = rule[key]
        if isinstance(value, bool):
            if value:
                params.append(key)
            continue
        unit = "ms" if key in ("delay", "duration") else ""
        if key == "status" and rule.get("status-name") not in (None, "?"):
            value = f"{rule['status-name']}"
        params.append(f"{key}={value}{unit}")
    return rule["action"] + (f" ({', '.join(params)})" if params else "")


def format_faults(rules: list[dict[str, Any]]) -> str:
    """``info faults``: one row per rule with its counters."""
    if not rules:
        return "no fault rules\n"
    rows = [[r["id"], _match_text(r), _when_text(r), _action_text(r), r["hits"], r["matched"]] for r in rules]
    return fmt.format_table(["id", "match", "when", "action", "hits", "matched"], rows)


@info_command("faults", help="show the fault injection rules and their hit counters")
async def info_faults(ctx: Any, args: dict[str, Any]) -> str:
    return format_faults(await qmp(ctx, "x-nvme-fault-list"))


__all__ = ["format_faults", "FAULT_PARAMS"]
