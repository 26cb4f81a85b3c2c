"""The interactive shell (prompt_toolkit) and the non-TTY script mode.

Why a ``ShellBackend``: the same prompt, completion, toolbar and script reader serve the
local monitor (``LocalBackend``: HMP lines run in-process) and a remote nvshell
(``nvshell.remote.RemoteBackend``: lines go through QMP ``human-monitor-command``).

Output ordering: results are written synchronously to the real stdout before the next
prompt; only asynchronous output (events, trace lines printed by other code) goes through
``patch_stdout`` so it appears above the prompt without garbling it.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TextIO

from nvshell.monitor.hmp import HMPResult, execute_line, qmp

PROMPT = "(nvshell) "
HISTORY_ENV = "NVSHELL_HISTORY"


class ShellBackend(Protocol):
    """What the shell needs from a monitor, local or remote."""

    async def execute(self, line: str) -> HMPResult:
        """Run one HMP line; failures come back as ``ok=False`` with an ``Error:`` line."""

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        """Run one QMP command (completion data, toolbar state); may raise."""

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(event)`` on the loop for each QMP event; returns unsubscribe."""


class LocalBackend:
    """The monitor of this process: HMP and QMP through ``Registry.execute`` with ``ctx``."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx

    async def execute(self, line: str) -> HMPResult:
        return await execute_line(line, self.ctx)

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        return await qmp(self.ctx, name, args)

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        events = getattr(self.ctx, "events", None)
        if events is None:
            return lambda: None
        return events.subscribe(callback)


# ---------------------------------------------------------------------------------------
# Script mode


async def run_script(ctx: Any, stream: TextIO, *, keep_going: bool = False,
                     out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run HMP lines from ``stream`` (stdin not a TTY) with the local monitor.

    Returns 0 if every command succeeded, else 1; stops at the first failure unless
    ``keep_going`` (the status stays 1 either way so a CI script notices).  ``quit`` ends
    the script early.  Blank lines and ``#`` comments are skipped."""
    return await script_loop(LocalBackend(ctx), stream, keep_going=keep_going, out=out, err=err)


async def script_loop(backend: ShellBackend, stream: TextIO, *, keep_going: bool = False,
                      out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``run_script`` for any backend.  Lines are read in a worker thread so the monitor's
    loop (device sockets, QMP clients) keeps running while stdin blocks."""
    out = out or sys.stdout
    err = err or sys.stderr
    status = 0
    lines = LineReader(stream)
    while True:
        line = await lines.readline()
        if not line:
            break
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        result = await backend.execute(line)
        (out if result.ok else err).write(result.text)
        (out if result.ok else err).flush()
        if not result.ok:
            status = 1
            if not keep_going:
                break
        if result.quit:
            break
    return status


class LineReader:
    """Lines of a script stream, read without blocking the loop and abandoned on cancel.

    Why not ``run_in_executor(stream.readline)``: a worker blocked in ``readline`` on a pipe
    that never closes keeps ``asyncio.run`` from returning (it joins the default executor),
    so SIGTERM or QMP ``quit`` would hang until the writer closed the pipe; and a thread
    inside ``sys.stdin``'s buffered reader holds its lock at interpreter shutdown.  Pipes,
    terminals and sockets are therefore read with ``os.read`` on the raw descriptor in a
    daemon thread that holds no Python lock; regular files and in-memory streams never
    block, so they are read directly."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._queue: asyncio.Queue[str | None] | None = None
        self._fd: int | None = None
        try:
            fd = stream.fileno()
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self._fd = fd
        except (AttributeError, OSError, ValueError):  # StringIO and friends: no descriptor
            pass

    async def readline(self) -> str:
        """The next line with its newline, or ``""`` at end of input."""
        if self._fd is None:
            return self.stream.readline()
        if self._queue is None:
            self._queue = asyncio.Queue()
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._pump, args=(self._fd, loop, self._queue),
                             name="nvshell-stdin", daemon=True).start()
        line = await self._queue.get()
        if line is None:
            self._queue.put_nowait(None)  # stay at EOF for later calls
            return ""
        return line

    @staticmethod
    def _pump(fd: int, loop: asyncio.AbstractEventLoop, queue: "asyncio.Queue[str | None]") -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""

        def put(item: str | None) -> bool:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
                return True
            except RuntimeError:  # the loop is gone: nobody wants the rest
                return False

        while True:
            try:
                chunk = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            pending += decoder.decode(chunk, final=not chunk)
            while "\n" in pending:
                line, pending = pending.split("\n", 1)
                if not put(line + "\n"):
                    return
            if not chunk:
                if pending:
                    put(pending)
                put(None)
                return


# ---------------------------------------------------------------------------------------
# Interactive shell


def default_history_file() -> Path:
    """``$NVSHELL_HISTORY``, else ``$XDG_STATE_HOME/nvshell/history`` (``~/.local/state``)."""
    env = os.environ.get(HISTORY_ENV)
    if env:
        return Path(env)
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "nvshell" / "history"


def _history(path: Path | str | None) -> Any:
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    path = Path(path) if path else default_history_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
        return FileHistory(str(path))
    except OSError:  # read-only home, odd sandbox: history is a convenience, not a must
        return InMemoryHistory()


class Toolbar:
    """Live state for the bottom toolbar, refreshed by a background task once a second.

    Why a cache: prompt_toolkit calls the toolbar function on every redraw; it must not
    run commands.  One ``x-nvme-query-controllers`` per second is the whole cost."""

    def __init__(self, backend: ShellBackend, *, interval: float = 1.0) -> None:
        self.backend = backend
        self.interval = interval
        self.text = " nvshell"
        self._last: tuple[float, int] | None = None

    def __call__(self) -> str:
        return self.text

    async def refresh(self) -> None:
        try:
            ctrls = await self.backend.query("x-nvme-query-controllers", {})
            nss = await self.backend.query("x-nvme-query-namespaces", {})
        except Exception:
            return
        now = time.monotonic()
        total = sum(int(c.get("io-commands", 0)) for c in ctrls)
        iops = 0.0
        if self._last is not None and now > self._last[0]:
            iops = max(0, total - self._last[1]) / (now - self._last[0])
        self._last = (now, total)
        self.text = format_toolbar(ctrls, len(nss), iops)

    async def run(self, app_invalidate: Callable[[], None]) -> None:
        while True:
            await self.refresh()
            app_invalidate()
            await asyncio.sleep(self.interval)


def format_toolbar(ctrls: list[dict[str, Any]], namespaces: int, iops: float) -> str:
    """`` ctrl0: connected | ctrl1: waiting | 2 namespaces | 1520 IOPS``."""
    parts = [f"{c['id']}: {'connected' if c.get('connected') else 'waiting'}" for c in ctrls] or ["no controllers"]
    parts.append(f"{namespaces} namespace{'s' if namespaces != 1 else ''}")
    parts.append(f"{iops:.0f} IOPS")
    return " " + " | ".join(parts)


def format_event(event: dict[str, Any]) -> str:
    """One line per QMP event, shown above the prompt.

    Guest connects/disconnects and device removal read as sentences
    (``[event] ctrl0: guest connected (pid 4242)``) because they are what a user watches
    for; any other event shows its name and compact JSON data."""
    name = str(event.get("event"))
    data = event.get("data") or {}
    if name in ("X_NVME_CLIENT_CONNECTED", "X_NVME_CLIENT_DISCONNECTED") and isinstance(data, dict):
        who = data.get("device") or data.get("name") or "?"
        what = "connected" if name.endswith("_CONNECTED") and not name.endswith("DISCONNECTED") else "disconnected"
        details = [f"pid {data['pid']}"] if data.get("pid") else []
        if data.get("reason"):
            details.append(str(data["reason"]))
        return f"[event] {who}: guest {what}" + (f" ({', '.join(details)})" if details else "")
    if name == "DEVICE_DELETED" and isinstance(data, dict) and data.get("device"):
        return f"[event] {data['device']}: device deleted"
    return f"[event] {name}" + (f" {json.dumps(data, separators=(',', ':'))}" if data else "")


def make_session(backend: ShellBackend, *, history_file: Path | str | None = None,
                 input: Any = None, output: Any = None, toolbar: Toolbar | None = None) -> Any:
    """The ``PromptSession``: history, auto-suggest, completion, toolbar.

    ``input``/``output`` let tests drive it with ``create_pipe_input()``/``DummyOutput()``;
    ``NVSHELL_MENU_ROWS`` (default 6) sets ``reserve_space_for_menu`` (0 under pexpect)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.auto_suggest import AutoSuggestFromHistory

    from nvshell.completion import HMPCompleter

    rows = int(os.environ.get("NVSHELL_MENU_ROWS", "6"))
    return PromptSession(
        PROMPT,
        history=_history(history_file),
        auto_suggest=AutoSuggestFromHistory(),
        completer=HMPCompleter(backend.query),
        complete_while_typing=False,
        bottom_toolbar=toolbar,
        reserve_space_for_menu=rows,
        input=input,
        output=output,
    )


async def run_shell(ctx: Any, *, history_file: Path | str | None = None, interactive: bool = True,
                    input: Any = None, output: Any = None, out: TextIO | None = None) -> int:
    """The interactive shell on the local monitor; returns the exit status (0).

    Ends on ``quit``, Ctrl-D, or cancellation (the program's ``stop``).  With
    ``interactive=False`` it behaves like ``run_script`` on stdin."""
    if not interactive:
        return await run_script(ctx, sys.stdin, out=out)
    return await shell_loop(LocalBackend(ctx), history_file=history_file, input=input, output=output, out=out)


async def shell_loop(backend: ShellBackend, *, history_file: Path | str | None = None,
                     input: Any = None, output: Any = None, out: TextIO | None = None,
                     toolbar: bool = True) -> int:
    """The read-eval-print loop for any backend (local or remote)."""
    from prompt_toolkit.patch_stdout import patch_stdout

    from nvshell.iostat_view import live_interval, run_live_view

    result_out = out or sys.stdout  # captured before patch_stdout replaces sys.stdout
    bar = Toolbar(backend) if toolbar else None
    session = make_session(backend, history_file=history_file, input=input, output=output, toolbar=bar)
    loop = asyncio.get_running_loop()

    def on_event(event: dict[str, Any]) -> None:
        print(format_event(event), flush=True)  # through patch_stdout: above the prompt

    status = 0
    with patch_stdout(raw=True):
        unsubscribe = backend.subscribe(on_event)
        detach_trace = _attach_trace_view(backend)
        bar_task = loop.create_task(bar.run(lambda: session.app.invalidate())) if bar else None
        try:
            while True:
                try:
                    # With the program's SIGINT routing in place, prompt_toolkit must not
                    # install (and on return remove) a SIGINT handler of its own: that would
                    # drop ours.  The Ctrl-C key still cancels the line (it is a key in raw mode).
                    line = await session.prompt_async(handle_sigint=not _Sigint.routed)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                interval = live_interval(line)
                if interval is not None:  # `info iostat N`: a full-screen view until a key
                    result = HMPResult(await run_live_view(backend.execute, line, interval,
                                                           input=input, output=output))
                else:
                    result = await _execute_interruptible(backend, line, loop)
                if result.text:
                    result_out.write(result.text)
                    result_out.flush()
                if result.quit:  # `quit` (status 0), or a lost connection (its error line, status 1)
                    status = 0 if result.ok else 1
                    break
        finally:
            unsubscribe()
            detach_trace()
            if bar_task:
                bar_task.cancel()
    return status


def _attach_trace_view(backend: ShellBackend) -> Callable[[], None]:
    """Live trace lines above the prompt for what ``trace-event`` enables in this shell
    (local monitor only; see ``monitor.hmp_tracing``).  Returns the detach function."""
    ctx = getattr(backend, "ctx", None)
    if ctx is None or getattr(ctx, "extra", None) is None:
        return lambda: None
    from nvshell.monitor.hmp_tracing import attach_shell_trace

    return attach_shell_trace(ctx, lambda text: print(text, flush=True))  # patch_stdout: above the prompt


class _Sigint:
    """Where SIGINT goes while the program runs.

    Why one process-wide handler: asyncio keeps a single handler per signal, so if the shell
    installed its own around each command, removing it afterwards would drop the program's
    (SIGINT would then kill the process with a traceback and leave its sockets behind).
    ``route_sigint`` installs the program's handler once: it cancels the command the shell
    is running, if any, and otherwise stops the program cleanly."""

    routed: bool = False
    running: "asyncio.Future[Any] | None" = None


def route_sigint(loop: asyncio.AbstractEventLoop, fallback: Callable[[], None]) -> bool:
    """Install the program's SIGINT handler on ``loop``: cancel the running shell command,
    else call ``fallback()``.  Returns False where signals cannot be handled (not the main
    thread)."""

    def on_sigint() -> None:
        task = _Sigint.running
        if task is not None and not task.done():
            task.cancel()
        else:
            fallback()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (RuntimeError, ValueError, NotImplementedError):
        return False
    _Sigint.routed = True
    return True


def unroute_sigint(loop: asyncio.AbstractEventLoop) -> None:
    """Undo ``route_sigint`` (the default SIGINT behaviour comes back)."""
    if _Sigint.routed:
        _Sigint.routed = False
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (RuntimeError, ValueError, NotImplementedError):
            pass


async def _execute_interruptible(backend: ShellBackend, line: str, loop: asyncio.AbstractEventLoop) -> HMPResult:
    """Run a line; Ctrl-C while it runs cancels it (one error line) instead of killing the program."""
    task = asyncio.ensure_future(backend.execute(line))
    installed = False
    _Sigint.running = task
    if not _Sigint.routed:  # remote shell, tests: no program handler, install our own for the command
        try:
            loop.add_signal_handler(signal.SIGINT, task.cancel)
            installed = True
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals
            pass
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        return HMPResult("Error: interrupted\n", False)
    finally:
        _Sigint.running = None
        if installed:
            loop.remove_signal_handler(signal.SIGINT)
