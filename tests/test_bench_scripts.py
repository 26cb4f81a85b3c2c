"""The benchmark scripts users run keep working: ``scripts/bench_device.py`` in process and over
vfio-user (a short run each; numbers are not judged, only that every command completed with
the interrupts and doorbells the mode implies)."""

from __future__ import annotations

import json
import subprocess
import sys

from nvshell.testing import REPO


def _bench_device(*args: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_device.py"), "--json", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bench_device_in_process() -> None:
    qd1, qd8 = _bench_device("--inproc", "--qd", "1,8", "--count", "300")
    assert qd1["qd"] == 1 and qd1["commands"] == 300 and qd1["interrupts_per_cmd"] == 1.0
    assert qd8["qd"] == 8 and qd8["interrupts_per_cmd"] < 1.0 and qd8["cpu_us_per_cmd"] > 0


def test_bench_device_over_vfio_user_with_props() -> None:
    (qd1,) = _bench_device("--qd", "1", "--count", "300", "--no-shadow", "--props", "poll-max-ns=0")
    assert qd1["commands"] == 300 and qd1["doorbells_per_cmd"] >= 2.0   # SQ tail + CQ head, trapped
    assert qd1["cpu_us_per_cmd"] > 0
