"""The tracing front end: -trace options, trace states by glob, every trace point under a
vfio-user client workload, the msgpack recording, QMP subscriptions, latency, the shell view.

The device side (registry, sinks, file writer, decoder) has its own tests
(test_trace.py, test_trace_file.py, test_nvtrace.py); these tests drive the real
controller behind the real vfio-user server with ``VfioUserClient`` (the path QEMU
takes) and check what the monitor-side sinks deliver.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from nvshell.device import trace as T
from nvshell.device.backends import MemoryBackend
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.trace import TRACE, TraceError
from nvshell.device.trace_decode import Summary, iter_records
from nvshell.device.vfio_user.client import VfioUserClient
from nvshell.device.vfio_user.interface import RegionIndex
from nvshell.monitor.commands_tracing import DROPPED_EVENT, RECORD_EVENT, tracing_of
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.hmp import execute_line
from nvshell.monitor.hmp_tracing import CURRENT_SHELL_VIEW, attach_shell_trace, parse_filter_spec, render_latency
from nvshell.monitor.qmp.server import QMPServer
from nvshell.monitor.trace_options import apply_trace_options, parse_trace_options
from tests.qmp_helpers import RawClient
from nvshell.testing import NvmeTestHost, wait_until


@pytest.fixture(autouse=True)
def clean_trace() -> Iterator[None]:
    """Every test starts and ends with all trace points off, no sinks, strict field checks."""
    strict = TRACE.strict
    TRACE.set_state("*", False)
    TRACE.strict = True
    before = TRACE.sinks
    yield
    TRACE.set_state("*", False)
    for sink in TRACE.sinks:
        if sink not in before:
            TRACE.remove_sink(sink)
    TRACE.strict = strict


@pytest.fixture
def ctx() -> Iterator[MonitorContext]:
    c = MonitorContext()
    yield c
    if "tracing" in c.extra:
        c.extra["tracing"].close()


def run(coro: Any) -> Any:
    return asyncio.new_event_loop().run_until_complete(coro)


def hmp(ctx: Any, line: str) -> str:
    async def go() -> str:
        return (await execute_line(line, ctx)).text
    return asyncio.run(go())


# ---------------------------------------------------------------------------------------
# -trace options and states by glob


def test_parse_trace_options_qemu_forms(tmp_path: Path) -> None:
    events = tmp_path / "events"
    events.write_text("# comment\n\nnvme_cmd_*\n-nvme_cmd_submit\n")
    p = parse_trace_options(["nvme_irq", "-vfu_*", "enable=nvme_doorbell,file=/tmp/a,,b",
                             f"events={events}", "file=/tmp/last"])
    assert p.patterns == [("nvme_irq", True), ("vfu_*", False), ("nvme_doorbell", True),
                          ("nvme_cmd_*", True), ("nvme_cmd_submit", False)]
    assert p.file == "/tmp/last"
    assert parse_trace_options(["file=/tmp/a,,b"]).file == "/tmp/a,b"


@pytest.mark.parametrize("option, message", [
    ("", "empty argument"),
    ("bogus=1", "unknown option 'bogus'"),
    ("nvme_irq,other", "expected KEY=VALUE"),
    ("file=", "file= needs a path"),
    ("enable=-", "empty trace event pattern"),
    ("events=/nonexistent/x", "cannot read events file '/nonexistent/x'"),
])
def test_parse_trace_options_errors(option: str, message: str) -> None:
    with pytest.raises(TraceError, match=message):
        parse_trace_options([option])


def test_apply_trace_options(ctx: MonitorContext, tmp_path: Path) -> None:
    apply_trace_options(ctx, ["nvme_cmd_*", "vfu_*", "-vfu_msg_*", f"file={tmp_path / 't.msgpack'}"])
    on = {n for n, s in TRACE.get_state("*").items() if s}
    assert on == {"nvme_cmd_submit", "nvme_cmd_complete", "vfu_client_connect", "vfu_client_disconnect",
                  "vfu_dma_map", "vfu_dma_unmap", "vfu_config_read", "vfu_config_write"}
    tracing = tracing_of(ctx)
    assert tracing.file is not None and tracing.file in TRACE.sinks and tracing.latency in TRACE.sinks
    assert T.NVME_CMD_SUBMIT.enabled and not T.NVME_IRQ.enabled


def test_apply_trace_options_errors_change_nothing(ctx: MonitorContext, tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="-trace: no trace events found matching 'nvme_bogus'"):
        apply_trace_options(ctx, ["nvme_cmd_*", "nvme_bogus"])
    assert not any(TRACE.get_state("*").values())
    with pytest.raises(TraceError, match="-trace: Could not open trace file '/nonexistent/dir/t'"):
        apply_trace_options(ctx, ["file=/nonexistent/dir/t"])


def test_states_by_glob_through_qmp_and_hmp(ctx: MonitorContext) -> None:
    reg = ctx.registry
    reg.execute_sync("trace-event-set-state", {"name": "nvme_*_sq", "enable": True}, ctx)
    got = reg.execute_sync("trace-event-get-state", {"name": "nvme_*"}, ctx)
    assert {e["name"] for e in got if e["state"] == "enabled"} == {"nvme_create_sq", "nvme_delete_sq"}
    assert hmp(ctx, "trace-event vfu_dma_* on") == ""
    assert T.VFU_DMA_MAP.state and T.VFU_DMA_UNMAP.state and not T.VFU_MSG_IN.state
    assert "vfu_dma_map : state 1" in hmp(ctx, "info trace-events vfu_dma*")
    assert hmp(ctx, "trace-event * off") == ""
    assert not any(TRACE.get_state("*").values())
    assert hmp(ctx, "trace-event nvme_bogus* on").startswith("Error: No trace events found")
    assert hmp(ctx, "trace-event nvme_irq maybe") == "Error: Parameter 'option' expects 'on' or 'off'\n"


# ---------------------------------------------------------------------------------------
# Every trace point under the vfio-user client workload


def workload(g: NvmeTestHost, n_writes: int = 6) -> list[tuple[int, str]]:
    """Admin + I/O over the wire; returns the (qid, opcode) of every command issued."""
    issued: list[tuple[int, str]] = []
    g.enable()
    issued.append((0, "set-features"))
    assert g.cmd(AdminOpcode.SET_FEATURES, cdw10=7, cdw11=0x00030003).status >> 1 == 0
    g.create_io_queue(1, 16, vector=2)
    issued += [(0, "create-io-cq"), (0, "create-io-sq")]
    buf = g.alloc(4096)
    for i in range(n_writes):
        g.ram.write(buf, bytes([i]) * 4096)
        assert g.cmd(0x01, qid=1, nsid=1, dptr1=buf, cdw10=8 * i, cdw12=7).status >> 1 == 0
        issued.append((1, "write"))
    for i in range(n_writes // 2):
        assert g.cmd(0x02, qid=1, nsid=1, dptr1=buf, cdw10=8 * i, cdw12=7).status >> 1 == 0
        issued.append((1, "read"))
    assert g.cmd(0x00, qid=1, nsid=1).status >> 1 == 0
    issued.append((1, "flush"))
    assert g.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=1).status >> 1 == 0
    assert g.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=1).status >> 1 == 0
    issued += [(0, "delete-io-sq"), (0, "delete-io-cq")]
    return issued


def wait_record(records: list[dict], pred: Any, timeout: float = 3.0) -> dict:
    """The first record ``pred`` accepts, waiting for the sink to receive it."""
    return wait_until(lambda: next((r for r in records if pred(r)), None), timeout, "trace record")


def guest(tmp_path: Path, doorbells: str) -> NvmeTestHost:
    """A host on a controller ``e2e`` with a 1 MiB namespace (NSID 1), not yet enabled."""
    return NvmeTestHost.serve(tmp_path, name="e2e", doorbells=doorbells, ns_size=1 << 20)


@pytest.mark.parametrize("doorbells", ["mmap", "trap"])
def test_every_trace_point_fires_with_declared_fields(tmp_path: Path, doorbells: str) -> None:
    records: list[dict] = []
    TRACE.add_sink(records.append)
    TRACE.set_state("*", True)  # strict: emit() raises (caught, counted) on a field mismatch
    errors_before = TRACE.sink_errors
    g = guest(tmp_path, doorbells)
    try:
        g.client.region_read(RegionIndex.CONFIG, 0, 64)
        g.client.region_write(RegionIndex.CONFIG, 0x04, (0x0006).to_bytes(2, "little"))
        workload(g)
        # Notices enabled (as the Linux driver does), an AER outstanding, then a
        # namespace change completes it.
        g.cmd(AdminOpcode.SET_FEATURES, cdw10=0x0B, cdw11=0x100)
        g.request_aen()
        wait_record(records, lambda r: r["name"] == "nvme_cmd_submit" and r["opcode"] == "async-event-request")
        g.run(g.ctrl.detach_namespace, 1)
        g.run(g.ctrl.post_async_event, 2, 0, 0x04)      # notice: namespace attribute changed
        assert g.aens(timeout=3) == [0x040002]
        g.write_reg32(0x14, 0)                            # CC.EN=0: disable + reset
        end = g.ram_base + g.ram_size
        scratch = g.client.map_memory(end, 1 << 20)
        g.client.unmap(end, 1 << 20)
        del scratch
        g.run(g.ctrl.fatal, "test")
        g.client.close()
        wait_record(records, lambda r: r["name"] == "vfu_client_disconnect")
    finally:
        g.close()
    assert TRACE.sink_errors == errors_before, "a trace point emitted fields that do not match its declaration"
    seen = {r["name"] for r in records}
    # Fault-injection trace points fire only with a fault armed, zone ones only with a
    # zoned namespace, metadata SGL ones only with metadata sent as an SGL (their own tests:
    # test_faults*.py, test_zns.py, test_mdsgl.py).
    expected = {n for n in TRACE.names() if not n.startswith(("nvme_fault_", "nvme_zone_", "nvme_metadata_"))}
    assert expected <= seen, f"never fired: {sorted(expected - seen)}"
    for r in records:
        TRACE.get(r["name"]).check({k: v for k, v in r.items() if k not in ("name", "ts")})
        assert isinstance(r["ts"], int) and r["ts"] > 0
    by = lambda name: [r for r in records if r["name"] == name]  # noqa: E731
    writes = [r for r in by("nvme_cmd_submit") if r["opcode"] == "write"]
    assert [(r["qid"], r["nsid"], r["slba"], r["nlb"]) for r in writes] == [(1, 1, 8 * i, 8) for i in range(6)]
    done = [r for r in by("nvme_cmd_complete") if r["opcode"] == "write"]
    assert all(r["status"] == "success" and r["lat_us"] >= 0 for r in done) and len(done) == 6
    assert any(r["kind"] == "sq" and r["qid"] == 1 for r in by("nvme_doorbell"))
    assert {r["qid"] for r in by("nvme_create_sq")} == {1} and by("nvme_create_cq")[0]["vector"] == 2
    assert by("vfu_dma_map")[0]["addr"] == g.ram_base and by("vfu_dma_map")[0]["size"] == g.ram_size
    assert by("nvme_aen_complete")[0]["aen_type"] == by("nvme_aen_queued")[0]["aen_type"]
    assert by("nvme_ctrl_fatal")[0]["reason"] == "test"
    # The vfio-user server's records carry its name, the rest the controller's (both the
    # device id in nvshell).
    assert {r["ctrl"] for r in records if r["name"].startswith("vfu_msg")} == {"e2e"}
    assert {r["ctrl"] for r in records if r["name"].startswith("nvme_")} == {g.ctrl.name}


# ---------------------------------------------------------------------------------------
# The msgpack file decodes to exactly the commands issued


def test_trace_file_holds_exactly_the_commands_issued(ctx: MonitorContext, tmp_path: Path) -> None:
    path = tmp_path / "cmds.msgpack"
    apply_trace_options(ctx, ["nvme_cmd_*", f"file={path}"])
    g = guest(tmp_path, "mmap")
    try:
        issued = workload(g, n_writes=10)
    finally:
        g.close()
    status = ctx.registry.execute_sync("x-trace-file", {"enable": False}, ctx)
    assert status == {"enabled": False, "path": str(path)}
    records = list(iter_records(str(path)))
    submits = [(r["qid"], r["opcode"]) for r in records if r["name"] == "nvme_cmd_submit"]
    completes = [(r["qid"], r["opcode"]) for r in records if r["name"] == "nvme_cmd_complete"]
    issued_all = [(0, "set-features")] + issued[1:]
    # enable() itself issues nothing; every command appears once as submit and once as complete.
    assert submits == issued_all and completes == issued_all
    assert {r["name"] for r in records} == {"nvme_cmd_submit", "nvme_cmd_complete"}
    assert all(set(r) == {"name", "ts", *TRACE.get(r["name"]).fields} for r in records)
    ts = [r["ts"] for r in records]
    assert ts == sorted(ts)
    summary = Summary()
    for r in records:
        summary.feed(r)
    d = summary.as_dict()
    assert d["opcodes"]["write"]["count"] == 10 and d["opcodes"]["read"]["count"] == 5
    assert d["queues"][f"{g.ctrl.name}:1"]["count"] == 16
    # info latency saw the same completions.
    rows = ctx.registry.execute_sync("x-query-latency", {}, ctx)
    assert {r["opcode"]: r["count"] for r in rows}["write"] == 10
    text = hmp(ctx, "info latency")
    assert f"{g.ctrl.name} write: n=10 errors=0" in text and "|" in text and "#" in text


def test_trace_file_commands(ctx: MonitorContext, tmp_path: Path) -> None:
    assert hmp(ctx, "trace-file") == "Trace file off\n"
    assert hmp(ctx, "trace-file on") == "Error: No trace file name given: use 'trace-file on PATH'\n"
    assert hmp(ctx, "trace-file on /nonexistent/dir/x").startswith(
        "Error: Could not open trace file '/nonexistent/dir/x'")
    a = tmp_path / "a.msgpack"
    assert hmp(ctx, f"trace-file on {a}") == f'Trace file "{a}" on (0 records written, 0 dropped)\n'
    TRACE.set_state("nvme_irq", True)
    T.NVME_IRQ.emit(ctrl="c", vector=1)
    assert hmp(ctx, "trace-file flush").startswith(f'Trace file "{a}" on (1 records written')
    assert hmp(ctx, "trace-file off") == f'Trace file "{a}" off\n'
    T.NVME_IRQ.emit(ctrl="c", vector=2)                   # not recorded
    assert hmp(ctx, "trace-file on") .startswith(f'Trace file "{a}" on')   # resume, appending
    T.NVME_IRQ.emit(ctrl="c", vector=3)
    assert hmp(ctx, "trace-file off x") == "Error: trace-file off: unexpected argument 'x'\n"
    hmp(ctx, "trace-file off")
    assert [r["vector"] for r in iter_records(str(a))] == [1, 3]
    assert hmp(ctx, "trace-file sideways") == \
        "Error: trace-file: unknown operation 'sideways' (expected on PATH, off or flush)\n"
    with pytest.raises(Exception, match="Parameter 'path' needs 'enable': true"):
        ctx.registry.execute_sync("x-trace-file", {"path": str(a)}, ctx)


def test_latency_query_and_rendering(ctx: MonitorContext) -> None:
    assert "nvme_cmd_complete trace event is off" in hmp(ctx, "info latency")
    TRACE.set_state("nvme_cmd_complete", True)
    tracing_of(ctx)
    assert hmp(ctx, "info latency") == "no completed commands recorded yet\n"
    for lat in (3.0, 5.0, 100.0, 120.0, 2000.0):
        T.NVME_CMD_COMPLETE.emit(ctrl="ctrl0", qid=1, cid=1, opcode="read", status="success",
                                 lat_us=lat, result=0)
    T.NVME_CMD_COMPLETE.emit(ctrl="ctrl1", qid=1, cid=1, opcode="write", status="lba_out_of_range",
                             lat_us=7.0, result=0)
    rows = ctx.registry.execute_sync("x-query-latency", {}, ctx)
    read = next(r for r in rows if r["opcode"] == "read")
    assert read["count"] == 5 and read["p50-us"] == 100.0 and read["max-us"] == 2000.0
    assert [b["bucket"] for b in read["histogram"]][0] == "2us-4us" and sum(b["count"] for b in read["histogram"]) == 5
    text = render_latency(rows, 60)
    assert "ctrl0 read: n=5 errors=0" in text and "ctrl1 write: n=1 errors=1" in text
    bars = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(bars) == 10 + 1 and all(len(line) <= 60 for line in bars)   # read: 2us-4us..1ms-2ms; write: 4us-8us
    rows = ctx.registry.execute_sync("x-query-latency", {"reset": True}, ctx)
    assert len(rows) == 2 and ctx.registry.execute_sync("x-query-latency", {}, ctx) == []


def test_latency_unknown_device_is_an_error(tmp_path: Path) -> None:
    from nvshell.device.machine import Machine
    m = Machine(tmp_path)
    c = MonitorContext(machine=m)
    try:
        assert hmp(c, "info latency ctrl9") == "Error: Device 'ctrl9' not found\n"
    finally:
        if "tracing" in c.extra:
            c.extra["tracing"].close()
        m.shutdown()


# ---------------------------------------------------------------------------------------
# QMP subscription: records as events, only to the client that asked


class Monitor:
    """A real QMPServer (default trace registry) on a loop thread."""

    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.path = str(tmp_path / "qmp.sock")

        async def start() -> tuple[Any, Any]:
            ctx = MonitorContext()
            server = QMPServer(ctx)
            await server.listen_unix(self.path)
            return ctx, server
        self.ctx, self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        if "tracing" in self.ctx.extra:
            self.loop.call_soon_threadsafe(self.ctx.extra["tracing"].close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def qmp(client: RawClient, command: str, **args: Any) -> Any:
    """``RawClient.cmd`` for commands that take a ``name`` argument."""
    client.send({"execute": command, "arguments": args})
    return client.recv()


def events_until(client: RawClient, pred: Any, timeout: float = 5.0) -> list[dict]:
    """Read events until ``pred(events)`` holds."""
    out: list[dict] = []
    deadline = time.monotonic() + timeout
    client.sock.settimeout(0.2)
    while not pred(out):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; got {len(out)} events: {out[-3:]}")
        try:
            out.append(client.recv())
        except OSError:
            continue
    client.sock.settimeout(5)
    return out


def test_qmp_subscription_only_to_the_client_that_asked(tmp_path: Path) -> None:
    mon = Monitor(tmp_path)
    sub = RawClient(mon.path)
    other = RawClient(mon.path)
    g = guest(tmp_path, "mmap")
    try:
        r = sub.cmd("x-trace-subscribe", names=["nvme_cmd_*"], qid=1, enable=True)
        assert r["return"]["events"] == ["nvme_cmd_complete", "nvme_cmd_submit"]
        assert r["return"]["enabled"] == ["nvme_cmd_complete", "nvme_cmd_submit"]
        assert qmp(other, "trace-event-get-state", name="nvme_cmd_submit")["return"][0]["state"] == "enabled"
        issued = workload(g, n_writes=4)
        io = [op for q, op in issued if q == 1]
        evs = events_until(sub, lambda e: sum(x.get("data", {}).get("name") == "nvme_cmd_complete"
                                               for x in e) >= len(io))
        recs = [e["data"] for e in evs if e.get("event") == RECORD_EVENT]
        assert [r["opcode"] for r in recs if r["name"] == "nvme_cmd_submit"] == io
        assert [r["opcode"] for r in recs if r["name"] == "nvme_cmd_complete"] == io
        assert all(r["qid"] == 1 and r["ctrl"] == g.ctrl.name for r in recs)   # the filter
        ev = evs[0]
        assert set(ev) == {"event", "data", "timestamp"} and ev["timestamp"]["seconds"] == ev["data"]["ts"] // 10**9
        # The other client got nothing but its own replies.
        assert other.cmd("query-version")["return"]["qemu"]
        other.sock.settimeout(0.3)
        with pytest.raises(OSError):
            other.recv()
        other.sock.settimeout(5)
        # Opcode filter, replacing the first subscription.
        assert "return" in sub.cmd("x-trace-subscribe", names=["nvme_cmd_complete"], opcode="write")
        g.ram.write(g.alloc(4096), b"")
        assert g.cmd(AdminOpcode.GET_FEATURES, cdw10=7).status >> 1 == 0
        r = sub.cmd("x-trace-unsubscribe")
        assert r["return"]["dropped"] == 0
        assert sub.cmd("x-trace-unsubscribe")["error"]["desc"] == "This client has no trace subscription"
        tracing = tracing_of(mon.ctx)
        assert tracing.subscriptions == {}
        # A client that leaves loses its sink.
        sub.cmd("x-trace-subscribe", names=["nvme_cmd_*"])
        assert len(tracing.subscriptions) == 1
        sub.close()
        wait_until(lambda: not tracing.subscriptions, 3, "the departed client's subscription dropped")
    finally:
        g.close()
        other.close()
        mon.stop()


def test_qmp_subscription_errors_and_drops(tmp_path: Path) -> None:
    mon = Monitor(tmp_path)
    c = RawClient(mon.path)
    try:
        assert c.cmd("x-trace-subscribe", names=["nvme_bogus*"])["error"]["desc"] == \
            "No trace events found matching 'nvme_bogus*'"
        assert c.cmd("x-trace-subscribe", names=[])["error"]["desc"].startswith("Parameter 'names' must list")
        assert c.cmd("x-trace-subscribe", qid="1")["error"]["desc"] == \
            "Invalid parameter type for 'qid', expected: integer"
        assert c.cmd("x-trace-subscribe", enable=True)["error"]["desc"].startswith("Parameter 'enable' needs 'names'")
        assert c.cmd("x-trace-subscribe", ctrl="")["error"]["desc"] == "Trace filter 'ctrl' expects a non-empty string"
        assert c.cmd("x-trace-subscribe", names=["nvme_irq"], enable=True, **{"max-pending": 3})["return"]
        # Emit a burst from another thread while the loop cannot drain: the rest is counted.
        done = threading.Event()

        def burst() -> None:
            for i in range(10):
                T.NVME_IRQ.emit(ctrl="c", vector=i)
            done.set()
        mon.loop.call_soon_threadsafe(lambda: (threading.Thread(target=burst).start(), done.wait(5)))
        evs = events_until(c, lambda e: sum(x.get("event") == RECORD_EVENT for x in e) >= 3
                           and any(x.get("event") == DROPPED_EVENT for x in e))
        assert next(e for e in evs if e.get("event") == DROPPED_EVENT)["data"] == {"dropped": 7}
        assert [e["data"]["vector"] for e in evs if e.get("event") == RECORD_EVENT] == [0, 1, 2]
    finally:
        c.close()
        mon.stop()


def test_subscribe_outside_qmp_is_an_error(ctx: MonitorContext) -> None:
    assert hmp(ctx, "trace-filter") .startswith("Error: trace-filter: only available in the interactive shell")
    with pytest.raises(Exception, match="run it over QMP"):
        ctx.registry.execute_sync("x-trace-subscribe", {}, ctx)


# ---------------------------------------------------------------------------------------
# The shell's live view (in-process; the pexpect test is test_tracing_shell.py)


def test_shell_view_prints_only_what_the_shell_enabled(ctx: MonitorContext) -> None:
    printed: list[str] = []

    async def go() -> None:
        detach = attach_shell_trace(ctx, printed.append, rate=5, interval=0.02)
        view = CURRENT_SHELL_VIEW.get()
        assert view is not None
        # Enabled elsewhere (QMP, -trace): the shell prints nothing.
        ctx.registry.execute_sync("trace-event-set-state", {"name": "nvme_irq", "enable": True}, ctx)
        assert view not in TRACE.sinks
        assert (await execute_line("trace-event nvme_cmd_* on", ctx)).text == ""
        assert view in TRACE.sinks and view.names == {"nvme_cmd_submit", "nvme_cmd_complete"}
        assert (await execute_line("trace-filter qid=1,opcode=read", ctx)).text == ""
        assert (await execute_line("trace-filter qid=x", ctx)).text == \
            "Error: trace-filter: Trace filter 'qid' expects an integer, got 'x'\n"
        assert (await execute_line("trace-filter bogus=1", ctx)).text.startswith(
            "Error: trace-filter: Unknown trace filter 'bogus'")

        def io() -> None:  # from another thread, as an IOThread would
            T.NVME_IRQ.emit(ctrl="ctrl0", vector=1)
            for i in range(20):
                T.NVME_CMD_SUBMIT.emit(ctrl="ctrl0", qid=1, cid=i, opcode="read" if i % 2 else "write",
                                       nsid=1, slba=i, nlb=1, cdw10=0, cdw11=0)
            T.NVME_CMD_SUBMIT.emit(ctrl="ctrl0", qid=2, cid=99, opcode="read", nsid=1, slba=0, nlb=1,
                                   cdw10=0, cdw11=0)
        t = threading.Thread(target=io)
        t.start()
        t.join()
        deadline = time.monotonic() + 5                   # the lines reach the loop (sync point: the 5th)
        while "\n".join(printed).count("nvme_cmd_submit") < 5:
            assert time.monotonic() < deadline, printed
            await asyncio.sleep(0.005)
        text = "\n".join(printed)
        assert text.count("nvme_cmd_submit") == 5 and "opcode=write" not in text and "nvme_irq" not in text
        assert "qid=2" not in text
        await asyncio.sleep(1.0)                          # the window ends: drops reported
        assert "... 5 trace lines dropped" in "\n".join(printed)
        assert "rate: 5 lines/s (5 dropped so far)" in (await execute_line("trace-filter", ctx)).text
        assert (await execute_line("trace-filter off", ctx)).text == "" and view.filters == {}
        assert (await execute_line("trace-filter rate=0", ctx)).text.startswith("Error: trace-filter: rate must")
        assert (await execute_line("trace-event nvme_cmd_* off", ctx)).text == ""
        assert view not in TRACE.sinks
        detach()
        assert CURRENT_SHELL_VIEW.get() is None

    asyncio.run(go())


def test_parse_filter_spec() -> None:
    assert parse_filter_spec("ctrl=ctrl0, qid=1 opcode=read") == {"ctrl": "ctrl0", "qid": "1", "opcode": "read"}
    from nvshell.monitor.hmp import HMPError
    with pytest.raises(HMPError, match="expected KEY=VALUE"):
        parse_filter_spec("qid")
    with pytest.raises(HMPError, match="'qid' given twice"):
        parse_filter_spec("qid=1,qid=2")


def test_registered_in_schema(ctx: MonitorContext) -> None:
    names = {e["name"] for e in ctx.registry.schema() if e.get("meta-type") == "command"}
    assert {"x-trace-subscribe", "x-trace-unsubscribe", "x-trace-file", "x-query-latency"} <= names
    assert json.dumps(ctx.registry.schema())
    assert os.path.exists(Path(__file__).parent.parent / "scripts" / "nvtrace.py")
