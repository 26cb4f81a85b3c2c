"""Perfetto export (device/trace_perfetto.py, ``nvtrace export``): a real recording of a
vfio-user host's commands, exported and parsed back with Perfetto's own protobuf classes,
checked against the recording track by track, slice by slice, argument by argument."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgpack
import pytest

from nvshell.device.trace_perfetto import BOOTTIME, MONOTONIC, REALTIME, parse
from nvshell.nvtrace import main
from nvshell.testing import REPO, NvmeTestHost, NvshellProcess, read_trace


def _export(src: Path, out: Path, *extra: str) -> None:
    assert main(["export", "--perfetto", str(out), str(src), *extra]) == 0


@pytest.mark.nvshell("-trace", "nvme_*")
def test_round_trip_matches_the_recording(nvshell: NvshellProcess, qmp, tmp_path: Path) -> None:
    rec = tmp_path / "t.msgpack"
    qmp.trace_file(rec)
    with NvmeTestHost(nvshell.socket()) as host:
        host.start(io_queues=2)
        # The controller runs a command from fetch to CQE in one go; held commands overlap.
        qmp.add_fault("d1", qid=1, opcode="write", action="delay", delay=50, count=4)
        host.io(0x01, 40, qid=1, depth=8)             # overlapping commands on q1
        host.io(0x02, 25, qid=2, depth=1, nlb=16)     # one at a time on q2
    qmp.trace_file(None)
    records = read_trace(rec)
    out = tmp_path / "t.pftrace"
    _export(rec, out)
    trace = parse(out.read_bytes())

    # Clocks: every event on REALTIME, with one snapshot relating it to BOOTTIME and MONOTONIC.
    assert trace.clock_ids == {REALTIME}
    assert len(trace.clock_snapshots) == 1 and set(trace.clock_snapshots[0]) == {REALTIME, MONOTONIC, BOOTTIME}

    names = set(trace.tracks.values())
    assert {"ctrl0", "ctrl0 events", "ctrl0 q0", "ctrl0 q1", "ctrl0 q2", "ctrl0 q1 depth", "ctrl0 q1 doorbells"} <= names
    ctrl_uuid = next(u for u, n in trace.tracks.items() if n == "ctrl0")
    assert all(trace.parents[u] == ctrl_uuid for u, n in trace.tracks.items() if n != "ctrl0")

    # One slice per recorded command, on its queue's track, with the recording's arguments.
    submits = [r for r in records if r["name"] == "nvme_cmd_submit"]
    completes = {(r["qid"], r["cid"], r["ts"] > 0): r for r in records if r["name"] == "nvme_cmd_complete"}
    assert Counter(s.track for s in trace.slices) == Counter(f"ctrl0 q{r['qid']}" for r in submits)
    assert Counter(s.track for s in trace.slices)["ctrl0 q1"] == 40
    by_start = {(s.track, s.start): s for s in trace.slices}
    for sub in submits:
        s = by_start[(f"ctrl0 q{sub['qid']}", sub["ts"])]
        done = completes[(sub["qid"], sub["cid"], True)]
        assert s.name == sub["opcode"] and s.end == done["ts"]
        assert s.args == {"opcode": sub["opcode"], "cid": sub["cid"], "nsid": sub["nsid"], "slba": sub["slba"],
                          "nlb": sub["nlb"], "status": done["status"], "lat_us": done["lat_us"],
                          "result": done["result"]}
    q2 = trace.slices_on("ctrl0 q2")
    assert {s.args["nlb"] for s in q2} == {16} and all(s.args["status"] == "success" for s in q2)

    # Lanes: slices of one lane never overlap; q1 (depth 8) needed several, q2 (depth 1) one.
    for uuid in {s.uuid for s in trace.slices}:
        lane = sorted((s.start, s.end) for s in trace.slices if s.uuid == uuid)
        assert all(a[1] <= b[0] for a, b in zip(lane, lane[1:]))
    assert len({s.uuid for s in trace.slices_on("ctrl0 q1")}) > 1
    assert len({s.uuid for s in q2}) == 1

    # Queue depth counter: above 1 while writes were held on q1, never above 1 on q2, 0 at the end.
    q1_depth = [v for _, v in trace.counters["ctrl0 q1 depth"]]
    assert 1 < max(q1_depth) <= 8 and q1_depth[-1] == 0
    assert max(v for _, v in trace.counters["ctrl0 q2 depth"]) == 1

    # Instants: every doorbell on its queue's doorbell track, controller enable and IRQs on events.
    doorbells = Counter(f"ctrl0 q{r['qid']} doorbells" for r in records if r["name"] == "nvme_doorbell")
    assert Counter(t for t, n, _, _ in trace.instants if n.endswith("doorbell")) == doorbells
    events = Counter(n for t, n, _, _ in trace.instants if t == "ctrl0 events")
    assert events["nvme_ctrl_enable"] == 1
    assert events["nvme_irq"] == sum(r["name"] == "nvme_irq" for r in records) > 0


def _rec(name: str, ts: int, **fields: object) -> bytes:
    return msgpack.packb({"name": name, "ts": ts, "ctrl": "c0", **fields})


def test_completion_only_recording_and_faults(tmp_path: Path) -> None:
    """With only nvme_cmd_complete recorded a slice starts lat_us before its CQE; fault hits and
    state changes become instants; a cid reused without a completion closes the stale slice."""
    base = 1_700_000_000_000_000_000
    rec = tmp_path / "t.msgpack"
    rec.write_bytes(b"".join([
        _rec("nvme_ctrl_enable", base, cc=0x460001),
        _rec("nvme_cmd_complete", base + 50_000, qid=1, cid=7, opcode="read", status="success", lat_us=20.0, result=0),
        _rec("nvme_fault_hit", base + 60_000, rule="f1", action="status", qid=1, cid=8, opcode="read"),
        _rec("nvme_cmd_submit", base + 70_000, qid=1, cid=9, opcode="write", nsid=1, slba=0, nlb=8, cdw10=0, cdw11=0),
        _rec("nvme_cmd_submit", base + 90_000, qid=1, cid=9, opcode="write", nsid=1, slba=8, nlb=8, cdw10=8, cdw11=0),
        _rec("nvme_ctrl_fatal", base + 95_000, reason="fault f2"),
        _rec("vfu_msg_in", base + 96_000, cmd="REGION_READ", msg_id=1, size=16),   # no place in the timeline
    ]))
    out = tmp_path / "t.pftrace"
    _export(rec, out)
    trace = parse(out.read_bytes())
    first, stale, last = trace.slices
    assert (first.start, first.end, first.args["lat_us"]) == (base + 30_000, base + 50_000, 20.0)
    assert (stale.start, stale.end, stale.args["status"]) == (base + 70_000, base + 90_000,
                                                              "unknown (no completion recorded)")
    assert last.end is None and last.args["slba"] == 8           # still running at the end of the file
    hits = [(t, n, a) for t, n, _, a in trace.instants]
    assert ("c0 q1 doorbells", "nvme_fault_hit", {"rule": "f1", "action": "status", "cid": 8, "opcode": "read"}) in hits
    assert [n for t, n, _ in hits if t == "c0 events"] == ["nvme_ctrl_enable", "nvme_ctrl_fatal"]


def test_follow_exports_a_growing_recording(tmp_path: Path) -> None:
    rec = tmp_path / "live.msgpack"
    out = tmp_path / "live.pftrace"
    rec.write_bytes(b"")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "nvshell.nvtrace", "export", "--perfetto", str(out),
                             "--follow", str(rec)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = time.time_ns()
        with open(rec, "ab") as f:
            for i in range(30):
                f.write(_rec("nvme_cmd_complete", base + 1000 * i, qid=1, cid=i, opcode="read",
                             status="success", lat_us=0.5, result=0))
                f.flush()
        deadline = time.monotonic() + 20
        while len(parse(out.read_bytes()).slices) < 30 if out.exists() else True:
            assert time.monotonic() < deadline and proc.poll() is None, "export --follow did not catch up"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert "30 command slices (30 completed)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--perfetto", str(tmp_path / "o"), str(tmp_path / "missing")]) == 2
    assert "No such file" in capsys.readouterr().err
    assert main(["export", "--perfetto", str(tmp_path / "nodir" / "o"), str(tmp_path / "missing")]) == 2
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(_rec("nvme_irq", 1, vector=1) + b"\x8a")
    assert main(["export", "--perfetto", str(tmp_path / "o"), str(bad)]) == 1
    assert "truncated" in capsys.readouterr().err
    assert len(parse((tmp_path / "o").read_bytes()).instants) == 1     # what came before is kept
    with pytest.raises(SystemExit):
        main(["export", str(bad)])                                          # --perfetto is required
    assert "--perfetto" in capsys.readouterr().err
