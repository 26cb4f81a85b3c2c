"""Trace file decoder (device/trace_decode.py) and the nvtrace command (nvshell/nvtrace.py, scripts/nvtrace.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from nvshell.device.trace_decode import Summary, TraceDecodeError, filter_names, iter_records, to_json
from nvshell.nvtrace import main

ROOT = Path(__file__).resolve().parent.parent


def complete(i: int, opcode: str = "read", qid: int = 1, lat: float | None = None, status: str = "success") -> dict:
    return {"name": "nvme_cmd_complete", "ts": 1_700_000_000_000_000_000 + i, "ctrl": "ctrl0", "qid": qid,
            "cid": i, "opcode": opcode, "status": status, "lat_us": float(i + 1 if lat is None else lat),
            "result": 0}


def write_records(path: Path, records: list[dict]) -> None:
    path.write_bytes(b"".join(msgpack.packb(r) for r in records))


def test_iter_records_and_truncated_tail(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    recs = [complete(i) for i in range(100)]
    data = b"".join(msgpack.packb(r) for r in recs)
    path.write_bytes(data)
    assert list(iter_records(str(path))) == recs
    path.write_bytes(data[:-3])  # crash in the middle of the last record
    got: list[dict] = []
    with pytest.raises(TraceDecodeError, match="truncated record at end of file"):
        for r in iter_records(str(path)):
            got.append(r)
    assert got == recs[:-1]


def test_not_a_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    path.write_bytes(msgpack.packb([1, 2, 3]))
    with pytest.raises(TraceDecodeError, match="not a map"):
        list(iter_records(str(path)))


def test_follow_waits_for_partial_record(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    first = msgpack.packb(complete(0))
    second = msgpack.packb(complete(1))
    path.write_bytes(first + second[:5])  # writer is mid-record
    got: list[dict] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=lambda: got.extend(iter_records(str(path), follow=True, poll=0.01, stop=stop.is_set)))
    reader.start()
    deadline = time.monotonic() + 5
    while len(got) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # several polls with the partial record pending: must not fail or yield
    assert [r["cid"] for r in got] == [0] and reader.is_alive()
    with open(path, "ab") as f:
        f.write(second[5:])
        f.write(msgpack.packb(complete(2)))
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    reader.join(5)
    assert not reader.is_alive()
    assert [r["cid"] for r in got] == [0, 1, 2]


def test_follow_while_writer_runs(tmp_path: Path) -> None:
    """End to end: TraceFileWriter producing, decoder following, nothing lost or garbled."""
    from nvshell.device.trace_file import TraceFileWriter

    path = tmp_path / "t.msgpack"
    writer = TraceFileWriter(path, interval=0.005, batch=7)
    got: list[dict] = []
    done = threading.Event()
    reader = threading.Thread(
        target=lambda: got.extend(iter_records(str(path), follow=True, poll=0.005,
                                               stop=done.is_set)))
    reader.start()
    for i in range(500):
        writer(complete(i))
        if i % 50 == 0:
            time.sleep(0.01)
    writer.close()
    deadline = time.monotonic() + 5
    while len(got) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    reader.join(5)
    assert [r["cid"] for r in got] == list(range(500))


def test_summary_percentiles() -> None:
    s = Summary()
    for i in range(100):
        s.feed(complete(i, opcode="read", qid=1 + i % 2))
    for i in range(10):
        s.feed(complete(i, opcode="write", qid=1, lat=1000.0 + i, status="lba-out-of-range" if i < 2 else "success"))
    s.feed({"name": "nvme_doorbell", "ctrl": "ctrl0", "qid": 1, "kind": "sq", "value": 3})
    d = s.as_dict()
    assert d["events"] == {"nvme_cmd_complete": 110, "nvme_doorbell": 1}
    read = d["opcodes"]["read"]
    assert (read["count"], read["p50"], read["p90"], read["p99"], read["max"]) == (100, 50, 90, 99, 100)
    assert read["errors"] == 0 and d["opcodes"]["write"]["errors"] == 2
    assert d["opcodes"]["write"]["p50"] == 1004 and d["opcodes"]["write"]["max"] == 1009
    assert d["queues"]["ctrl0:1"]["count"] == 60 and d["queues"]["ctrl0:2"]["count"] == 50
    assert d["queues"]["ctrl0:2"]["max"] == 100  # odd i -> qid 2, lat i+1
    text = s.render()
    assert "latency per opcode (us):" in text and "latency per queue (us):" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("read"))
    assert line.split() == ["read", "100", "50.0", "90.0", "99.0", "100.0"]
    assert "errors=2" in next(ln for ln in text.splitlines() if ln.strip().startswith("write"))


def test_filters_and_json() -> None:
    recs = [complete(0), {"name": "nvme_doorbell", "ts": 1, "qid": 1}, {"name": "vfu_msg_in", "ts": 2, "b": b"\x01"}]
    assert [r["name"] for r in filter_names(recs, "nvme_*")] == ["nvme_cmd_complete", "nvme_doorbell"]
    assert list(filter_names(recs, None)) == recs
    assert json.loads(to_json(recs[2])) == {"name": "vfu_msg_in", "ts": 2, "b": "01"}


def test_main_text_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.msgpack"
    write_records(path, [complete(0), {"name": "nvme_doorbell", "ts": 5, "ctrl": "ctrl0", "qid": 1,
                                       "kind": "sq", "value": 3}])
    out = io.StringIO()
    assert main([str(path)], out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("nvme_cmd_complete ") and "lat=1.0us" in lines[0] and "status=success" in lines[0]
    assert lines[1].endswith("ctrl=ctrl0 qid=1 kind=sq value=3")
    out = io.StringIO()
    assert main([str(path), "--json", "--name", "nvme_door*"], out) == 0
    assert [json.loads(ln)["name"] for ln in out.getvalue().splitlines()] == ["nvme_doorbell"]
    out = io.StringIO()
    assert main([str(path), "--summary"], out) == 0
    assert "nvme_cmd_complete" in out.getvalue() and "latency per opcode" in out.getvalue()
    assert main([str(tmp_path / "missing")], io.StringIO()) == 2
    assert "No such file" in capsys.readouterr().err


def test_script_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    write_records(path, [complete(i) for i in range(3)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = str(ROOT / "scripts" / "nvtrace.py")
    r = subprocess.run([sys.executable, script, str(path), "--json"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln)["cid"] for ln in r.stdout.splitlines()] == [0, 1, 2]
    h = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert h.returncode == 0 and "--follow" in h.stdout and "--summary" in h.stdout and "--name GLOB" in h.stdout
    with open(path, "ab") as f:
        f.write(b"\x8a")  # a map header with no body: truncated record
    t = subprocess.run([sys.executable, script, str(path)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert t.returncode == 1 and len(t.stdout.splitlines()) == 3 and "truncated" in t.stderr
