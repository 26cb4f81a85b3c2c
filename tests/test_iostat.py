"""``info iostat``: the monitor's sampler and table (x-nvme-query-iostat), and the shell's live
full-screen view in a pty (pexpect), local and over ``--connect``, while a vfio-user host does
I/O: the screen (read with pyte, a VT100 emulator) after a few refreshes."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pexpect
import pyte
import pytest

from nvshell.monitor.hmp_iostat import sparkline
from nvshell.testing import REPO, NvmeTestHost, NvshellProcess, QmpConnection

COLS, ROWS = 150, 30


class Load:
    """A vfio-user host writing on q1 and reading on q2 until stopped (at most 60 s)."""

    def __init__(self, socket: Path) -> None:
        self.host = NvmeTestHost(socket).start(io_queues=2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.host.io(0x01, 16, qid=1, depth=8)
            self.host.io(0x02, 8, qid=2, depth=4)
            time.sleep(0.002)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.host.close()


def test_latency_is_timed_only_while_watched(nvshell: NvshellProcess, qmp: QmpConnection) -> None:
    """Nobody asked yet: I/O is counted but not timed (no clock reads on the data path). The
    first query starts the watch; latency then comes from commands done after it."""
    host = NvmeTestHost(nvshell.socket()).start(io_queues=1)
    try:
        deadline = time.monotonic() + 2.5
        # 64 reads per call: each call takes a buffer from the host's never-freed guest RAM,
        # so the I/O rate a time-bounded loop reaches must not decide whether it runs out
        while time.monotonic() < deadline:     # two samples taken with nobody watching
            host.io(0x02, 64, qid=1, depth=4)
        data = qmp.execute("x-nvme-query-iostat", {"device": "ctrl0", "interval": 2})
        dev = data["devices"][0]
        assert dev["read-iops"] > 0 and dev["p50-us"] is None and dev["p99-us"] is None
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:     # watched now: timed
            host.io(0x02, 64, qid=1, depth=4)
        dev = qmp.execute("x-nvme-query-iostat", {"device": "ctrl0", "interval": 1})["devices"][0]
        assert dev["read-iops"] > 0 and dev["p50-us"] is not None and dev["p50-us"] <= dev["p99-us"]
    finally:
        host.close()


def test_query_and_table(nvshell: NvshellProcess, qmp: QmpConnection) -> None:
    idle = qmp.execute("x-nvme-query-iostat")
    assert [d["device"] for d in idle["devices"]] == ["ctrl0"] and idle["devices"][0]["iops"] == 0
    load = Load(nvshell.socket())
    try:
        time.sleep(3.2)
        data = qmp.execute("x-nvme-query-iostat", {"device": "ctrl0", "interval": 2})
    finally:
        load.close()
    dev = data["devices"][0]
    assert 1.5 < data["interval"] < 3
    assert dev["write-iops"] > 0 and dev["read-iops"] > 0 and dev["iops"] > 0
    assert dev["write-mbps"] == pytest.approx(dev["write-iops"] * 4096 / 1e6, rel=0.05)  # 8 x 512 B each
    assert dev["p50-us"] is not None and dev["p50-us"] <= dev["p99-us"]
    queues = {q["qid"]: q for q in dev["queues"]}
    assert set(queues) == {0, 1, 2} and queues[1]["size"] == 64 and queues[1]["iops"] > queues[2]["iops"] > 0
    # Per queue, no trace point on: q1 only writes (16 x 512 B), q2 only reads (8 x 512 B); the
    # queues' bytes are the SMART counters' shares (the memory backend completes as it counts).
    assert queues[1]["read-mbps"] == 0 and queues[2]["write-mbps"] == 0 and queues[0]["mbps"] == 0
    assert queues[1]["write-mbps"] > queues[2]["read-mbps"] > 0
    assert sum(q["write-mbps"] for q in queues.values()) == pytest.approx(dev["write-mbps"])
    assert sum(q["read-mbps"] for q in queues.values()) == pytest.approx(dev["read-mbps"])
    assert sum(q["mbps"] for q in queues.values()) == pytest.approx(dev["mbps"])
    assert queues[2]["read-mbps"] == pytest.approx(queues[2]["iops"] * 4096 / 1e6, rel=0.1)
    for q in (queues[1], queues[2]):
        assert q["p50-us"] is not None and q["p50-us"] <= q["p99-us"]
        assert q["p50-bucket"] and q["p99-bucket"]
    assert min(queues[1]["p50-us"], queues[2]["p50-us"]) <= dev["p50-us"] <= max(queues[1]["p50-us"],
                                                                                queues[2]["p50-us"])
    assert sum(1 for v in queues[1]["history"] if v > 0) >= 2
    text = qmp.hmp("info iostat 2")
    assert re.search(r"^ctrl0\s+all\s+\d", text, re.M)
    # q1: IOPS, MB/s, occupancy (the newest sample may be taken mid-I/O), p50, p99 of its own
    assert re.search(r"^\s+q1\s+\d+\s+\d+\.\d\d\s+\d+/64\s+<\d+(us|ms)\s+<\d+(us|ms)\s+\|", text, re.M), text
    for bad, msg in (("info iostat 0", "Parameter 'interval' expects"), ("info iostat x", "must be a number"),
                     ("info iostat 1 nope", "Device 'nope' not found")):
        assert msg in qmp.hmp(bad)


def test_sparkline() -> None:
    assert sparkline([0, 1, 2, 4, 8], width=6, per_char=1) == "  ▂▃▅█"
    # Two seconds a character, newest last: (0+0), (2+2), (8+8) -> blank, 3/8 height, full.
    # The oldest second (9) does not fill a pair and is left out.
    assert sparkline([9, 0, 0, 2, 2, 8, 8], width=4, per_char=2) == "  ▃█"
    assert sparkline([], width=3) == "   " and sparkline([0, 0], width=2) == "  "


def _screen_text(screen: pyte.Screen) -> str:
    return "\n".join(line.rstrip() for line in screen.display)


def _pump(child: pexpect.spawn, stream: pyte.Stream, until: float) -> None:
    while time.monotonic() < until:
        try:
            stream.feed(child.read_nonblocking(65536, timeout=0.1))
        except pexpect.TIMEOUT:
            pass


def _wait_screen(child: pexpect.spawn, stream: pyte.Stream, screen: pyte.Screen, pattern: str,
                 timeout: float = 20) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, _screen_text(screen), re.M)
        if m:
            return m
        assert time.monotonic() < deadline, f"screen never showed {pattern!r}:\n{_screen_text(screen)}"
        _pump(child, stream, time.monotonic() + 0.2)


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), NVSHELL_MENU_ROWS="0", TERM="xterm", COLUMNS=str(COLS),
                LINES=str(ROWS))


@pytest.mark.parametrize("where", ["local", "remote"])
def test_live_view_in_a_pty(where: str, tmp_path: Path, shell_env: dict[str, str]) -> None:
    run = tmp_path / "run"
    server = None
    args = ["-m", "nvshell", "--history-file", str(tmp_path / "hist")]
    if where == "local":
        args += ["--run-dir", str(run)]
    else:
        server = NvshellProcess(run).start()
        args += ["--connect", f"unix:{run / 'qmp.sock'}"]
    child = pexpect.spawn(sys.executable, args, env=shell_env, cwd=str(tmp_path), encoding="utf-8",
                          timeout=20, dimensions=(ROWS, COLS))
    child.logfile_read = open(tmp_path / "pty.log", "w")
    screen = pyte.Screen(COLS, ROWS)
    stream = pyte.Stream(screen)
    load = None
    try:
        _wait_screen(child, stream, screen, r"\(nvshell\)")
        while not (run / "ctrl0.sock").is_socket():
            time.sleep(0.05)
        load = Load(run / "ctrl0.sock")
        child.send("info iostat 1\r")
        # A few refreshes while the host does I/O: the footer counts them, the rows have rates.
        _wait_screen(child, stream, screen, r"every 1 s, refresh [4-9]\b", timeout=30)
        text = _screen_text(screen)
        assert "info iostat 1" in text and "I/O over the last" in text
        m = re.search(r"ctrl0\s+all\s+(\d+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(<\S+)\s+(<\S+)\s+\|(.*)\|", text)
        assert m, text
        assert int(m.group(1)) > 0 and float(m.group(4)) > 0       # IOPS and MB/s of live I/O
        assert len(m.group(7)) == 30 and re.search("[▁▂▃▄▅▆▇█]{2}$", m.group(7)), m.group(7)
        # q1 (no trace point on): IOPS, MB/s, occupancy, p50 and p99 of its own
        q1 = re.search(r"^\W*q1\s+(\d+)\s+([\d.]+)\s+(\d+)/64\s+(<\S+)\s+(<\S+)\s+\|(.*)\|", text, re.M)
        assert q1 and int(q1.group(1)) > 0 and float(q1.group(2)) > 0, text
        assert "(nvshell)" not in text                              # full screen: the prompt is gone
        child.send("q")
        _wait_screen(child, stream, screen, r"\(nvshell\)\s*$")     # back at the prompt, screen restored
        load.close()
        load = None
        child.send("info iostat\r")                                 # one table, printed at the prompt
        _wait_screen(child, stream, screen, r"^ctrl0\s+all\s+")
        child.send("info iostat 1 nosuch\r")                        # a refused view: its error, no screen
        _wait_screen(child, stream, screen, r"Error: Device 'nosuch' not found")
        child.send("quit\r")
        child.expect(pexpect.EOF)
    finally:
        if load is not None:
            load.close()
        if child.isalive():
            child.terminate(force=True)
        if server is not None:
            server.stop()
