"""Trace record delivery: the trace file, per-client QMP subscriptions, latency statistics.

Why one ``Tracing`` object per monitor context: the trace points and their states are
process-wide (``device.trace.TRACE``), but *where records go* is monitor state: the
recording file (``-trace file=``, ``trace-file``, ``x-trace-file``), the QMP clients that
asked for records (``x-trace-subscribe``), the shell's live view (``monitor.hmp_tracing``)
and the per-opcode latency statistics (``info latency``, ``x-query-latency``).  All of
them are sinks of the registry; this module owns their life cycle so that a client that
disconnects, a file that is switched off or the program's exit cleans up exactly its own
sink.

Latency statistics are a sink installed with the ``Tracing`` object: in the nvshell
program a trace point therefore emits exactly when its state is on (``-trace
nvme_cmd_complete`` alone is enough for ``info latency``), and a disabled trace point
still costs one attribute check.

QMP commands (experimental, ``x-``):

* ``x-trace-subscribe {names?: [glob], ctrl?, qid?, opcode?, enable?}``: from now on this
  client (and only it) receives each matching record as an ``X_TRACE_RECORD`` event whose
  ``data`` is the record (``name``, ``ts`` in ns, the trace point's fields).  Records are
  queued on the emitting IOThread and delivered in batches on the monitor loop; when the
  client falls ``max-pending`` records behind, the rest are counted and reported in an
  ``X_TRACE_DROPPED {dropped}`` event.  A second subscribe replaces the first.
* ``x-trace-unsubscribe``: stop; returns ``{delivered, dropped}``.
* ``x-trace-file {enable?, path?, flush?}``: start/stop recording to a msgpack file.
* ``x-query-latency {device?, reset?}``: per (controller, opcode) latency summary and
  log2 histogram from ``nvme_cmd_complete`` records.
"""

from __future__ import annotations

import asyncio
import atexit
import fnmatch
import logging
import threading
import weakref
from typing import Any, Callable, Optional

from nvshell.device.trace import TRACE, LatencyStats, Record, TraceError, TraceRegistry, bucket_label
from nvshell.monitor.errors import DeviceNotFound, GenericError
from nvshell.monitor.events import make_event
from nvshell.monitor.qmp.session import CURRENT_SESSION
from nvshell.monitor.registry import Arg, qmp_command, qmp_event

log = logging.getLogger("nvshell.monitor.tracing")

#: Event carrying one trace record to a subscribed QMP client.
RECORD_EVENT = "X_TRACE_RECORD"
#: Event telling a subscribed client how many records it lost (it did not keep up).
DROPPED_EVENT = "X_TRACE_DROPPED"
qmp_event(RECORD_EVENT, [Arg("name", "str", doc="trace point"), Arg("ts", "int", doc="wall-clock time, ns")],
          "one trace record for an x-trace-subscribe client; the trace point's own fields follow")
qmp_event(DROPPED_EVENT, [Arg("dropped", "int", doc="records lost since the last report")],
          "a subscribed client did not keep up")

#: Records a subscriber may have queued before further ones are dropped.
DEFAULT_MAX_PENDING = 100_000

#: Record fields a subscription / the shell filter may select on, with their types.
FILTER_FIELDS: dict[str, type] = {"ctrl": str, "qid": int, "opcode": str}


def record_matches(record: Record, filters: dict[str, Any]) -> bool:
    """True if ``record`` has every filtered field with that value (as ``FilteredSink``)."""
    for key, value in filters.items():
        if record.get(key, _MISSING) != value:
            return False
    return True


_MISSING = object()


class Subscription:
    """One QMP client's trace sink: filter on the IOThread, deliver on the monitor loop.

    Why batched: a guest running fio emits tens of thousands of records per second; one
    ``call_soon_threadsafe`` per record would wake the loop for each.  The sink appends
    to a list and schedules one drain when the list goes from empty to non-empty.
    """

    def __init__(self, session: Any, loop: asyncio.AbstractEventLoop, *, names: Optional[list[str]],
                 filters: dict[str, Any], max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.session = session
        self.loop = loop
        self.names = list(names) if names else None
        self.filters = dict(filters)
        self.max_pending = max_pending
        self._name_ok: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._pending: list[Record] = []
        self._scheduled = False
        self._reported_drops = 0
        #: Records handed to the session / lost because the client fell behind.
        self.delivered = 0
        self.dropped = 0

    def _wants_name(self, name: str) -> bool:
        ok = self._name_ok.get(name)
        if ok is None:
            ok = self.names is None or any(fnmatch.fnmatchcase(name, g) for g in self.names)
            self._name_ok[name] = ok
        return ok

    def __call__(self, record: Record) -> None:  # on the emitting thread
        if not self._wants_name(record["name"]) or (self.filters and not record_matches(record, self.filters)):
            return
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append(record)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the program is exiting
            pass

    def _drain(self) -> None:  # on the monitor loop
        with self._lock:
            batch, self._pending = self._pending, []
            self._scheduled = False
            drops = self.dropped - self._reported_drops
            self._reported_drops = self.dropped
        if drops:
            self.session.deliver_event(make_event(DROPPED_EVENT, {"dropped": drops}))
        for record in batch:
            self.session.deliver_event(make_event(RECORD_EVENT, record, record.get("ts", 0) / 1e9))
        self.delivered += len(batch)


class Tracing:
    """Where trace records go, for one monitor context (see the module docstring)."""

    def __init__(self, registry: TraceRegistry = TRACE) -> None:
        self.registry = registry
        self.latency = LatencyStats()
        self.file: Any = None  # TraceFileWriter while recording
        self.file_path: Optional[str] = None
        self.subscriptions: dict[int, Subscription] = {}
        #: Live views of interactive shells (``monitor.hmp_tracing.ShellTraceView``).
        self.shell_views: set[Any] = set()
        self._lock = threading.Lock()
        self._closed = False
        registry.add_sink(self.latency)
        # Records still queued for the file must reach it when the program exits
        # (SIGTERM and quit both return normally from main, so atexit runs).
        self._atexit = _weak_close(self)
        atexit.register(self._atexit)

    # -- the trace file ---------------------------------------------------------------
    def file_on(self, path: Optional[str] = None) -> None:
        """Record to ``path`` (truncated), or resume the previous file (appending)."""
        from nvshell.device.trace_file import TraceFileWriter

        if path is None:
            if self.file is not None:
                return
            if self.file_path is None:
                raise GenericError("No trace file name given: use 'trace-file on PATH'")
            writer = TraceFileWriter(self.file_path, append=True)
        else:
            if not path:
                raise GenericError("Trace file name must not be empty")
            writer = TraceFileWriter(path)  # TraceError if it cannot be opened: nothing changed
        self.file_off()
        self.file, self.file_path = writer, writer.path
        self.registry.add_sink(writer)

    def file_off(self) -> None:
        """Stop recording; everything queued so far is written before this returns."""
        writer, self.file = self.file, None
        if writer is not None:
            self.registry.remove_sink(writer)
            writer.close()

    def file_flush(self) -> None:
        if self.file is not None and not self.file.flush():
            raise GenericError(f"Trace file '{self.file_path}': flush timed out")

    def file_status(self) -> dict[str, Any]:
        w = self.file
        status: dict[str, Any] = {"enabled": w is not None}
        if self.file_path is not None:
            status["path"] = self.file_path
        if w is not None:
            status.update(written=w.written, dropped=w.dropped)
        return status

    # -- QMP subscriptions ------------------------------------------------------------
    def subscribe(self, session: Any, loop: asyncio.AbstractEventLoop, names: Optional[list[str]],
                  filters: dict[str, Any], max_pending: int = DEFAULT_MAX_PENDING) -> Subscription:
        sub = Subscription(session, loop, names=names, filters=filters, max_pending=max_pending)
        old = self.subscriptions.get(id(session))
        self.subscriptions[id(session)] = sub
        self.registry.add_sink(sub)
        if old is not None:
            self.registry.remove_sink(old)
        else:
            session.add_close_callback(self._session_closed)
        return sub

    def unsubscribe(self, session: Any) -> Optional[Subscription]:
        sub = self.subscriptions.pop(id(session), None)
        if sub is not None:
            self.registry.remove_sink(sub)
            remove = getattr(session, "remove_close_callback", None)
            if remove is not None:
                remove(self._session_closed)
        return sub

    def _session_closed(self, session: Any) -> None:
        sub = self.subscriptions.pop(id(session), None)
        if sub is not None:
            self.registry.remove_sink(sub)

    # -- teardown ---------------------------------------------------------------------
    def close(self) -> None:
        """Remove every sink of this object and close the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.file_off()
        for sub in list(self.subscriptions.values()):
            self.registry.remove_sink(sub)
        self.subscriptions.clear()
        self.registry.remove_sink(self.latency)
        for view in list(self.shell_views):
            view.close()
        try:
            atexit.unregister(self._atexit)
        except Exception:
            pass


def _weak_close(tracing: Tracing) -> Callable[[], None]:
    ref = weakref.ref(tracing)

    def close() -> None:
        t = ref()
        if t is not None:
            t.close()
    return close


_TRACING_KEY = "tracing"
_create_lock = threading.Lock()


def has_tracing(ctx: Any) -> bool:
    """True if the context's ``Tracing`` exists (and is not closed)."""
    tracing = (getattr(ctx, "extra", None) or {}).get(_TRACING_KEY)
    return tracing is not None and not tracing._closed


def tracing_of(ctx: Any) -> Tracing:
    """The context's ``Tracing`` (created, and its latency sink installed, on first use)."""
    extra = getattr(ctx, "extra", None)
    if extra is None:
        raise GenericError("tracing is not available in this monitor")
    with _create_lock:
        tracing = extra.get(_TRACING_KEY)
        if tracing is None or tracing._closed:
            registry = getattr(ctx, "trace", None)
            if not isinstance(registry, TraceRegistry):
                registry = TRACE
            tracing = extra[_TRACING_KEY] = Tracing(registry)
    return tracing


def parse_filter_value(key: str, value: Any) -> Any:
    """Check one filter field (``ctrl``/``qid``/``opcode``); strings from HMP are converted."""
    typ = FILTER_FIELDS.get(key)
    if typ is None:
        raise GenericError(f"Unknown trace filter '{key}' (expected one of: {', '.join(FILTER_FIELDS)})")
    if typ is int:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                raise GenericError(f"Trace filter '{key}' expects an integer, got '{value}'") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise GenericError(f"Trace filter '{key}' expects a non-negative integer")
        return value
    if not isinstance(value, str) or not value:
        raise GenericError(f"Trace filter '{key}' expects a non-empty string")
    return value


# ---------------------------------------------------------------------------------------
# QMP commands


@qmp_command("x-trace-subscribe", args=[
    Arg("names", ["str"], optional=True, doc="trace point globs (default: every enabled trace point)"),
    Arg("ctrl", "str", optional=True, doc="only records of this controller"),
    Arg("qid", "int", optional=True, doc="only records of this queue"),
    Arg("opcode", "str", optional=True, doc="only records of this opcode ('read', 'identify', ...)"),
    Arg("enable", "bool", optional=True, doc="also switch on the trace points matching 'names'"),
    Arg("max-pending", "int", optional=True, doc="records queued for this client before drops"),
], returns="any")
def x_trace_subscribe(ctx: Any, args: dict) -> dict:
    """Deliver trace records to the calling QMP client as X_TRACE_RECORD events.

    Only the calling client receives them; states are not changed unless ``enable``."""
    session = CURRENT_SESSION.get()
    if session is None:
        raise GenericError("x-trace-subscribe delivers events to a QMP client; run it over QMP")
    names = args.get("names")
    if names is not None and not names:
        raise GenericError("Parameter 'names' must list at least one trace event pattern")
    tracing = tracing_of(ctx)
    matched: set[str] = set()
    for glob in names or ():
        found = tracing.registry.list(glob)
        if not found:
            raise GenericError(f"No trace events found matching '{glob}'")
        matched.update(tp.name for tp in found)
    filters = {k: parse_filter_value(k, args[k]) for k in FILTER_FIELDS if k in args}
    max_pending = args.get("max-pending", DEFAULT_MAX_PENDING)
    if max_pending < 1:
        raise GenericError("Parameter 'max-pending' must be at least 1")
    if args.get("enable"):
        if names is None:
            raise GenericError("Parameter 'enable' needs 'names' (which trace events to switch on)")
        for glob in names:
            tracing.registry.set_state(glob, True)
    tracing.subscribe(session, asyncio.get_running_loop(), names, filters, max_pending)
    return {"events": sorted(matched) if names is not None else tracing.registry.names(),
            "enabled": sorted(n for n, on in tracing.registry.get_state("*").items()
                              if on and (names is None or n in matched))}


@qmp_command("x-trace-unsubscribe", returns="any")
def x_trace_unsubscribe(ctx: Any, args: dict) -> dict:
    """Stop this client's X_TRACE_RECORD events; how many it got and lost."""
    session = CURRENT_SESSION.get()
    if session is None:
        raise GenericError("x-trace-unsubscribe applies to a QMP client; run it over QMP")
    sub = tracing_of(ctx).unsubscribe(session)
    if sub is None:
        raise GenericError("This client has no trace subscription")
    sub._drain()  # what was queued still reaches the client (right after the reply)
    return {"delivered": sub.delivered, "dropped": sub.dropped}


@qmp_command("x-trace-file", args=[
    Arg("enable", "bool", optional=True, doc="start (true) or stop (false) recording"),
    Arg("path", "str", optional=True, doc="file to record to (truncated); default: resume the last one"),
    Arg("flush", "bool", optional=True, doc="write what is queued now"),
], returns="any")
def x_trace_file(ctx: Any, args: dict) -> dict:
    """Record trace records as msgpack maps to a file; returns the recording state."""
    tracing = tracing_of(ctx)
    enable = args.get("enable")
    if "path" in args and enable is not True:
        raise GenericError("Parameter 'path' needs 'enable': true")
    try:
        if enable is True:
            tracing.file_on(args.get("path"))
        elif enable is False:
            tracing.file_off()
        if args.get("flush"):
            tracing.file_flush()
    except TraceError as exc:
        raise GenericError(str(exc)) from exc
    return tracing.file_status()


def _check_device(ctx: Any, device: str) -> None:
    machine = getattr(ctx, "machine", None)
    if machine is None or not hasattr(machine, "devices"):
        return
    if not any(getattr(d, "id", None) == device for d in machine.devices()):
        raise DeviceNotFound(f"Device '{device}' not found")


@qmp_command("x-query-latency", args=[
    Arg("device", "str", optional=True, doc="only this controller"),
    Arg("reset", "bool", optional=True, doc="clear the statistics after reading them"),
], returns=["any"])
def x_query_latency(ctx: Any, args: dict) -> list[dict]:
    """Per (controller, opcode): count, errors, mean/p50/p90/p99/max in us and the log2 histogram.

    Fed by nvme_cmd_complete records: empty until that trace point is enabled."""
    device = args.get("device")
    if device is not None:
        _check_device(ctx, device)
    stats = tracing_of(ctx).latency
    out = []
    for (ctrl, opcode), op in stats.snapshot(device).items():
        p = op.percentiles()
        used = [i for i, n in enumerate(op.buckets) if n]
        hist = ([{"bucket": bucket_label(i), "lo-us": 0 if i == 0 else 1 << (i - 1), "count": op.buckets[i]}
                 for i in range(used[0], used[-1] + 1)] if used else [])
        out.append({"ctrl": ctrl, "opcode": opcode, "count": op.count, "errors": op.errors,
                    "mean-us": op.total_us / op.count if op.count else 0.0,
                    "p50-us": p["p50"], "p90-us": p["p90"], "p99-us": p["p99"], "max-us": p["max"],
                    "histogram": hist})
    if args.get("reset"):
        stats.reset(device)
    return out
