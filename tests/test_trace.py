"""Trace registry, trace points, sinks, formatting and latency statistics (device/trace.py)."""

from __future__ import annotations

import inspect
import re

import pytest

from nvshell.device import trace
from nvshell.device.trace import (
    DROPPED, TRACE, FilteredSink, Hex, LatencyStats, LineSink, RateLimitedSink, TraceError, TracePoint,
    TraceRegistry, bucket_label, bucket_of, format_record, percentile, render_histogram,
)


@pytest.fixture
def reg() -> TraceRegistry:
    r = TraceRegistry()
    r.strict = True
    r.point("nvme_cmd_submit", ctrl=str, qid=int, cid=int, opcode=str, doc="submit")
    r.point("nvme_cmd_complete", ctrl=str, qid=int, opcode=str, status=str, lat_us=float, doc="done")
    r.point("vfu_msg_in", cmd=str, size=int, doc="msg")
    r.point("vfu_dma_map", addr=Hex, size=Hex, doc="map")
    return r


def names(points: list[TracePoint]) -> list[str]:
    return [p.name for p in points]


# -- states and globs ------------------------------------------------------------------

def test_set_state_by_glob_returns_names(reg: TraceRegistry) -> None:
    assert reg.set_state("nvme_cmd_*", True) == ["nvme_cmd_complete", "nvme_cmd_submit"]
    assert reg.get_state("*") == {"nvme_cmd_complete": True, "nvme_cmd_submit": True,
                                  "vfu_dma_map": False, "vfu_msg_in": False}
    assert reg.set_state("nvme_cmd_submit", False) == ["nvme_cmd_submit"]
    assert reg.get_state("nvme_*") == {"nvme_cmd_complete": True, "nvme_cmd_submit": False}
    assert names(reg.list("vfu_*")) == ["vfu_dma_map", "vfu_msg_in"]
    assert names(reg.list("?fu_msg_[i]n")) == ["vfu_msg_in"]


def test_no_match_is_a_clear_error(reg: TraceRegistry) -> None:
    with pytest.raises(TraceError, match="No trace events found matching 'nvme_bogus\\*'"):
        reg.set_state("nvme_bogus*", True)
    with pytest.raises(TraceError, match="No trace events found matching 'x'"):
        reg.get_state("x")
    with pytest.raises(TraceError, match="Unknown trace event 'x'"):
        reg.get("x")
    assert TraceError("x").error_class == "GenericError"


def test_state_is_user_switch_enabled_needs_a_sink(reg: TraceRegistry) -> None:
    tp = reg.get("vfu_msg_in")
    reg.set_state("vfu_msg_in", True)
    assert tp.state is True and tp.enabled is False  # no sink yet
    got: list[dict] = []
    reg.add_sink(got.append)
    assert tp.enabled is True
    reg.remove_sink(got.append)  # a different bound-method object: identity, not equality
    assert tp.enabled is True
    reg.remove_sink(reg.sinks[0])
    assert tp.enabled is False and tp.state is True
    assert reg.get_state("vfu_msg_in") == {"vfu_msg_in": True}


def test_emit_reaches_sinks_only_when_enabled(reg: TraceRegistry) -> None:
    got: list[dict] = []
    sink = got.append
    tp = reg.get("vfu_msg_in")
    tp.emit(cmd="DMA_MAP", size=1)  # no sink, disabled
    reg.add_sink(sink)
    tp.emit(cmd="DMA_MAP", size=2)  # sink, disabled
    reg.set_state("vfu_*", True)
    tp.emit(cmd="DMA_MAP", size=3)
    reg.set_state("vfu_msg_in", False)
    tp.emit(cmd="DMA_MAP", size=4)
    assert len(got) == 1
    rec = got[0]
    assert list(rec)[:2] == ["name", "ts"]
    assert rec["name"] == "vfu_msg_in" and rec["cmd"] == "DMA_MAP" and rec["size"] == 3
    assert isinstance(rec["ts"], int) and rec["ts"] > 1_600_000_000 * 10**9


def test_all_sinks_get_the_record(reg: TraceRegistry) -> None:
    a: list[dict] = []
    b: list[dict] = []
    reg.add_sink(a.append)
    reg.add_sink(b.append)
    reg.set_state("*", True)
    reg.get("vfu_dma_map").emit(addr=0x1000, size=0x2000)
    assert len(a) == len(b) == 1


def test_failing_sink_does_not_break_emit(reg: TraceRegistry, caplog: pytest.LogCaptureFixture) -> None:
    def bad(record: dict) -> None:
        raise RuntimeError("sink broken")

    got: list[dict] = []
    reg.add_sink(bad)
    reg.add_sink(got.append)
    reg.set_state("*", True)
    for i in range(3):
        reg.get("vfu_msg_in").emit(cmd="X", size=i)  # must not raise
    assert len(got) == 3
    assert reg.sink_errors == 3
    assert sum("sink broken" in r.exc_text for r in caplog.records if r.exc_text) == 1  # logged once


def test_strict_mode_checks_fields(reg: TraceRegistry) -> None:
    reg.add_sink(lambda r: None)
    reg.set_state("*", True)
    with pytest.raises(TypeError, match="missing"):
        reg.get("vfu_msg_in").emit(cmd="X")
    with pytest.raises(TypeError, match="expects int"):
        reg.get("vfu_msg_in").emit(cmd="X", size="big")
    reg.get("nvme_cmd_complete").emit(ctrl="c", qid=1, opcode="read", status="success", lat_us=3)


def test_declaration_errors() -> None:
    r = TraceRegistry()
    r.point("a", doc="")
    with pytest.raises(ValueError):
        r.point("a", doc="")
    with pytest.raises(ValueError):
        r.point("b", x=list, doc="")
    with pytest.raises(ValueError):
        r.point("c", ts=int, doc="")


# -- the disabled fast path -------------------------------------------------------------

def test_disabled_trace_point_is_one_attribute_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data-path idiom never calls emit (nor builds its kwargs) when disabled."""
    assert not isinstance(inspect.getattr_static(TracePoint, "enabled"), property)
    tp = trace.NVME_CMD_SUBMIT
    assert type(tp.enabled) is bool
    calls: list[dict] = []
    monkeypatch.setattr(TracePoint, "emit", lambda self, **kw: calls.append(kw))
    evaluated: list[int] = []

    def expensive() -> int:
        evaluated.append(1)
        return 0

    def data_path() -> None:
        if tp.enabled:
            tp.emit(ctrl="c", qid=1, cid=2, opcode="read", nsid=1, slba=expensive(), nlb=0, cdw10=0, cdw11=0)

    assert tp.enabled is False
    for _ in range(100):
        data_path()
    assert calls == [] and evaluated == []
    # The guard is exactly one attribute load followed by a branch.
    code = data_path.__code__
    assert "enabled" in code.co_names


# -- the real catalogue ------------------------------------------------------------------

REQUIRED = {
    "vfu_msg_in": {"cmd", "size"}, "vfu_msg_out": {"cmd", "size"}, "vfu_dma_map": {"addr", "size"},
    "vfu_dma_unmap": {"addr", "size"}, "vfu_config_read": {"offset", "value"},
    "vfu_config_write": {"offset", "value"}, "nvme_reg_read": {"offset", "value"},
    "nvme_reg_write": {"offset", "value"}, "nvme_doorbell": {"qid", "value"},
    "nvme_cmd_submit": {"ctrl", "qid", "cid", "opcode", "nsid", "slba", "nlb"},
    "nvme_cmd_complete": {"ctrl", "qid", "cid", "opcode", "status", "lat_us"},
    "nvme_irq": {"vector"}, "nvme_aen_queued": set(), "nvme_aen_complete": set(),
    "nvme_create_sq": {"qid"}, "nvme_create_cq": {"qid"}, "nvme_delete_sq": {"qid"},
    "nvme_delete_cq": {"qid"}, "nvme_ctrl_enable": set(), "nvme_ctrl_disable": set(),
    "nvme_ctrl_reset": set(), "nvme_ns_attach": {"nsid"}, "nvme_ns_detach": {"nsid"},
}


def test_catalogue_declares_required_points() -> None:
    for name, fields in REQUIRED.items():
        tp = TRACE.get(name)
        assert fields <= tp.fields.keys(), name
        assert "ctrl" in tp.fields and tp.doc
        assert re.fullmatch(r"(nvme|vfu)_[a-z0-9_]+", name)
    assert all(not tp.state for tp in TRACE.list()), "trace points must start disabled"


def test_global_registry_end_to_end() -> None:
    got: list[dict] = []
    sink = got.append
    TRACE.strict = True
    TRACE.add_sink(sink)
    try:
        assert TRACE.set_state("nvme_cmd_*", True) == ["nvme_cmd_complete", "nvme_cmd_submit"]
        if trace.NVME_CMD_SUBMIT.enabled:
            trace.NVME_CMD_SUBMIT.emit(ctrl="ctrl0", qid=1, cid=7, opcode="read", nsid=1, slba=8, nlb=8,
                                       cdw10=8, cdw11=0)
        if trace.NVME_DOORBELL.enabled:  # pragma: no cover - stays disabled
            trace.NVME_DOORBELL.emit(ctrl="ctrl0", qid=1, kind="sq", value=1)
    finally:
        TRACE.set_state("*", False)
        TRACE.remove_sink(sink)
        TRACE.strict = False
    assert [r["name"] for r in got] == ["nvme_cmd_submit"]
    assert not TRACE.sinks and not trace.NVME_CMD_SUBMIT.enabled


# -- sinks -----------------------------------------------------------------------------

def test_filtered_sink() -> None:
    got: list[dict] = []
    f = FilteredSink(got.append, ctrl="ctrl0", qid=1, opcode="read")
    f({"name": "nvme_cmd_submit", "ctrl": "ctrl0", "qid": 1, "opcode": "read"})
    f({"name": "nvme_cmd_submit", "ctrl": "ctrl0", "qid": 2, "opcode": "read"})
    f({"name": "nvme_cmd_submit", "ctrl": "ctrl1", "qid": 1, "opcode": "read"})
    f({"name": "nvme_cmd_submit", "ctrl": "ctrl0", "qid": 1, "opcode": "write"})
    f({"name": "nvme_ctrl_enable", "ctrl": "ctrl0"})  # lacks qid/opcode: filtered out
    assert len(got) == 1
    g = FilteredSink(got.append, ctrl="ctrl0", qid=None, names="nvme_ctrl_*")
    g({"name": "nvme_ctrl_enable", "ctrl": "ctrl0"})
    g({"name": "nvme_cmd_submit", "ctrl": "ctrl0"})
    assert [r["name"] for r in got] == ["nvme_cmd_submit", "nvme_ctrl_enable"]


class ManualClock:
    """The time source the rate limiter is given (``clock=``), moved by hand: time is
    outside the code under test, so the window edges are exact instead of slept for."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_counts_and_reports_drops() -> None:
    got: list[dict] = []
    clock = ManualClock()
    rl = RateLimitedSink(got.append, 3, clock=clock)
    for i in range(10):
        rl({"name": "x", "i": i})
    assert [r["i"] for r in got] == [0, 1, 2]
    assert rl.dropped == 7
    rl.flush()  # same window: nothing to report yet
    assert len(got) == 3
    clock.now += 1.0
    rl({"name": "x", "i": 10})
    assert got[3]["name"] == DROPPED and got[3]["dropped"] == 7
    assert got[4]["i"] == 10
    assert format_record(got[3]) == "... 7 trace lines dropped"
    for i in range(5):
        rl({"name": "x", "i": 11 + i})
    clock.now += 1.5
    rl.flush()  # no new record: the timer reports
    assert got[-1] == {"name": DROPPED, "ts": got[-1]["ts"], "dropped": 3}
    assert rl.dropped == 10
    with pytest.raises(ValueError):
        RateLimitedSink(got.append, 0)


# -- formatting -------------------------------------------------------------------------

def test_format_record() -> None:
    rec = {"name": "nvme_cmd_complete", "ts": 1_700_000_000_123_456_789, "ctrl": "ctrl0", "qid": 1,
           "cid": 5, "opcode": "read", "status": "success", "lat_us": 12.4, "result": 0, "extra": "a b"}
    line = format_record(rec)
    assert re.fullmatch(r"nvme_cmd_complete \d\d:\d\d:\d\d\.123456 ctrl=ctrl0 qid=1 cid=5 opcode=read "
                        r"status=success lat=12us result=0x0 extra='a b'", line), line
    assert "lat=0.8us" in format_record({"name": "nvme_cmd_complete", "lat_us": 0.8})
    dma = format_record({"name": "vfu_dma_map", "ts": 0, "ctrl": "c", "addr": 0xC0000, "size": 4096,
                         "offset": 0, "prot": "rw"})
    assert dma.endswith("ctrl=c addr=0xc0000 size=0x1000 offset=0x0 prot=rw")
    assert format_record({"name": "unknown_point", "a": 1}) == "unknown_point a=1"


def test_shell_pipeline(reg: TraceRegistry) -> None:
    """What the shell builds: filter -> rate limit -> formatted lines."""
    lines: list[str] = []
    clock = ManualClock()
    limiter = RateLimitedSink(LineSink(lines.append, reg), 2, clock=clock)
    sink = FilteredSink(limiter, qid=1)
    reg.add_sink(sink)
    reg.set_state("nvme_cmd_submit", True)
    tp = reg.get("nvme_cmd_submit")
    for cid in range(5):
        tp.emit(ctrl="ctrl0", qid=1, cid=cid, opcode="read")
        tp.emit(ctrl="ctrl0", qid=2, cid=cid, opcode="read")  # filtered: not counted as dropped
    clock.now += 1
    limiter.flush()
    assert [ln.split()[-2] for ln in lines[:2]] == ["cid=0", "cid=1"]
    assert lines[2:] == ["... 3 trace lines dropped"]
    assert FilteredSink(lines.append, qid=9).matches({"name": DROPPED, "dropped": 1})


# -- latency statistics -------------------------------------------------------------------

def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 90) == 90
    assert percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7 and percentile([], 50) == 0


def test_buckets() -> None:
    assert [bucket_of(v) for v in (0, 0.5, 1, 1.9, 2, 3, 4, 1000)] == [0, 0, 1, 1, 2, 2, 3, 10]
    assert bucket_label(0) == "<1us" and bucket_label(1) == "1us-2us" and bucket_label(4) == "8us-16us"
    assert bucket_label(11) == "1.0ms-2.0ms"


def complete(ctrl: str, opcode: str, lat: float, status: str = "success") -> dict:
    return {"name": "nvme_cmd_complete", "ts": 0, "ctrl": ctrl, "qid": 1, "cid": 0, "opcode": opcode,
            "status": status, "lat_us": lat, "result": 0}


def test_latency_stats_and_histogram() -> None:
    stats = LatencyStats()
    for v in range(1, 101):
        stats(complete("ctrl0", "read", float(v)))
    stats(complete("ctrl0", "write", 3000.0, status="lba-out-of-range"))
    stats(complete("ctrl1", "flush", 5.0))
    stats({"name": "nvme_cmd_submit", "ctrl": "ctrl0"})  # ignored
    summary = {(s["ctrl"], s["opcode"]): s for s in stats.summary()}
    read = summary[("ctrl0", "read")]
    assert (read["count"], read["p50"], read["p90"], read["p99"], read["max"]) == (100, 50, 90, 99, 100)
    assert read["mean_us"] == pytest.approx(50.5)
    assert summary[("ctrl0", "write")]["errors"] == 1
    text = render_histogram(stats, width=60, ctrl="ctrl0")
    lines = text.splitlines()
    assert lines[0] == "ctrl0 read: n=100 errors=0 p50=50us p90=90us p99=99us max=100us"
    assert "ctrl1" not in text and "ctrl0 write: n=1 errors=1" in text
    bars = [ln for ln in lines[1:lines.index(next(ln for ln in lines if ln.startswith("ctrl0 write")))]]
    assert [ln.split("|")[0].strip() for ln in bars] == ["1us-2us", "2us-4us", "4us-8us", "8us-16us",
                                                          "16us-32us", "32us-64us", "64us-128us"]
    assert all(len(ln) <= 60 for ln in lines if "|" in ln)
    counts = [int(ln.rsplit("|", 1)[1]) for ln in bars]
    assert counts == [1, 2, 4, 8, 16, 32, 37]
    widest = max(bars, key=lambda ln: ln.count("#"))
    assert widest.endswith(" 37") and bars[0].count("#") == 1
    assert render_histogram(LatencyStats(), ctrl="x") == "no completed commands recorded for x"
    stats.reset("ctrl0")
    assert [s["ctrl"] for s in stats.summary()] == ["ctrl1"]


def test_latency_reservoir_bounded() -> None:
    stats = LatencyStats(reservoir=64)
    for v in range(10_000):
        stats(complete("c", "read", float(v % 100)))
    op = stats.snapshot()[("c", "read")]
    assert op.count == 10_000 and len(op.samples) == 64 and op.samples == sorted(op.samples)
    assert op.max_us == 99 and sum(op.buckets) == 10_000
