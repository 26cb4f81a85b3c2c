"""I/O statistics over time: QMP ``x-nvme-query-iostat`` and HMP ``info iostat [interval]``.

Why a sampler: rates and "the last minute" need history, and both a local shell and a remote
one (``--connect``) must see the same numbers, so the history lives in the monitor, not in a
client.  Started by the first query, an asyncio task on the monitor loop takes one sample a
second (``SAMPLE_PERIOD``) and keeps ``HISTORY`` of them.  A sample reads, on each controller's
IOThread (the only thread allowed to read queue state), ``Controller.iostat_info()``: per SQ
``fetched`` commands, head/tail/size, held commands, its byte tallies and its log2 latency
histogram (no trace point needed), and the SMART byte and command counters.

Latency costs two clock reads per command, so commands are timed only while someone watches:
from a query (QMP or ``info iostat``, and so every refresh of the live view) until ``WATCH``
seconds after the last one. A query that starts the watch turns timing on at once and waits
for the next sample, so its p50/p99 come from timed commands; the rates never need it.

Numbers per controller: IOPS (read/write), MB/s (read/write, SMART), p50/p99 latency (histogram
buckets: an upper bound; the controller's histogram is the sum of its I/O queues'), IOPS per
second of the last minute.  Per queue: IOPS, MB/s (its share of the SMART bytes), occupancy
(entries waiting in the SQ plus commands held by the controller, of the queue's size), p50/p99
and its own last minute.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nvshell.device.trace import LATENCY_BUCKETS, bucket_label
from nvshell.monitor.errors import DeviceNotFound, GenericError
from nvshell.monitor.registry import Arg, qmp_command

#: Seconds between two samples, and how many samples are kept (the sparkline's minute).
SAMPLE_PERIOD = 1.0
HISTORY = 61
#: Commands are timed until this many seconds after the last query (the longest window).
WATCH = HISTORY * SAMPLE_PERIOD
_KEY = "iostat-sampler"
TYPE_CTRL = "x-nvme-ctrl"


@dataclass
class CtrlSample:
    """One controller at one instant (counters are cumulative)."""

    fetched: dict[int, int]
    occupancy: dict[int, tuple[int, int]]  # qid -> (entries in use, size)
    bytes_read: int
    bytes_written: int
    reads: int
    writes: int
    qbytes: dict[int, tuple[int, int]]  # qid -> (bytes read, bytes written)
    qlatency: dict[int, list[int]]  # qid -> log2 latency histogram (us)


@dataclass
class Sample:
    t: float
    ctrls: dict[str, CtrlSample] = field(default_factory=dict)


def _read_controller(model: Any, timing: bool) -> tuple[list[dict[str, Any]], int, int, int, int]:
    """On the controller's IOThread: its queues (with their tallies) and SMART counters, read
    together; command timing on while watched."""
    return model.iostat_info(timing)


class IostatSampler:
    """The monitor's sample history (one per monitor context)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.samples: deque[Sample] = deque(maxlen=HISTORY)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._new = asyncio.Event()
        #: Monotonic time until which commands are timed (``WATCH`` after the last query).
        self.watched_until = 0.0

    @property
    def watched(self) -> bool:
        return time.monotonic() < self.watched_until

    def start(self) -> None:
        self._stopped = False
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="iostat-sampler")

    def stop(self) -> None:
        """End the sampling task (nvshell is stopping: the IOThreads it reads are going away)."""
        self._stopped = True   # also ends a loop whose cancellation asyncio.wait_for swallowed (3.11)
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def sample(self) -> Sample:
        sample = Sample(time.monotonic())
        for d in self.ctx.machine.devices():
            if not d.is_a(TYPE_CTRL) or d.model is None or d.iothread is None:
                continue  # being created or removed
            try:
                # bounded like every wait on an IOThread: a stuck one costs its sample, not the sampler
                queues, br, bw, nr, nw = await d.iothread.call(_read_controller, d.model, self.watched)
            except Exception:  # noqa: BLE001 - removed between the listing and the read
                continue
            sqs = [q for q in queues if q["kind"] == "sq"]
            sample.ctrls[d.id] = CtrlSample(
                fetched={q["qid"]: q["fetched"] for q in sqs},
                occupancy={q["qid"]: ((q["tail"] - q["head"]) % q["size"] + q["outstanding"], q["size"])
                           for q in sqs},
                bytes_read=br, bytes_written=bw, reads=nr, writes=nw,
                qbytes={q["qid"]: (q["bytes_read"], q["bytes_written"]) for q in sqs},
                qlatency={q["qid"]: q["latency"] for q in sqs})
        return sample

    async def _arm(self) -> None:
        for d in self.ctx.machine.devices():
            if d.is_a(TYPE_CTRL) and d.model is not None and d.iothread is not None:
                try:
                    await d.iothread.call(d.model.time_commands, True)
                except Exception:  # noqa: BLE001 - removed meanwhile: nothing to time
                    continue

    async def _run(self) -> None:
        while not self._stopped:
            self.samples.append(await self.sample())
            self._new.set()
            self._new = asyncio.Event()
            await asyncio.sleep(SAMPLE_PERIOD)

    async def window(self, interval: float) -> tuple[Sample, Sample]:
        """The newest sample and the one ``interval`` seconds older (at least one period apart:
        the first query waits for the sampler's second sample). Starts or extends the watch
        (``WATCH``); a query that starts it arms every controller's timing first and waits for
        the next sample."""
        self.start()
        starting = not self.watched
        self.watched_until = time.monotonic() + WATCH
        if starting:
            await self._arm()
            await self._new.wait()
        while len(self.samples) < 2:
            await self._new.wait()
        new = self.samples[-1]
        old = next((s for s in reversed(self.samples) if new.t - s.t >= interval - SAMPLE_PERIOD / 2),
                   self.samples[0])
        return old, new


def sampler_of(ctx: Any) -> IostatSampler:
    extra = getattr(ctx, "extra", None)
    if extra is None or getattr(ctx, "machine", None) is None:
        raise GenericError("I/O statistics need the nvshell machine")
    sampler = extra.get(_KEY)
    if sampler is None:
        sampler = extra[_KEY] = IostatSampler(ctx)
    return sampler


def _percentile_bucket(buckets: list[int], pct: float) -> int | None:
    total = sum(buckets)
    if total == 0:
        return None
    rank = total * pct / 100
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return i
    return len(buckets) - 1


def _bucket_upper_us(i: int) -> int:
    """Upper bound (us) of log2 bucket ``i`` (``device.trace.bucket_of``: i holds [2**(i-1), 2**i))."""
    return 1 << i


def _rate(new: int, old: int, dt: float) -> float:
    return max(0, new - old) / dt if dt > 0 else 0.0


def _history(samples: list[Sample], ctrl: str, qid: int | None) -> list[float]:
    """Per-second IOPS over the kept samples (one value per pair of neighbours)."""
    out: list[float] = []
    for a, b in zip(samples, samples[1:]):
        ca, cb = a.ctrls.get(ctrl), b.ctrls.get(ctrl)
        if ca is None or cb is None:
            out.append(0.0)
            continue
        if qid is None:
            n = sum(max(0, cb.fetched.get(q, 0) - ca.fetched.get(q, 0)) for q in cb.fetched if q > 0)
        else:
            n = max(0, cb.fetched.get(qid, 0) - ca.fetched.get(qid, 0))
        out.append(n / (b.t - a.t))
    return out


def _delta(new: list[int], old: list[int] | None) -> list[int]:
    """Histogram of the window: ``new`` minus ``old`` (an SQ created since has no ``old``)."""
    if old is None:
        return list(new)
    return [max(0, n - o) for n, o in zip(new, old)]


def _percentiles(row: dict[str, Any], hist: list[int]) -> None:
    for pct in (50, 99):
        b = _percentile_bucket(hist, pct)
        row[f"p{pct}-us"] = None if b is None else _bucket_upper_us(b)
        row[f"p{pct}-bucket"] = None if b is None else bucket_label(b)


def iostat(sampler: IostatSampler, old: Sample, new: Sample, device: str | None) -> dict[str, Any]:
    dt = new.t - old.t
    samples = list(sampler.samples)
    devices = []
    for name, cn in new.ctrls.items():
        if device is not None and name != device:
            continue
        co = old.ctrls.get(name) or CtrlSample({}, {}, cn.bytes_read, cn.bytes_written, cn.reads, cn.writes,
                                               {}, {})
        row: dict[str, Any] = {
            "device": name, "interval": round(dt, 3),
            "read-iops": _rate(cn.reads, co.reads, dt), "write-iops": _rate(cn.writes, co.writes, dt),
            "read-mbps": _rate(cn.bytes_read, co.bytes_read, dt) / 1e6,
            "write-mbps": _rate(cn.bytes_written, co.bytes_written, dt) / 1e6,
            "iops": sum(_rate(n, co.fetched.get(q, 0), dt) for q, n in cn.fetched.items() if q > 0),
            "history": _history(samples, name, None),
        }
        row["mbps"] = row["read-mbps"] + row["write-mbps"]
        queues = []
        total = [0] * LATENCY_BUCKETS
        for qid, n in sorted(cn.fetched.items()):
            (br, bw), (obr, obw) = cn.qbytes[qid], co.qbytes.get(qid, (0, 0))
            hist = _delta(cn.qlatency[qid], co.qlatency.get(qid))
            q: dict[str, Any] = {
                "qid": qid, "iops": _rate(n, co.fetched.get(qid, 0), dt),
                "read-mbps": _rate(br, obr, dt) / 1e6, "write-mbps": _rate(bw, obw, dt) / 1e6,
                "occupancy": cn.occupancy[qid][0], "size": cn.occupancy[qid][1],
                "history": _history(samples, name, qid)}
            q["mbps"] = q["read-mbps"] + q["write-mbps"]
            _percentiles(q, hist)
            if qid > 0:
                total = [t + h for t, h in zip(total, hist)]
            queues.append(q)
        _percentiles(row, total)
        row["queues"] = queues
        devices.append(row)
    return {"interval": round(dt, 3), "devices": devices}


@qmp_command("x-nvme-query-iostat", args=[
    Arg("device", "str", optional=True, doc="only this controller"),
    Arg("interval", "number", optional=True, doc="seconds the rates are taken over (default 1, at most 60)"),
], returns="any")
async def x_nvme_query_iostat(ctx: Any, args: dict) -> dict[str, Any]:
    """Rates per controller and queue over the last ``interval`` seconds (IOPS, MB/s, occupancy,
    p50/p99 latency: null without timed completions in the window -- commands are timed from a
    query until a minute after the last one), and IOPS per second of the last minute
    (``history``, oldest first)."""
    interval = float(args.get("interval", 1.0))
    if not 0 < interval <= HISTORY - 1:
        raise GenericError(f"Parameter 'interval' expects a number of seconds in (0, {HISTORY - 1}]")
    device = args.get("device")
    if device is not None and not any(d.id == device and d.is_a(TYPE_CTRL) for d in ctx.machine.devices()):
        raise DeviceNotFound(f"Device '{device}' not found")
    sampler = sampler_of(ctx)
    old, new = await sampler.window(interval)
    return iostat(sampler, old, new, device)
