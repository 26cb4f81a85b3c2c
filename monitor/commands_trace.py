"""trace-event-get-state / trace-event-set-state over a small trace-control interface.

Why an interface: the monitor only needs to list events matching a glob with their state
and to switch them, so it depends on ``TraceControl`` rather than on device/trace.py; the
program wires the process's ``device.trace.TRACE`` as ``ctx.trace`` (tests wire a fresh
``TraceRegistry`` holding copies of declared trace points). Without one, the commands
behave like QEMU with no matching events.
"""

from __future__ import annotations

from typing import Any, Protocol

from nvshell.device.errors import NvshellError
from nvshell.monitor.errors import GenericError
from nvshell.monitor.registry import Arg, Enum, Struct, qmp_command

TRACE_EVENT_STATE = Enum("TraceEventState", ("unavailable", "disabled", "enabled"))
TRACE_EVENT_INFO = Struct("TraceEventInfo", (
    Arg("name", "str"), Arg("state", TRACE_EVENT_STATE), Arg("vcpu", "bool")))


class TraceControl(Protocol):
    """What ``ctx.trace`` must provide (``device.trace.TraceRegistry`` does)."""

    def get_state(self, pattern: str) -> dict[str, bool]:
        """``{name: enabled}`` for each event matching the glob (may raise when none match)."""

    def set_state(self, pattern: str, enable: bool) -> Any:
        """Enable/disable every event matching the glob (the result is ignored)."""


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def _states(trace: Any, pattern: str) -> list[tuple[str, str]]:
    """Adapt either interface: ``get_state(glob) -> {name: bool}`` (device.trace.TraceRegistry)
    or ``list(glob) -> [(name, state)]`` / ``[obj with .name, .state]``."""
    if trace is None:
        return []
    get_state = getattr(trace, "get_state", None)
    if callable(get_state):
        try:
            states = get_state(pattern)
        except Exception as exc:
            if isinstance(exc, NvshellError):  # "no trace events found": none match
                return []
            raise
        return [(n, "enabled" if on else "disabled") for n, on in sorted(states.items())]
    out = []
    for item in trace.list(pattern):
        if isinstance(item, tuple):
            out.append((item[0], item[1]))
        else:
            state = getattr(item, "state", False)
            out.append((item.name, state if isinstance(state, str) else ("enabled" if state else "disabled")))
    return out


def _matches(ctx: Any, pattern: str) -> list[tuple[str, str]]:
    matches = _states(getattr(ctx, "trace", None), pattern)
    if not matches and not _is_pattern(pattern):
        raise GenericError(f"unknown event \"{pattern}\"")
    return matches


@qmp_command("trace-event-get-state", args=[Arg("name", "str"), Arg("vcpu", "int", optional=True)],
             returns=[TRACE_EVENT_INFO])
def trace_event_get_state(ctx: Any, args: dict) -> list[dict]:
    """States of the events matching a glob; an exact unknown name is an error, as in QEMU."""
    return [{"name": n, "state": s, "vcpu": False} for n, s in _matches(ctx, args["name"])]


@qmp_command("trace-event-set-state", args=[Arg("name", "str"), Arg("enable", "bool"),
                                            Arg("ignore-unavailable", "bool", optional=True),
                                            Arg("vcpu", "int", optional=True)])
def trace_event_set_state(ctx: Any, args: dict) -> None:
    matches = _matches(ctx, args["name"])
    if not matches:
        raise GenericError("No trace events found")
    unavailable = [n for n, s in matches if s == "unavailable"]
    if unavailable and not args.get("ignore-unavailable", False) and not _is_pattern(args["name"]):
        raise GenericError(f"cannot set dynamic tracing state for \"{unavailable[0]}\"")
    ctx.trace.set_state(args["name"], args["enable"])
