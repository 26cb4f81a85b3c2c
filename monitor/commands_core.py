"""Core QMP commands: negotiation, introspection, status, quit, human-monitor-command.

Shapes follow QEMU's ``qapi/*.json`` so that ``QMPClient``, ``qmp-shell`` and qemu's
introspection scripts work unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nvshell.monitor.errors import ALREADY_NEGOTIATED, CommandNotFound
from nvshell.monitor.registry import Arg, Enum, Struct, qmp_command, qmp_event

qmp_event("SHUTDOWN", [Arg("guest", "bool", doc="false: the host asked (quit)"), Arg("reason", "str")],
          "nvshell is about to exit")

QMP_CAPABILITY = Enum("QMPCapability", ("oob",))
VERSION_TRIPLE = Struct("VersionTriple", (Arg("major", "int"), Arg("minor", "int"), Arg("micro", "int")))
VERSION_INFO = Struct("VersionInfo", (Arg("qemu", VERSION_TRIPLE), Arg("package", "str")))
COMMAND_INFO = Struct("CommandInfo", (Arg("name", "str"),))
RUN_STATE = Enum("RunState", ("running", "shutdown"))
STATUS_INFO = Struct("StatusInfo", (Arg("running", "bool"), Arg("status", RUN_STATE)))



@qmp_command("qmp_capabilities", args=[Arg("enable", [QMP_CAPABILITY], optional=True)])
def qmp_capabilities(ctx: Any, args: dict) -> None:
    """Leave negotiation mode; sessions intercept it, so reaching here means it is too late."""
    raise CommandNotFound(ALREADY_NEGOTIATED)


@qmp_command("query-version", returns=VERSION_INFO)
def query_version(ctx: Any, args: dict) -> dict:
    """The same version object as the greeting."""
    return ctx.version_info()


@qmp_command("query-commands", returns=[COMMAND_INFO])
def query_commands(ctx: Any, args: dict) -> list[dict]:
    """Every command name (qmp-shell builds its completion from this)."""
    return [{"name": name} for name in ctx.registry.names()]


@qmp_command("query-qmp-schema", returns=["any"])
def query_qmp_schema(ctx: Any, args: dict) -> list[dict]:
    """SchemaInfo list generated from the registry that validates arguments."""
    return ctx.registry.schema()


@qmp_command("query-status", returns=STATUS_INFO)
def query_status(ctx: Any, args: dict) -> dict:
    """The device always runs while the monitor is up."""
    return {"running": True, "status": "running"}


@qmp_command("quit")
def quit_(ctx: Any, args: dict) -> None:
    """Reply, then emit SHUTDOWN, then ask the program to exit.

    The reply is written as soon as this handler returns; the event and the shutdown
    request are both queued on the loop in that order, so clients see reply, event, EOF.
    """
    ctx.events.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        ctx.shutdown()
    else:
        loop.call_soon(ctx.shutdown)


