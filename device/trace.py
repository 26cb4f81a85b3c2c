"""Trace points: named, typed events on the data path, switched on and off by the user.

Why this shape: the data path (vfio-user messages, doorbells, command dispatch) runs
on the controller's IOThread millions of times; a trace point that is off must cost
no more than one attribute load.  So every trace point is a module-level object with
a plain ``enabled`` bool, and call sites read::

    if NVME_CMD_SUBMIT.enabled:
        NVME_CMD_SUBMIT.emit(ctrl=..., qid=..., ...)

All trace points are declared once, as data, at the bottom of this module (one list:
name, typed fields, one-line doc), so ``trace-event`` completion, ``info trace-events``
and the recorded-file decoder all see the same catalogue.

State semantics (as QEMU's): a trace point's ``state`` is the user's switch, changed by
``-trace PATTERN``, ``trace-event NAME on|off`` and QMP ``trace-event-set-state``, and
reported unchanged by ``trace-event-get-state``.  Records only flow while at least one
sink is registered: ``enabled`` is ``state and <registry has a sink>``, recomputed
whenever a state or the sink set changes.  With no sink, an enabled-by-the-user trace
point is therefore still skipped at the call site and ``emit`` is a no-op.

Sinks are called on the emitting thread (an IOThread) with the record dict.  They must
be cheap (queue the record, format a line) and never raise into the data path: the
registry catches their exceptions, counts them in ``sink_errors`` and logs the first
one of each sink.
"""

from __future__ import annotations

import bisect
import fnmatch
import logging
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from nvshell.device.errors import NvshellError

log = logging.getLogger(__name__)

Record = dict[str, Any]


class TraceError(NvshellError):
    """Unknown trace event / pattern, or a trace file that cannot be opened."""


class Hex(int):
    """Field type marker: an int shown in hex by ``format_record`` (addresses, registers)."""


#: Field types a trace point may declare; ``Hex`` fields hold plain ints.
FIELD_TYPES: tuple[type, ...] = (int, Hex, str, float, bool)


class Sink(Protocol):
    """Anything called with each record; must be cheap and should not raise."""

    def __call__(self, record: Record) -> None: ...


class TracePoint:
    """One named event with typed fields.

    ``enabled`` is a plain attribute (not a property) on purpose: it is the only thing a
    disabled call site touches.
    """

    __slots__ = ("name", "fields", "doc", "state", "enabled", "_registry")

    def __init__(self, registry: "TraceRegistry", name: str, fields: dict[str, type], doc: str):
        self.name = name
        self.fields = fields
        self.doc = doc
        #: The user's switch (what trace-event-get-state reports).
        self.state = False
        #: ``state`` and the registry has at least one sink: the data-path guard.
        self.enabled = False
        self._registry = registry

    def emit(self, **fields: Any) -> None:
        """Build the record and hand it to every sink (no-op unless ``enabled``)."""
        if not self.enabled:
            return
        registry = self._registry
        if registry.strict:
            self.check(fields)
        record = {"name": self.name, "ts": time.time_ns(), **fields}
        registry.dispatch(record)

    def check(self, fields: dict[str, Any]) -> None:
        """Raise ``TypeError`` unless ``fields`` match the declaration (strict mode/tests)."""
        missing = self.fields.keys() - fields.keys()
        extra = fields.keys() - self.fields.keys()
        if missing or extra:
            raise TypeError(f"{self.name}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}")
        for key, typ in self.fields.items():
            value = fields[key]
            want: tuple[type, ...] = (int,) if typ is Hex else (typ,)
            if typ is float:
                want = (int, float)
            if not isinstance(value, want) or (typ in (int, Hex) and isinstance(value, bool)):
                raise TypeError(f"{self.name}: field {key!r} expects {typ.__name__}, got {value!r}")

    def describe(self) -> str:
        """``name(field:type, ...)  doc`` for ``info trace-events`` and ``--help`` text."""
        args = ", ".join(f"{k}:{t.__name__.lower()}" for k, t in self.fields.items())
        return f"{self.name}({args})  {self.doc}"

    def __repr__(self) -> str:
        return f"<TracePoint {self.name} state={self.state} enabled={self.enabled}>"


class TraceRegistry:
    """All trace points, their states, and the sinks records are delivered to."""

    def __init__(self) -> None:
        self._points: dict[str, TracePoint] = {}
        self._sinks: tuple[Sink, ...] = ()
        self._lock = threading.Lock()
        self._failed_sinks: set[int] = set()
        #: Exceptions raised by sinks (caught; the data path never sees them).
        self.sink_errors = 0
        #: Validate emitted fields against declarations (tests turn this on).
        self.strict = False

    # -- declaration ----------------------------------------------------------------
    def point(self, name: str, *, doc: str, **fields: type) -> TracePoint:
        """Declare a trace point (import time, once per name)."""
        if name in self._points:
            raise ValueError(f"trace point {name!r} declared twice")
        for key, typ in fields.items():
            if typ not in FIELD_TYPES:
                raise ValueError(f"{name}.{key}: unsupported field type {typ!r}")
            if key in ("name", "ts"):
                raise ValueError(f"{name}: field name {key!r} is reserved")
        tp = TracePoint(self, name, dict(fields), doc)
        self._points[name] = tp
        return tp

    # -- queries and state ----------------------------------------------------------
    def list(self, glob: str = "*") -> list[TracePoint]:
        """Trace points whose name matches the fnmatch ``glob``, sorted by name."""
        return [self._points[n] for n in sorted(self._points) if fnmatch.fnmatchcase(n, glob)]

    def get(self, name: str) -> TracePoint:
        try:
            return self._points[name]
        except KeyError:
            raise TraceError(f"Unknown trace event '{name}'") from None

    def names(self) -> list[str]:
        return sorted(self._points)

    def _match(self, glob: str) -> list[TracePoint]:
        points = self.list(glob)
        if not points:
            raise TraceError(f"No trace events found matching '{glob}'")
        return points

    def set_state(self, glob: str, enabled: bool) -> list[str]:
        """Switch every trace point matching ``glob``; return their names.

        Raises ``TraceError`` when nothing matches (a typo should not pass silently).
        """
        with self._lock:
            points = self._match(glob)
            for tp in points:
                tp.state = bool(enabled)
            self._refresh()
        return [tp.name for tp in points]

    def get_state(self, glob: str = "*") -> dict[str, bool]:
        """``{name: state}`` (the user's switch) for trace points matching ``glob``."""
        return {tp.name: tp.state for tp in self._match(glob)}

    # -- sinks ----------------------------------------------------------------------
    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    def add_sink(self, sink: Sink) -> None:
        with self._lock:
            if sink not in self._sinks:
                self._sinks = self._sinks + (sink,)
            self._refresh()

    def remove_sink(self, sink: Sink) -> None:
        """Remove ``sink`` (no error if it was not registered)."""
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)
            self._failed_sinks.discard(id(sink))
            self._refresh()

    def _refresh(self) -> None:
        # Copy-on-write sink tuple + recomputed flags: emitters never take the lock.
        has_sink = bool(self._sinks)
        for tp in self._points.values():
            tp.enabled = tp.state and has_sink

    def dispatch(self, record: Record) -> None:
        """Deliver ``record`` to every sink, catching and counting their errors."""
        for sink in self._sinks:
            try:
                sink(record)
            except Exception:  # noqa: BLE001 - a sink must never break the data path
                self.sink_errors += 1
                if id(sink) not in self._failed_sinks:
                    self._failed_sinks.add(id(sink))
                    log.exception("trace sink %r failed (further errors only counted)", sink)


# ---------------------------------------------------------------------------------------
# Sinks and helpers for the shell
# ---------------------------------------------------------------------------------------

class FilteredSink:
    """Pass on only records matching every given filter.

    A filter names a field (``ctrl="ctrl0"``, ``qid=1``, ``opcode="read"``); a record
    matches only if it *has* that field with that value, so ``qid=1`` also hides
    controller-wide events such as ``nvme_ctrl_enable``.  ``names`` is an fnmatch glob
    on the trace point name.  ``trace_dropped`` reports always pass.
    """

    def __init__(self, inner: Sink, *, names: str | None = None, **fields: Any):
        self.inner = inner
        self.names = names
        self.fields = {k: v for k, v in fields.items() if v is not None}

    def matches(self, record: Record) -> bool:
        if record.get("name") == DROPPED:  # drop reports of an inner limiter always pass
            return True
        if self.names is not None and not fnmatch.fnmatchcase(record.get("name", ""), self.names):
            return False
        for key, value in self.fields.items():
            if key not in record or record[key] != value:
                return False
        return True

    def __call__(self, record: Record) -> None:
        if self.matches(record):
            self.inner(record)


class LineSink:
    """Format each record with ``format_record`` and pass the line to ``write``.

    The shell's live view is ``FilteredSink(RateLimitedSink(LineSink(print_line), n), ...)``
    (filter first, so only matching lines count against the rate);
    ``write`` runs on the emitting thread, so it should hand the line over (e.g. to the
    shell's event loop) rather than block on a terminal.
    """

    def __init__(self, write: Callable[[str], None], registry: "TraceRegistry | None" = None):
        self.write = write
        self.registry = registry

    def __call__(self, record: Record) -> None:
        self.write(format_record(record, self.registry))


#: Name of the synthetic record a RateLimitedSink emits for dropped records.
DROPPED = "trace_dropped"


class RateLimitedSink:
    """Forward at most ``max_per_second`` records per one-second window; count the rest.

    Why: an interactive shell printing every I/O of a running fio would drown the
    prompt.  When a window that dropped records is over, the next record (or a call to
    ``flush()``, which the shell makes on a timer) first delivers a synthetic
    ``{"name": "trace_dropped", "ts": ..., "dropped": N}`` record, formatted as
    "... N trace lines dropped".
    """

    def __init__(self, inner: Sink, max_per_second: int,
                 clock: Callable[[], float] = time.monotonic):
        if max_per_second < 1:
            raise ValueError("max_per_second must be at least 1")
        self.inner = inner
        self.max_per_second = max_per_second
        self._clock = clock
        self._lock = threading.Lock()
        self._window = clock()
        self._count = 0
        self._pending_drops = 0
        #: Total records dropped since creation.
        self.dropped = 0

    def _roll(self, now: float) -> int:
        """Start a new window if the current one ended; return drops to report."""
        if now - self._window < 1.0:
            return 0
        self._window = now
        self._count = 0
        drops, self._pending_drops = self._pending_drops, 0
        return drops

    def __call__(self, record: Record) -> None:
        with self._lock:
            drops = self._roll(self._clock())
            forward = self._count < self.max_per_second
            if forward:
                self._count += 1
            else:
                self._pending_drops += 1
                self.dropped += 1
        if drops:
            self.inner({"name": DROPPED, "ts": time.time_ns(), "dropped": drops})
        if forward:
            self.inner(record)

    def flush(self) -> None:
        """Report drops of a finished window even if no further record arrives."""
        with self._lock:
            drops = self._roll(self._clock())
        if drops:
            self.inner({"name": DROPPED, "ts": time.time_ns(), "dropped": drops})


def _format_value(key: str, value: Any, typ: type | None) -> str:
    if typ is Hex and isinstance(value, int):
        return f"{key}={value:#x}"
    if key == "lat_us" and isinstance(value, (int, float)):
        return f"lat={value:.0f}us" if value >= 10 else f"lat={value:.1f}us"
    if isinstance(value, str):
        return f"{key}={value!r}" if (not value or " " in value or "=" in value) else f"{key}={value}"
    if isinstance(value, float):
        return f"{key}={value:g}"
    return f"{key}={value}"


def format_ts(ts_ns: int) -> str:
    """Local wall-clock time with microseconds ('12:34:56.123456')."""
    sec, ns = divmod(int(ts_ns), 1_000_000_000)
    return time.strftime("%H:%M:%S", time.localtime(sec)) + f".{ns // 1000:06d}"


def format_record(record: Record, registry: "TraceRegistry | None" = None) -> str:
    """One human-readable line: ``name HH:MM:SS.uuuuuu field=value ...``.

    Fields come in declaration order (unknown extra fields after them), ``Hex`` fields
    in hex, latency as ``lat=12us``.  Used by the shell and by ``nvtrace``.
    """
    name = str(record.get("name", "?"))
    if name == DROPPED:
        return f"... {record.get('dropped', 0)} trace lines dropped"
    registry = registry or TRACE
    tp = registry._points.get(name)
    types = tp.fields if tp is not None else {}
    keys = [k for k in types if k in record]
    keys += [k for k in record if k not in types and k not in ("name", "ts")]
    parts = [name]
    if "ts" in record:
        parts.append(format_ts(record["ts"]))
    parts += [_format_value(k, record[k], types.get(k)) for k in keys]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------
# Latency statistics (``info latency``)
# ---------------------------------------------------------------------------------------

def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty list)."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * pct // 100))  # ceil(n * pct / 100)
    return sorted_values[min(int(rank), len(sorted_values)) - 1]


#: Buckets of every log2 latency histogram (``info latency``, the per-SQ counters): the last one
#: also holds everything slower (2**38 us and up).
LATENCY_BUCKETS = 40


def bucket_of(lat_us: float) -> int:
    """log2 bucket: 0 holds [0, 1) us, bucket i >= 1 holds [2**(i-1), 2**i) us."""
    return 0 if lat_us < 1 else int(lat_us).bit_length()


def bucket_label(i: int) -> str:
    if i == 0:
        return "<1us"
    lo, hi = 1 << (i - 1), 1 << i
    return f"{_short_us(lo)}-{_short_us(hi)}"


def _short_us(us: int) -> str:
    if us >= 1_000_000 and us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us >= 1000 and us % 1000 == 0:
        return f"{us // 1000}ms"
    if us >= 1024 * 1024:
        return f"{us / 1_000_000:.1f}s"
    if us >= 1024:
        return f"{us / 1000:.1f}ms"
    return f"{us}us"


@dataclass
class OpLatency:
    """Latency of one (controller, opcode): count, log2 histogram, sampled percentiles."""

    count: int = 0
    errors: int = 0
    max_us: float = 0.0
    total_us: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * LATENCY_BUCKETS)
    #: Reservoir sample (exact while count <= RESERVOIR), kept sorted for percentiles.
    samples: list[float] = field(default_factory=list)

    def percentiles(self) -> dict[str, float]:
        s = self.samples
        return {"p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99),
                "max": self.max_us}


class LatencyStats:
    """Sink collecting ``nvme_cmd_complete`` latencies per controller and opcode.

    Percentiles come from a bounded reservoir sample (exact for the first
    ``reservoir`` commands) so memory stays fixed however long the guest runs.
    """

    def __init__(self, reservoir: int = 4096, seed: int = 0):
        self.reservoir = reservoir
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.ops: dict[tuple[str, str], OpLatency] = {}

    def __call__(self, record: Record) -> None:
        if record.get("name") != "nvme_cmd_complete":
            return
        lat = float(record.get("lat_us", 0.0))
        key = (str(record.get("ctrl", "")), str(record.get("opcode", "?")))
        with self._lock:
            op = self.ops.get(key)
            if op is None:
                op = self.ops[key] = OpLatency()
            op.count += 1
            if record.get("status", "success") != "success":
                op.errors += 1
            op.total_us += lat
            op.max_us = max(op.max_us, lat)
            b = min(bucket_of(lat), len(op.buckets) - 1)
            op.buckets[b] += 1
            if len(op.samples) < self.reservoir:
                bisect.insort(op.samples, lat)
            else:
                j = self._rng.randrange(op.count)
                if j < self.reservoir:
                    del op.samples[self._rng.randrange(len(op.samples))]
                    bisect.insort(op.samples, lat)

    feed = __call__

    def reset(self, ctrl: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self.ops if ctrl is None or k[0] == ctrl]:
                del self.ops[key]

    def snapshot(self, ctrl: str | None = None) -> dict[tuple[str, str], OpLatency]:
        """Copies of the per-(ctrl, opcode) stats, for rendering without the lock."""
        with self._lock:
            return {k: OpLatency(v.count, v.errors, v.max_us, v.total_us, list(v.buckets), list(v.samples))
                    for k, v in sorted(self.ops.items()) if ctrl is None or k[0] == ctrl}

    def summary(self, ctrl: str | None = None) -> list[dict[str, Any]]:
        """Plain data (for a QMP query): one dict per (ctrl, opcode)."""
        out = []
        for (c, opname), op in self.snapshot(ctrl).items():
            out.append({"ctrl": c, "opcode": opname, "count": op.count, "errors": op.errors,
                        "mean_us": op.total_us / op.count if op.count else 0.0, **op.percentiles()})
        return out


def _us(v: float) -> str:
    if v >= 10000:
        return f"{v / 1000:.1f}ms"
    return f"{v:.0f}us" if v >= 10 else f"{v:.1f}us"


def render_histogram(stats: LatencyStats, width: int = 80, ctrl: str | None = None) -> str:
    """Terminal bar chart per (ctrl, opcode) for the shell's ``info latency [ctrl]``."""
    snap = stats.snapshot(ctrl)
    if not snap:
        return "no completed commands recorded" + (f" for {ctrl}" if ctrl else "")
    lines: list[str] = []
    for (c, opname), op in snap.items():
        p = op.percentiles()
        lines.append(f"{c} {opname}: n={op.count} errors={op.errors} p50={_us(p['p50'])} "
                     f"p90={_us(p['p90'])} p99={_us(p['p99'])} max={_us(p['max'])}")
        used = [i for i, n in enumerate(op.buckets) if n]
        if not used:
            continue
        labels = {i: bucket_label(i) for i in range(used[0], used[-1] + 1)}
        lw = max(len(s) for s in labels.values())
        cw = len(str(max(op.buckets)))
        bar_w = max(1, width - lw - cw - 6)
        top = max(op.buckets)
        for i, label in labels.items():
            n = op.buckets[i]
            bar = "#" * (round(n * bar_w / top) if n else 0)
            if n and not bar:
                bar = "#"
            lines.append(f"  {label:>{lw}} |{bar:<{bar_w}}| {n:>{cw}}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The registry and every trace point (one declaration list)
# ---------------------------------------------------------------------------------------

TRACE = TraceRegistry()
#: NVSHELL_TRACE_STRICT=1 checks every emitted record against its declaration (tests, CI).
TRACE.strict = os.environ.get("NVSHELL_TRACE_STRICT") == "1"
_p = TRACE.point

# vfio-user transport
VFU_CLIENT_CONNECT = _p("vfu_client_connect", ctrl=str, doc="a vfio-user client connected")
VFU_CLIENT_DISCONNECT = _p("vfu_client_disconnect", ctrl=str, reason=str, doc="the vfio-user client went away")
VFU_MSG_IN = _p("vfu_msg_in", ctrl=str, cmd=str, msg_id=int, size=int,
                doc="vfio-user request received (command name, total size incl. header)")
VFU_MSG_OUT = _p("vfu_msg_out", ctrl=str, cmd=str, msg_id=int, size=int, error=int,
                 doc="vfio-user reply sent (errno 0 on success)")
VFU_DMA_MAP = _p("vfu_dma_map", ctrl=str, addr=Hex, size=Hex, offset=Hex, prot=str,
                 doc="guest memory region mapped (prot 'rw', 'r', ...)")
VFU_DMA_UNMAP = _p("vfu_dma_unmap", ctrl=str, addr=Hex, size=Hex, doc="guest memory region unmapped")
VFU_CONFIG_READ = _p("vfu_config_read", ctrl=str, offset=Hex, size=int, value=Hex,
                     doc="PCI config space read")
VFU_CONFIG_WRITE = _p("vfu_config_write", ctrl=str, offset=Hex, size=int, value=Hex,
                      doc="PCI config space write")

# NVMe controller registers and doorbells
NVME_REG_READ = _p("nvme_reg_read", ctrl=str, reg=str, offset=Hex, size=int, value=Hex,
                   doc="BAR0 controller register read (reg is e.g. 'CSTS')")
NVME_REG_WRITE = _p("nvme_reg_write", ctrl=str, reg=str, offset=Hex, size=int, value=Hex,
                    doc="BAR0 controller register write")
NVME_DOORBELL = _p("nvme_doorbell", ctrl=str, qid=int, kind=str, value=int,
                   doc="doorbell write: kind 'sq' (tail) or 'cq' (head)")

# Commands
NVME_CMD_SUBMIT = _p("nvme_cmd_submit", ctrl=str, qid=int, cid=int, opcode=str, nsid=int,
                     slba=int, nlb=int, cdw10=Hex, cdw11=Hex,
                     doc="command fetched from an SQ (slba/nlb for I/O, 0 otherwise; cdw10/11 for admin)")
NVME_CMD_COMPLETE = _p("nvme_cmd_complete", ctrl=str, qid=int, cid=int, opcode=str, status=str,
                       lat_us=float, result=Hex,
                       doc="CQE posted: status name, latency fetch-to-CQE in microseconds, DW0")
NVME_METADATA_SGL = _p("nvme_metadata_sgl", ctrl=str, qid=int, cid=int, nsid=int, length=int, pieces=int,
                       doc="a command's separate metadata mapped through a metadata SGL (PSDT 10b): "
                           "bytes and guest ranges (bit buckets included)")
NVME_IRQ = _p("nvme_irq", ctrl=str, vector=int, doc="MSI-X interrupt raised")

# Asynchronous events
NVME_AEN_QUEUED = _p("nvme_aen_queued", ctrl=str, aen_type=str, info=int, log_page=Hex,
                     doc="asynchronous event queued")
NVME_AEN_COMPLETE = _p("nvme_aen_complete", ctrl=str, cid=int, aen_type=str, info=int, log_page=Hex,
                       doc="asynchronous event delivered by completing an AER")

# Queues
NVME_CREATE_SQ = _p("nvme_create_sq", ctrl=str, qid=int, cqid=int, size=int, prio=int, doc="I/O SQ created")
NVME_CREATE_CQ = _p("nvme_create_cq", ctrl=str, qid=int, size=int, vector=int, ien=bool, doc="I/O CQ created")
NVME_DELETE_SQ = _p("nvme_delete_sq", ctrl=str, qid=int, doc="I/O SQ deleted")
NVME_DELETE_CQ = _p("nvme_delete_cq", ctrl=str, qid=int, doc="I/O CQ deleted")

# Controller state
NVME_CTRL_ENABLE = _p("nvme_ctrl_enable", ctrl=str, cc=Hex, doc="CC.EN 0->1: controller ready")
NVME_CTRL_DISABLE = _p("nvme_ctrl_disable", ctrl=str, reason=str,
                       doc="controller disabled ('cc.en', 'shutdown-normal', 'shutdown-abrupt')")
NVME_CTRL_RESET = _p("nvme_ctrl_reset", ctrl=str, kind=str, doc="controller reset ('cc.en', 'nssr', 'flr', 'device')")
NVME_CTRL_FATAL = _p("nvme_ctrl_fatal", ctrl=str, reason=str, doc="controller fatal status (CSTS.CFS) set")

# Namespaces
NVME_NS_ATTACH = _p("nvme_ns_attach", ctrl=str, nsid=int, doc="namespace attached to the controller")
NVME_NS_DETACH = _p("nvme_ns_detach", ctrl=str, nsid=int, doc="namespace detached from the controller")
NVME_ZONE_STATE = _p("nvme_zone_state", nsid=int, zone=int, zslba=int, old=str, new=str, why=str,
                     doc="a zone changed state (why: write, open, close, finish, reset, offline, "
                         "set-extension, implicit-close, fault)")

# Fault injection
NVME_FAULT_HIT = _p("nvme_fault_hit", ctrl=str, rule=str, action=str, qid=int, cid=int, opcode=str,
                    doc="a fault rule hit a command (device/faults.py)")

del _p

__all__ = [
    "TRACE", "TraceRegistry", "TracePoint", "TraceError", "Hex", "Sink", "Record",
    "FilteredSink", "RateLimitedSink", "LineSink", "DROPPED", "format_record", "format_ts",
    "LatencyStats", "OpLatency", "render_histogram", "percentile", "bucket_of", "bucket_label", "LATENCY_BUCKETS",
]
