"""Human tracing commands and the shell's live trace view.

Commands: ``trace-file [on PATH|on|off|flush]``, ``trace-filter [ctrl=..,qid=..,opcode=..,rate=N|off]``,
``info latency [ctrl]``; ``trace-event NAME on|off`` (from ``monitor.hmp_commands``) is
wrapped so that, typed in the interactive shell, it also starts/stops printing those
trace points' records above the prompt.

Why the shell prints only what the shell enabled: trace states are process-wide, and a
file recording started with ``-trace nvme_cmd_*,file=...`` (or by a QMP client) must not
flood the terminal.  The view keeps the set of trace point names enabled from this shell
session and is registered as a sink only while that set is non-empty.

Why a rate limit and a timer: the sink runs on the controller's IOThread; it only
filters, counts against ``rate`` lines per second (``RateLimitedSink``) and queues the
formatted line.  A timer on the shell's loop prints the queued lines (through
``patch_stdout``, so above the prompt) every ``interval`` seconds and flushes the
limiter, which reports "... N trace lines dropped" once a second while the guest
outruns the terminal.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import re
import shutil
import threading
from typing import Any, Callable, Optional

from nvshell.device.trace import LineSink, RateLimitedSink, Record
from nvshell.monitor.commands_tracing import FILTER_FIELDS, Tracing, parse_filter_value, record_matches, tracing_of
from nvshell.monitor.hmp import HMPError, hmp_command, info_command, qmp
from nvshell.device.keyval import parse_bool

#: Default lines per second the shell prints before counting drops.
DEFAULT_RATE = 25
#: Seconds between two prints of queued lines (and limiter flushes).
DEFAULT_INTERVAL = 0.1
#: Lines queued between two prints beyond which the oldest are dropped (bounded memory).
MAX_QUEUED_LINES = 10_000


class ShellTraceView:
    """The interactive shell's sink: names enabled in this shell, a field filter, a rate."""

    def __init__(self, tracing: Tracing, write: Callable[[str], None], loop: asyncio.AbstractEventLoop, *,
                 rate: int = DEFAULT_RATE, interval: float = DEFAULT_INTERVAL) -> None:
        self.tracing = tracing
        self.write = write
        self.loop = loop
        self.interval = interval
        #: Trace point names switched on from this shell (``trace-event NAME on``).
        self.names: frozenset[str] = frozenset()
        #: ``{"ctrl": .., "qid": .., "opcode": ..}`` set by ``trace-filter``.
        self.filters: dict[str, Any] = {}
        self._lines: collections.deque[str] = collections.deque(maxlen=MAX_QUEUED_LINES)
        self._limiter = RateLimitedSink(LineSink(self._lines.append, tracing.registry), rate)
        self._lock = threading.Lock()
        self._registered = False
        self._timer: Optional[asyncio.TimerHandle] = None
        self._closed = False

    @property
    def rate(self) -> int:
        return self._limiter.max_per_second

    def set_rate(self, rate: int) -> None:
        if rate < 1:
            raise HMPError("trace-filter: rate must be at least 1 line per second")
        self._limiter = RateLimitedSink(LineSink(self._lines.append, self.tracing.registry), rate)

    @property
    def dropped(self) -> int:
        return self._limiter.dropped

    # -- the sink (emitting thread) -----------------------------------------------------
    def __call__(self, record: Record) -> None:
        if record["name"] not in self.names:
            return
        if self.filters and not record_matches(record, self.filters):
            return
        self._limiter(record)

    # -- names enabled from the shell --------------------------------------------------
    def enable(self, names: list[str]) -> None:
        self.names = self.names | frozenset(names)
        self._update()

    def disable(self, names: list[str]) -> None:
        self.names = self.names - frozenset(names)
        self._update()

    def _update(self) -> None:
        want = bool(self.names) and not self._closed
        if want and not self._registered:
            self.tracing.registry.add_sink(self)
            self._registered = True
            self._schedule()
        elif not want and self._registered:
            self.tracing.registry.remove_sink(self)
            self._registered = False
            self.flush()  # what was queued before 'off' is still shown

    # -- printing (shell loop) ----------------------------------------------------------
    def _schedule(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.flush()
        if self._registered:
            self._schedule()

    def flush(self) -> None:
        """Report finished windows' drops, then print every queued line at once."""
        self._limiter.flush()
        lines = []
        while self._lines:
            lines.append(self._lines.popleft())
        if lines:
            self.write("\n".join(lines))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._update()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.tracing.shell_views.discard(self)

    def describe(self) -> str:
        filt = ",".join(f"{k}={v}" for k, v in self.filters.items()) or "none"
        shown = ", ".join(sorted(self.names)) or "none (enable with 'trace-event NAME on')"
        return f"live trace: {shown}\nfilter: {filt}\nrate: {self.rate} lines/s ({self.dropped} dropped so far)"


#: The shell view of the shell session running the current command (None elsewhere:
#: script mode, QMP ``human-monitor-command``).
CURRENT_SHELL_VIEW: contextvars.ContextVar[Optional[ShellTraceView]] = contextvars.ContextVar(
    "nvshell_shell_trace_view", default=None)


def attach_shell_trace(ctx: Any, write: Callable[[str], None], *, rate: int = DEFAULT_RATE,
                       interval: float = DEFAULT_INTERVAL) -> Callable[[], None]:
    """Give the calling shell task a live trace view; returns the function that removes it.

    Call it from the shell's task (the context variable is inherited by the tasks that
    run its command lines, and by nothing else)."""
    from nvshell.monitor.commands_tracing import has_tracing

    owned = not has_tracing(ctx)  # the program installs it first; a test's bare context may not
    tracing = tracing_of(ctx)
    view = ShellTraceView(tracing, write, asyncio.get_running_loop(), rate=rate, interval=interval)
    tracing.shell_views.add(view)
    token = CURRENT_SHELL_VIEW.set(view)

    def detach() -> None:
        view.close()
        if owned:
            tracing.close()
        try:
            CURRENT_SHELL_VIEW.reset(token)
        except ValueError:  # detached from another context: the view is closed anyway
            pass
    return detach


def _view_or_error(command: str) -> ShellTraceView:
    view = CURRENT_SHELL_VIEW.get()
    if view is None:
        raise HMPError(f"{command}: only available in the interactive shell (it filters the live trace view)")
    return view


# ---------------------------------------------------------------------------------------
# trace-event: also drive the shell's live view


@hmp_command("trace-event", "name option", params="name on|off",
             help="changes status of a specific trace event (in the shell: also print its records above the prompt)",
             complete={"name": "trace-event", "option": "on-off"})
async def hmp_trace_event(ctx: Any, args: dict[str, Any]) -> str:
    enable = parse_bool(args["option"], "option")
    await qmp(ctx, "trace-event-set-state", {"name": args["name"], "enable": enable})
    view = CURRENT_SHELL_VIEW.get()
    if view is not None:
        names = [tp.name for tp in view.tracing.registry.list(args["name"])]
        (view.enable if enable else view.disable)(names)
    return ""


# ---------------------------------------------------------------------------------------
# trace-file, trace-filter


def _file_status_text(status: dict[str, Any]) -> str:
    if status.get("enabled"):
        return f"Trace file \"{status['path']}\" on ({status['written']} records written, {status['dropped']} dropped)"
    if "path" in status:
        return f"Trace file \"{status['path']}\" off"
    return "Trace file off"


@hmp_command("trace-file", "op? arg*?", params="[on [PATH]|off|flush]",
             help="record trace events to a msgpack file (decode with nvtrace); no argument: show state")
async def hmp_trace_file(ctx: Any, args: dict[str, Any]) -> str:
    op, arg = args["op"], args["arg"]
    if op is None:
        return _file_status_text(await qmp(ctx, "x-trace-file", {}))
    if op == "on":
        qargs: dict[str, Any] = {"enable": True}
        if arg:
            qargs["path"] = arg
        return _file_status_text(await qmp(ctx, "x-trace-file", qargs))
    if arg:
        raise HMPError(f"trace-file {op}: unexpected argument '{arg}'")
    if op == "off":
        return _file_status_text(await qmp(ctx, "x-trace-file", {"enable": False}))
    if op == "flush":
        return _file_status_text(await qmp(ctx, "x-trace-file", {"flush": True}))
    raise HMPError(f"trace-file: unknown operation '{op}' (expected on PATH, off or flush)")


def parse_filter_spec(text: str) -> dict[str, str]:
    """``ctrl=ctrl0,qid=1 opcode=read`` -> dict (commas or spaces separate items)."""
    out: dict[str, str] = {}
    for item in (i for i in re.split(r"[,\s]+", text.strip()) if i):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise HMPError(f"trace-filter: expected KEY=VALUE, got '{item}' "
                           f"(keys: {', '.join(FILTER_FIELDS)}, rate)")
        if key in out:
            raise HMPError(f"trace-filter: '{key}' given twice")
        out[key] = value
    return out


@hmp_command("trace-filter", "spec*?", params="[ctrl=ID,qid=N,opcode=NAME,rate=N|off]",
             help="filter the shell's live trace lines by controller/queue/opcode, set lines per second; "
                  "off clears; no argument: show")
async def hmp_trace_filter(ctx: Any, args: dict[str, Any]) -> str:
    view = _view_or_error("trace-filter")
    spec = args["spec"]
    if spec is None:
        return view.describe()
    if spec.strip() == "off":
        view.filters = {}
        return ""
    items = parse_filter_spec(spec)
    rate = items.pop("rate", None)
    filters: dict[str, Any] = {}
    for key, value in items.items():
        try:
            filters[key] = parse_filter_value(key, value)
        except Exception as exc:
            raise HMPError(f"trace-filter: {getattr(exc, 'desc', exc)}") from None
    new_rate = None
    if rate is not None:
        try:
            new_rate = int(rate)
        except ValueError:
            raise HMPError(f"trace-filter: rate expects an integer, got '{rate}'") from None
        if new_rate < 1:
            raise HMPError("trace-filter: rate must be at least 1 line per second")
    if new_rate is not None:
        view.set_rate(new_rate)
    if filters or rate is None:
        view.filters = filters
    return ""


# ---------------------------------------------------------------------------------------
# info latency


def _us(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:.1f}ms"
    return f"{v:.0f}us" if v >= 10 else f"{v:.1f}us"


def render_latency(rows: list[dict[str, Any]], width: int = 80) -> str:
    """``x-query-latency`` data as a bar chart per (controller, opcode)."""
    lines: list[str] = []
    for row in rows:
        lines.append(f"{row['ctrl']} {row['opcode']}: n={row['count']} errors={row['errors']} "
                     f"mean={_us(row['mean-us'])} p50={_us(row['p50-us'])} p90={_us(row['p90-us'])} "
                     f"p99={_us(row['p99-us'])} max={_us(row['max-us'])}")
        hist = row.get("histogram") or []
        if not hist:
            continue
        lw = max(len(b["bucket"]) for b in hist)
        top = max(b["count"] for b in hist)
        cw = len(str(top))
        bar_w = max(1, width - lw - cw - 6)
        for b in hist:
            n = b["count"]
            bar = "#" * max(1 if n else 0, round(n * bar_w / top))
            lines.append(f"  {b['bucket']:>{lw}} |{bar:<{bar_w}}| {n:>{cw}}")
    return "\n".join(lines)


@info_command("latency", "device?", help="show per-opcode command latency histograms (from nvme_cmd_complete)",
              complete={"device": "device-id"})
async def info_latency(ctx: Any, args: dict[str, Any]) -> str:
    qargs = {"device": args["device"]} if args["device"] else {}
    rows = await qmp(ctx, "x-query-latency", qargs)
    if rows:
        width = min(100, max(40, shutil.get_terminal_size((80, 24)).columns))
        return render_latency(rows, width)
    where = f" for {args['device']}" if args["device"] else ""
    states = await qmp(ctx, "trace-event-get-state", {"name": "nvme_cmd_complete"})
    if not any(s.get("state") == "enabled" for s in states):
        return (f"no completed commands recorded{where}: the nvme_cmd_complete trace event is off "
                f"(trace-event nvme_cmd_complete on)")
    return f"no completed commands recorded{where} yet"
