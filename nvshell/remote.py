"""``nvshell --connect ADDRESS``: the shell against a running nvshell, over QMP.

Why QMP and not a private protocol: the remote side already serves QMP; HMP lines travel as
``human-monitor-command`` (so a command behaves exactly as it does locally) and the
completer's data comes from ordinary QMP queries (``qom-list``, ``qom-list-types``, ...).
Works against QEMU too, minus the ``x-nvme-*`` parts.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from nvshell.monitor.errors import QMPError
from nvshell.monitor.hmp import COMMANDS, HMPError, HMPResult, split_word


def parse_address(address: str) -> str | tuple[str, int]:
    """``unix:PATH`` (or a bare path) -> path; ``tcp:HOST:PORT`` -> (host, port).

    Options after a comma (``,server=on``) are ignored so a ``-qmp`` value can be reused."""
    spec = address.split(",", 1)[0]
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise ValueError(f"missing socket path in '{address}'")
        return path
    if spec.startswith("tcp:"):
        host, sep, port = spec[4:].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected tcp:HOST:PORT, not '{address}'")
        return (host.strip("[]") or "localhost", int(port))
    if "/" in spec or spec.endswith(".sock"):
        return spec
    raise ValueError(f"expected unix:PATH or tcp:HOST:PORT, not '{address}'")


class RemoteBackend:
    """A ``ShellBackend`` over a connected ``qemu.qmp.QMPClient``."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        from qemu.qmp import ExecuteError

        try:
            return await self.client.execute(name, args or None)
        except ExecuteError as exc:
            err = exc.error.error
            raise QMPError(err.class_, err.desc) from None

    async def execute(self, line: str) -> HMPResult:
        """Send the line as ``human-monitor-command``; ``quit`` only ends this shell
        (stopping the remote nvshell is what QMP ``quit`` is for)."""
        try:
            name, _ = split_word(line)
        except HMPError as exc:
            return HMPResult(f"Error: {exc}\n", False)
        if not name or name.startswith("#"):
            return HMPResult("")
        cmd = COMMANDS.lookup(name)
        if cmd is not None and cmd.name == "quit":
            return HMPResult("", True, True)
        try:
            text = await self.query("human-monitor-command", {"command-line": line})
        except QMPError as exc:
            return HMPResult(f"Error: {exc.desc}\n", False)
        except Exception as exc:
            if not self.connected():  # the remote nvshell went away: say so once and end the shell
                return HMPResult("Error: connection to the nvshell monitor lost\n", False, True)
            return HMPResult(f"Error: {type(exc).__name__}: {exc}\n", False)
        text = str(text).replace("\r\n", "\n")
        # HMP over QMP has no status; a failed command's whole output is one Error line.
        ok = not text.startswith("Error: ")
        return HMPResult(text, ok)

    def connected(self) -> bool:
        """Whether the QMP connection is still up (``QMPClient.runstate`` is ``RUNNING``)."""
        try:
            from qemu.qmp import Runstate

            return bool(self.client.runstate == Runstate.RUNNING)
        except Exception:
            return False

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Forward the server's events (QMPClient's default listener) to ``callback``."""
        from qemu.qmp import EventListener

        listener = EventListener()
        self.client.register_listener(listener)

        async def pump() -> None:
            async for event in listener:
                callback(dict(event))

        task = asyncio.ensure_future(pump())

        def unsubscribe() -> None:
            task.cancel()
            try:
                self.client.remove_listener(listener)
            except Exception:
                pass
        return unsubscribe


async def connect(address: str, *, name: str = "nvshell") -> Any:
    """A negotiated ``QMPClient`` for ``address``."""
    from qemu.qmp import QMPClient

    client = QMPClient(name)
    await client.connect(parse_address(address))
    return client


async def run_remote(address: str, *, history_file: Path | str | None = None, interactive: bool | None = None,
                     stream: TextIO | None = None, keep_going: bool = False,
                     input: Any = None, output: Any = None, out: TextIO | None = None) -> int:
    """Connect and run the shell (stdin a TTY) or the script reader (otherwise).

    Returns the exit status: 1 when the connection fails or a script command fails."""
    from nvshell.monitor.loader import load
    from nvshell.shell import route_sigint, script_loop, shell_loop, unroute_sigint

    load()  # the HMP tables (help, completion, command lookup) are the same as the server's

    # qemu.qmp logs connection failures at ERROR on stderr, which would repeat our own error
    # line and, mid-session, garble the prompt: keep it quiet unless -v asked for logs.
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    try:
        client = await connect(address)
    except Exception as exc:
        print(f"nvshell: error: cannot connect to {address}: {exc}", file=sys.stderr)
        return 1
    backend = RemoteBackend(client)
    if interactive is None:
        interactive = stream is None and sys.stdin.isatty()
    # SIGINT cancels a running command, else ends this shell cleanly (status 0), as locally.
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        if me is not None:
            me.cancel()

    routed = route_sigint(loop, on_interrupt) if me is not None else False
    # SIGTERM/SIGHUP end the shell the same way, so prompt_toolkit restores the terminal.
    stoppers: list[signal.Signals] = []
    if routed:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                loop.add_signal_handler(sig, on_interrupt)
                stoppers.append(sig)
            except (RuntimeError, ValueError, NotImplementedError):
                pass
    try:
        if interactive:
            return await shell_loop(backend, history_file=history_file, input=input, output=output, out=out)
        return await script_loop(backend, stream or sys.stdin, keep_going=keep_going, out=out)
    except asyncio.CancelledError:
        if not interrupted or me is None:
            raise
        me.uncancel()
        return 0
    finally:
        if routed:
            unroute_sigint(loop)
        for sig in stoppers:
            loop.remove_signal_handler(sig)
        try:
            await client.disconnect()
        except Exception:
            pass
