"""What every monitor command receives as ``ctx``.

Why one object: QMP sessions, the HMP layer and the shell all run the same commands
through ``Registry.execute(name, args, ctx)``; the context is where those commands find
the machine, the event bus, the trace control and the program's shutdown hook, and
where tests inject fakes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from nvshell.monitor.events import EventBus
from nvshell.monitor.registry import Registry, default_registry


def _default_trace() -> Any:
    """The process's trace points (``device.trace.TRACE``) when tracing is built in."""
    try:
        from nvshell.device.trace import TRACE
    except Exception:
        return None
    return TRACE


def _nvshell_version() -> tuple[int, int, int]:
    try:
        from importlib.metadata import version
        parts = [int(p) for p in version("nvshell").split(".")[:3] if p.isdigit()]
    except Exception:
        parts = []
    parts = (parts + [0, 1, 0][len(parts):])[:3] if parts else [0, 1, 0]
    return (parts[0], parts[1], parts[2])


@dataclass
class MonitorContext:
    """Shared state of the monitors.

    ``machine``: the ``device.machine.Machine`` (or a test fake with the same API).
    ``request_shutdown``: called (on the loop) after ``quit`` has been answered.
    ``events``: the ``EventBus``; the machine's events are forwarded to it.
    ``trace``: ``get_state(glob) -> {name: bool}`` and ``set_state(glob, enable)``
    (``monitor.commands_trace.TraceControl``; default ``device.trace.TRACE``), or None.
    ``registry``: the command table (the process-wide one with every ``commands_*`` module).
    """

    machine: Any = None
    request_shutdown: Optional[Callable[[], None]] = None
    events: EventBus = field(default_factory=EventBus)
    trace: Any = field(default_factory=_default_trace)
    registry: Registry = field(default_factory=default_registry)
    version: tuple[int, int, int] = field(default_factory=_nvshell_version)
    package: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.package:
            self.package = "nvshell %d.%d.%d" % self.version
        try:
            self.events.attach_loop(asyncio.get_running_loop())
        except RuntimeError:
            pass
        self.events.connect_machine(self.machine)

    def version_info(self) -> dict:
        """QEMU's ``VersionInfo``: the greeting's and ``query-version``'s payload."""
        major, minor, micro = self.version
        return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": self.package}

    def shutdown(self) -> None:
        """Ask the program to exit (no-op when nothing is wired, e.g. in tests)."""
        if self.request_shutdown is not None:
            self.request_shutdown()
