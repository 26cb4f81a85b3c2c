"""Guest tests of fault injection: one per action, against the real Linux nvme driver.

Why interactive: a rule must be added while the guest runs (boot-time partition scans
must not hit it) and removed before the final fio verify. The guest script prints
``@@HOST <shell command>`` and sleeps; this side runs the command over QMP
(``human-monitor-command``, so the shell syntax of the README is what is tested) and
echoes the answer into the transcript as ``@@HOST> ...`` lines. Every test ends with
the rule removed and a fio verify that must pass: nothing is lost beyond what the fault
itself defines.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import GUEST_DIR, GUEST_SCRIPTS, NvshellProcess, require_guest

pytestmark = pytest.mark.guest


@pytest.fixture(autouse=True)
def _guest_available() -> None:
    require_guest()


class QMP:
    """A minimal blocking QMP client that keeps the events it sees."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rwb")
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        json.loads(self.file.readline())            # greeting
        self.execute("qmp_capabilities")

    def execute(self, name: str, args: dict[str, Any] | None = None) -> Any:
        with self.lock:
            msg: dict[str, Any] = {"execute": name}
            if args is not None:
                msg["arguments"] = args
            self.file.write(json.dumps(msg).encode() + b"\n")
            self.file.flush()
            while True:
                reply = json.loads(self.file.readline())
                if "event" in reply:
                    self.events.append(reply)
                    continue
                if "error" in reply:
                    raise RuntimeError(reply["error"]["desc"])
                return reply["return"]

    def hmp(self, line: str) -> str:
        return str(self.execute("human-monitor-command", {"command-line": line}))

    def drain_events(self) -> list[dict[str, Any]]:
        """Events received so far (a cheap command flushes the ones already sent)."""
        self.execute("query-version")
        return list(self.events)

    def close(self) -> None:
        self.sock.close()


def run_interactive(nv: NvshellProcess, script: str, *, timeout: int = 240, append: str = "",
                    env: dict[str, str] | None = None) -> tuple[int, str, QMP]:
    """Boot the guest on ctrl0 with fault-lib.sh + ``script``; serve its ``@@HOST`` lines."""
    text = (GUEST_SCRIPTS / "fault-lib.sh").read_text() + "\n" + (GUEST_SCRIPTS / script).read_text()
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nvshell-fault-{os.getpid()}-{time.monotonic_ns()}.sh"
    path.write_text(text)
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(path), "--timeout", str(timeout),
           "--socket", str(nv.run_dir / "ctrl0.sock")]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    if append:
        cmd += ["--append", append]
    qmp = QMP(nv.run_dir / "qmp.sock")
    lines: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(timeout + 60, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            if line.startswith("@@HOST "):
                try:
                    answer = qmp.hmp(line[len("@@HOST "):])
                except Exception as exc:  # shown in the transcript; the assertions decide
                    answer = f"QMP error: {exc}"
                lines += ["@@HOST> " + a for a in answer.splitlines()]
        rc = proc.wait()
    finally:
        timer.cancel()
        path.unlink(missing_ok=True)
    return rc, "\n".join(lines), qmp


def _ms(out: str, what: str) -> int:
    m = re.search(rf"^{re.escape(what)} \w+ ms=(\d+)", out, re.M)
    assert m, f"no '{what}' line in:\n{out}"
    return int(m.group(1))


def _hits(out: str, rule: str) -> int:
    """The hits column of ``info faults`` for ``rule`` (last table printed)."""
    rows = re.findall(rf"^@@HOST> {re.escape(rule)}\s.*\s(\d+)\s+(\d+)$", out, re.M)
    assert rows, f"no 'info faults' row for {rule}:\n{out}"
    return int(rows[-1][0])


def _events(qmp: QMP, rule: str) -> list[dict[str, Any]]:
    return [e["data"] for e in qmp.drain_events() if e["event"] == "X_NVME_FAULT_INJECTED" and e["data"]["id"] == rule]


def _ok_after(out: str) -> None:
    assert "final fio verify ok" in out, out
    assert "@@HOST> Error" not in out and "QMP error" not in out, out


def test_status_unrecovered_read_error_on_exact_range(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-status.sh")
        events = _events(qmp, "f1")
    assert rc == 0, out
    for rng in ("4096+8", "4100+1", "4103+2"):
        # the kernel maps a media error (BLK_STS_MEDIUM) to ENODATA
        assert re.search(rf"^read {re.escape(rng)} FAILED .*No data available", out, re.M), out
    for rng in ("4088+8", "4104+8"):
        assert re.search(rf"^read {re.escape(rng)} ok", out, re.M), out
    assert _hits(out, "f1") == 3, out
    # after fault_del the range reads; without DNR (count=1) Linux retried transparently
    assert len(re.findall(r"^read 4096\+8 ok", out, re.M)) == 2, out
    assert _hits(out, "f2") == 1, out
    assert re.search(r"dmesg: .*critical medium error, dev nvme0(c0)?n1, sector 4096 op 0x0:\(READ\)", out), out
    assert re.search(r"dmesg: .*I/O Cmd\(0x2\) @ LBA 4096, 8 blocks, I/O Error \(sct 0x2 / sc 0x81\) DNR", out), out
    assert len(events) == 3 and events[0]["opcode"] == "read" and events[0]["slba"] == 4096, events
    _ok_after(out)


def test_delay_completes_late(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-delay.sh")
    assert rc == 0, out
    delays = [int(ms) for ms in re.findall(r"^read 8192\+8 ok ms=(\d+)", out, re.M)]
    assert len(delays) == 2, out
    assert delays[0] >= 1450, out                       # delayed by the rule
    assert delays[1] < 1000, out                        # rule gone: back to normal
    others = [int(ms) for ms in re.findall(r"^read 8184\+8 ok ms=(\d+)", out, re.M)]
    assert others and max(others) < 1000, out           # outside the range: not delayed
    _ok_after(out)


def test_drop_times_out_aborts_and_resumes(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-drop.sh", append="nvme_core.io_timeout=3")
    assert rc == 0, out
    first = _ms(out, "read 12288+8")
    assert first >= 2900, out                           # waited for the 3 s timeout
    assert re.search(r"dmesg: .*nvme nvme0: I/O tag \d+ \(\w+\) opcode 0x2 \([^)]*\) QID \d+ timeout", out), out
    assert re.search(r"dmesg: .*(aborting|resetting controller|Abort status)", out), out
    assert len(re.findall(r"^read 12288\+8 ok", out, re.M)) == 2, out   # retried; then normal
    assert _hits(out, "x1") == 1, out
    _ok_after(out)


def test_corrupt_read_data_fio_verify_reports_offset(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-corrupt.sh")
    assert rc == 0, out
    assert "fio corrupt job failed" in out, out
    assert re.search(r"fio: .*(verify failed|bad magic|bad header).*offset[= ]12582912\b", out), out
    assert "fio verify of the same data ok" in out, out      # the data on the medium was never bad
    _ok_after(out)


def test_dma_error_write_fails_with_data_transfer_error(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-dma.sh")
    assert rc == 0, out
    assert re.search(r"^write 28672\+8 FAILED .*Input/output error", out, re.M), out
    assert re.search(r"^write 28668\+8 FAILED", out, re.M), out   # overlaps 28672..28679
    assert re.search(r"^write 28680\+8 ok", out, re.M), out       # just after the range
    assert re.search(r"dmesg: .*I/O Cmd\(0x1\) @ LBA 28672, 8 blocks, I/O Error \(sct 0x0 / sc 0x4\)", out), out
    assert re.search(r"dmesg: .*I/O error, dev nvme0(c0)?n1, sector 28672 op 0x1:\(WRITE\)", out), out
    assert re.search(r"^write 28672\+8 ok", out, re.M), out
    assert _hits(out, "m1") == 12, out    # two failed writes, each tried 1 + nvme_core.max_retries (5) times
    _ok_after(out)


def test_fatal_status_driver_resets_and_recovers(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-fatal.sh", append="nvme_core.io_timeout=3")
    assert rc == 0, out
    assert re.search(r"^write 20480\+8 ok", out, re.M), out          # requeued after the reset
    assert _ms(out, "write 20480+8") >= 2900, out
    assert re.search(r"dmesg: .*controller is down; will reset: CSTS=0x3", out), out
    assert re.search(r"^read 20480\+8 ok", out, re.M), out
    assert "namespace listed after reset" in out, out
    _ok_after(out)


def test_namespace_not_ready_then_removed_for_a_while(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-ns.sh", timeout=300)
    assert rc == 0, out
    reads = re.findall(r"^read 32768\+8 (ok|FAILED)", out, re.M)
    assert reads == ["FAILED", "ok"], out                 # not ready, then ready after 2 s
    assert re.search(r"^read 40000\+8 FAILED", out, re.M), out       # the whole namespace
    assert re.search(r"dmesg: .*(Namespace Not Ready|sc 0x82)", out), out
    assert re.search(r"^read 36864\+8 FAILED", out, re.M), out
    assert "namespace gone" in out and "namespace back" in out, out
    assert re.search(r"^read 36864\+8 ok", out, re.M), out
    _ok_after(out)


def test_aen_temperature_warning_seen_by_driver_and_smart_log(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-aen.sh")
    assert rc == 0, out
    assert re.search(r"^before: critical_warning\s*: 0$", out, re.M), out
    assert re.search(r"^trace: .*nvme_async_event: nvme0: NVME_AEN=0x020101 \[NVME_AER_SMART\]", out, re.M), out
    assert re.search(r"^after: critical_warning\s*: 0x2$", out, re.M), out
    assert re.search(r"^after: temperature\s*: 80 °?C", out, re.M), out
    assert re.search(r"^removed: critical_warning\s*: 0$", out, re.M), out
    _ok_after(out)


def test_irq_loss_timeout_polls_completion(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run") as nv:
        rc, out, qmp = run_interactive(nv, "fault-irq.sh", append="nvme_core.io_timeout=3")
    assert rc == 0, out
    assert _ms(out, "read 16384+8") >= 2900, out
    assert re.search(r"dmesg: .*I/O tag \d+ \(\w+\) QID \d+ timeout, completion polled", out), out
    assert len(re.findall(r"^read 16384\+8 ok", out, re.M)) == 2, out
    _ok_after(out)
