"""Trace file writer (device/trace_file.py): batching thread, round trip, errors."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgpack
import pytest

from nvshell.device.trace import TraceError, TraceRegistry
from nvshell.device.trace_decode import iter_records
from nvshell.device.trace_file import TraceFileWriter


def test_round_trip_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    writer = TraceFileWriter(path, interval=0.01, batch=64)
    n = 5000
    start = threading.Barrier(2)

    def produce(tid: int) -> None:
        start.wait()
        for i in range(n):
            writer({"name": "nvme_cmd_submit", "ts": i, "tid": tid, "seq": i, "ctrl": "ctrl0"})

    threads = [threading.Thread(target=produce, args=(t,)) for t in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert writer.closed and writer.written == 2 * n and writer.dropped == 0
    records = list(iter_records(str(path)))
    assert len(records) == 2 * n
    for tid in (0, 1):
        assert [r["seq"] for r in records if r["tid"] == tid] == list(range(n))
    assert set(records[0]) == {"name", "ts", "tid", "seq", "ctrl"}


def test_close_flushes_without_waiting_for_the_timer(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    writer = TraceFileWriter(path, interval=60.0)  # the timer would never fire in the test
    for i in range(10):
        writer({"name": "x", "ts": i})
    writer.close()
    writer.close()  # idempotent
    assert [r["ts"] for r in iter_records(str(path))] == list(range(10))
    writer({"name": "late", "ts": 0})
    assert writer.dropped == 1


def test_flush_and_batch_wakeup(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    with TraceFileWriter(path, interval=60.0, batch=4) as writer:
        writer({"name": "a", "ts": 1})
        assert writer.flush(timeout=5)
        assert os.path.getsize(path) > 0
        for i in range(4):  # a full batch wakes the writer before the timer
            writer({"name": "b", "ts": i})
        assert writer.flush(timeout=5)
        assert writer.written == 5
    assert len(list(iter_records(str(path)))) == 5


def test_records_are_plain_msgpack_maps(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    with TraceFileWriter(path) as writer:
        writer({"name": "vfu_dma_map", "ts": 123, "addr": 2**63, "prot": "rw", "obj": object()})
    data = path.read_bytes()
    rec = msgpack.unpackb(data, raw=False)
    assert rec["name"] == "vfu_dma_map" and rec["ts"] == 123 and rec["addr"] == 2**63
    assert rec["obj"].startswith("<object")  # unknown types become strings, never break the thread


def test_bad_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="Could not open trace file '.*/nodir/t.msgpack': No such file"):
        TraceFileWriter(tmp_path / "nodir" / "t.msgpack")
    with pytest.raises(TraceError, match="Could not open trace file"):
        TraceFileWriter(tmp_path)  # a directory


def test_append_mode(tmp_path: Path) -> None:
    path = tmp_path / "t.msgpack"
    for i in range(2):
        with TraceFileWriter(path, append=True) as w:
            w({"name": "x", "ts": i})
    assert [r["ts"] for r in iter_records(str(path))] == [0, 1]
    with TraceFileWriter(path) as w:  # default truncates, like QEMU's -trace file=
        w({"name": "x", "ts": 9})
    assert [r["ts"] for r in iter_records(str(path))] == [9]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_write_errors_are_logged_once_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    writer = TraceFileWriter("/dev/full", interval=0.01)
    for batch in range(3):
        writer({"name": "x", "ts": batch})
        writer.flush(timeout=5)
    writer.close()
    assert writer.write_errors >= 3 and writer.dropped == 3 and writer.written == 0
    assert sum("write failed" in r.getMessage() for r in caplog.records) == 1


def test_as_registry_sink(tmp_path: Path) -> None:
    reg = TraceRegistry()
    tp = reg.point("nvme_irq", ctrl=str, vector=int, doc="irq")
    path = tmp_path / "t.msgpack"
    writer = TraceFileWriter(path)
    reg.add_sink(writer)
    reg.set_state("nvme_*", True)
    for v in range(3):
        tp.emit(ctrl="ctrl0", vector=v)
    reg.remove_sink(writer)
    writer.close()
    recs = list(iter_records(str(path)))
    assert [(r["name"], r["ctrl"], r["vector"]) for r in recs] == [("nvme_irq", "ctrl0", v) for v in range(3)]
    assert all(isinstance(r["ts"], int) for r in recs)
