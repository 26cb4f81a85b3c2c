"""The human monitor (HMP): a declarative table of line commands built on QMP commands.

Why a table: the shell, script mode, QMP ``human-monitor-command`` and the completer all
need the same knowledge (names, arguments, help, what each argument completes to).
Declaring it once keeps them consistent, and lets other modules (tracing, faults) add
commands with ``@hmp_command`` / ``@info_command`` without touching this file.

Why on top of QMP: every handler calls ``Registry.execute`` so a command behaves the same
whether typed in the local shell or sent by a remote client, and human formatting
(``monitor/format.py``) stays separate from the data the QMP commands return.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator

from nvshell.device.errors import NvshellError
from nvshell.monitor.errors import MonitorError, QMPError
from nvshell.monitor.registry import Arg, qmp_command


Handler = Callable[[Any, dict[str, Any]], Awaitable[str]]


class HMPError(MonitorError):
    """A bad command line: reported as one ``Error: ...`` line, like a failed QMP command."""


@dataclass(frozen=True)
class Param:
    """One argument of a command.

    ``kind``: ``word`` (one whitespace-separated, optionally quoted token), ``rest`` (the rest
    of the line verbatim, e.g. ``type,id=x,prop=v``) or ``flag`` (``-b``; value is a bool).
    ``complete`` names what the completer offers for it (see ``nvshell/completion.py``).
    """

    name: str
    kind: str = "word"
    optional: bool = False
    complete: str | None = None


def parse_args_spec(spec: str, complete: dict[str, str] | None = None) -> tuple[Param, ...]:
    """Parse the compact argument spec: ``name`` required word, ``name?`` optional word,
    ``name*`` rest of line (``name*?`` optional), ``-b`` a flag.  Flags come first."""
    complete = complete or {}
    params: list[Param] = []
    for tok in spec.split():
        if tok.startswith("-"):
            params.append(Param(tok[1:], "flag", True, None))
            continue
        optional = tok.endswith("?")
        tok = tok.rstrip("?")
        kind = "rest" if tok.endswith("*") else "word"
        name = tok.rstrip("*")
        params.append(Param(name, kind, optional, complete.get(name)))
    return tuple(params)


@dataclass(frozen=True)
class HMPCommand:
    """A command: ``help`` prints ``name params -- help``; ``handler(ctx, args) -> text``."""

    name: str
    args: tuple[Param, ...]
    params: str
    help: str
    handler: Handler
    aliases: tuple[str, ...] = ()
    #: ``await usage(ctx)``: more usage lines for ``help NAME``, generated from declarations
    #: the monitor serves (types and their properties), so they never go stale.
    usage: Callable[[Any], Awaitable[str]] | None = None

    def help_line(self, prefix: str = "") -> str:
        head = prefix + "|".join((self.name,) + self.aliases)
        return f"{head} {self.params} -- {self.help}" if self.params else f"{head} -- {self.help}"


@dataclass
class CommandTable:
    """Ordered command table; ``info`` sub-commands live in a second instance."""

    commands: dict[str, HMPCommand] = field(default_factory=dict)
    _aliases: dict[str, str] = field(default_factory=dict)

    def add(self, cmd: HMPCommand) -> HMPCommand:
        self.commands[cmd.name] = cmd
        for alias in cmd.aliases:
            self._aliases[alias] = cmd.name
        return cmd

    def command(
        self,
        name: str,
        args: str = "",
        *,
        params: str | None = None,
        help: str,
        complete: dict[str, str] | None = None,
        aliases: tuple[str, ...] = (),
        usage: Callable[[Any], Awaitable[str]] | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering ``handler(ctx, args) -> str`` (async or plain)."""

        def deco(fn: Handler) -> Handler:
            spec = parse_args_spec(args, complete)
            self.add(HMPCommand(name, spec, default_params(spec) if params is None else params,
                                help, fn, aliases, usage))
            return fn

        return deco

    def lookup(self, name: str) -> HMPCommand | None:
        return self.commands.get(self._aliases.get(name, name))

    def names(self) -> list[str]:
        return list(self.commands) + list(self._aliases)

    def __iter__(self) -> Iterator[HMPCommand]:
        """In the loader's group order (then declaration order), whichever module was
        imported first: ``help`` reads the same in every process."""
        from nvshell.monitor.loader import HMP_GROUPS
        order = {f"nvshell.monitor.{g}": i for i, g in enumerate(HMP_GROUPS)}
        entries = list(self.commands.values())
        return iter(sorted(entries, key=lambda c: (order.get(getattr(c.handler, "__module__", ""), len(order)),
                                                   entries.index(c))))


def default_params(spec: tuple[Param, ...]) -> str:
    """``help`` text for an argument spec, QEMU style: optional parts in brackets."""
    out = []
    for p in spec:
        text = f"-{p.name}" if p.kind == "flag" else p.name + ("..." if p.kind == "rest" else "")
        out.append(f"[{text}]" if p.optional else text)
    return " ".join(out)


COMMANDS = CommandTable()
INFO = CommandTable()
hmp_command = COMMANDS.command
info_command = INFO.command


# ---------------------------------------------------------------------------------------
# Line parsing


def split_word(text: str) -> tuple[str, str]:
    """First token of ``text`` (double quotes group, backslash escapes inside them) and the rest."""
    text = text.lstrip()
    if not text:
        return "", ""
    if text[0] != '"':
        end = len(text)
        for i, ch in enumerate(text):
            if ch.isspace():
                end = i
                break
        return text[:end], text[end:].lstrip()
    out: list[str] = []
    i = 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), text[i + 1 :].lstrip()
        out.append(ch)
        i += 1
    raise HMPError("unterminated string literal")


def parse_line(table: CommandTable, line: str) -> tuple[HMPCommand, dict[str, Any]]:
    """Split a command line into its command and argument dict, or raise ``HMPError``."""
    name, rest = split_word(line)
    cmd = table.lookup(name)
    if cmd is None:
        raise HMPError(f"unknown command: '{name}'")
    return cmd, bind_args(cmd, rest)


def bind_args(cmd: HMPCommand, rest: str) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for p in cmd.args:
        if p.kind == "flag":
            args[p.name] = False
            word, after = split_word(rest)
            if word == "-" + p.name:
                args[p.name] = True
                rest = after
            continue
        if not rest:
            if not p.optional:
                raise HMPError(f"{cmd.name}: missing argument '{p.name}' (usage: {cmd.name} {cmd.params})")
            args[p.name] = None
            continue
        if p.kind == "rest":
            args[p.name], rest = rest.strip(), ""
        else:
            args[p.name], rest = split_word(rest)
    if rest:
        raise HMPError(f"{cmd.name}: too many arguments: '{rest}' (usage: {cmd.name} {cmd.params})")
    return args


# ---------------------------------------------------------------------------------------
# Execution


@dataclass(frozen=True)
class HMPResult:
    """What one line produced: ``text`` (newline-terminated lines, possibly empty),
    whether it succeeded, and whether it asked to quit (the caller decides what that means)."""

    text: str
    ok: bool = True
    quit: bool = False


class QuitRequest(Exception):
    """Raised by the ``quit`` handler: the shell exits, QMP callers run QMP ``quit``."""


def registry_of(ctx: Any) -> Any:
    """The QMP registry that runs commands for ``ctx``: ``ctx.registry`` when the wiring (or
    a test) provides one, else the process-wide registry with every ``commands_*`` loaded."""
    reg = getattr(ctx, "registry", None)
    if reg is not None:
        return reg
    from nvshell.monitor.registry import default_registry

    return default_registry()


async def qmp(ctx: Any, name: str, args: dict[str, Any] | None = None) -> Any:
    """Run one QMP command through the single entry point, ``Registry.execute``."""
    result = registry_of(ctx).execute(name, dict(args or {}), ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


def error_text(exc: BaseException) -> str:
    """One clear line for any failure; unexpected exceptions keep their type for debugging."""
    if isinstance(exc, NvshellError):
        return f"Error: {exc}"
    return f"Error: {type(exc).__name__}: {exc}" if str(exc) else f"Error: {type(exc).__name__}"


def _terminate(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


async def execute_line(line: str, ctx: Any, table: CommandTable | None = None) -> HMPResult:
    """Run one HMP line.  Never raises for command failures: they become an ``Error:`` line
    and ``ok=False`` so the caller (shell, script, QMP) can decide whether to stop."""
    table = table or COMMANDS
    line = line.strip()
    if not line or line.startswith("#"):
        return HMPResult("")
    try:
        cmd, args = parse_line(table, line)
        out = cmd.handler(ctx, args)
        if inspect.isawaitable(out):
            out = await out
        return HMPResult(_terminate(out or ""))
    except QuitRequest:
        return HMPResult("", True, True)
    except Exception as exc:  # every failure is one line; the monitor keeps running
        return HMPResult(error_text(exc) + "\n", False)


async def run_hmp(line: str, ctx: Any) -> str:
    """Entry point for QMP ``human-monitor-command``: the text a human would see (LF endings).

    ``quit`` here means what it means in QEMU: the QMP ``quit`` command runs."""
    result = await execute_line(line, ctx)
    if result.quit:
        await qmp(ctx, "quit")
    return result.text


def crlf(text: str) -> str:
    """HMP output as QEMU sends it: CRLF line endings (qmp-shell -H splits on them)."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


@qmp_command("human-monitor-command", args=[Arg("command-line", "str"), Arg("cpu-index", "int", optional=True)],
             returns="str")
async def human_monitor_command(ctx: Any, args: dict) -> str:
    """Run an HMP command line (QEMU's bridge from QMP to the human monitor). Declared
    here, in the HMP layer, so that no QMP command module imports HMP."""
    return crlf(await run_hmp(args["command-line"], ctx))
