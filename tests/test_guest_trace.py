"""Guest test: fio in a real Linux VM with ``nvme_cmd_*`` recorded to a file; the decoder's
per-opcode counts match fio's own I/O counts.

Why markers: the kernel reads the disk on its own (partition scan at boot), so the
recording holds more reads than fio issued.  The guest script sends an admin Get
Features for feature 0x07 just before fio and one for 0x08 just after; every record is
emitted on the controller's one IOThread, so the file order brackets fio's commands
exactly, and nothing else touches the raw device in between (O_DIRECT, no filesystem).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nvshell.device.trace_decode import Summary, iter_records
from tests.harness import REPO, NvshellProcess, require_guest, run_guest

pytestmark = pytest.mark.guest

GUEST_SCRIPT = r"""
set -e
DEV=/dev/nvme0n1
nvme get-feature /dev/nvme0 -f 0x7 >/dev/null 2>&1 || true
fio --name=traced --filename=$DEV --direct=1 --bs=4k --ioengine=libaio --iodepth=32 \
    --rw=randrw --rwmixread=60 --size=64M --number_ios=3000 --randrepeat=0 \
    --output-format=json >/tmp/fio.json 2>/tmp/fio.err || { cat /tmp/fio.err; exit 1; }
nvme get-feature /dev/nvme0 -f 0x8 >/dev/null 2>&1 || true
echo "@@FIO-JSON-BEGIN@@"
cat /tmp/fio.json
echo "@@FIO-JSON-END@@"
"""


def _fio_json(out: str) -> dict:
    m = re.search(r"@@FIO-JSON-BEGIN@@\s*(.*?)@@FIO-JSON-END@@", out, re.S)
    assert m, out
    text = m.group(1)
    return json.loads(text[text.index("{"):])  # fio may print notes before the JSON


def _between_markers(records: list[dict]) -> list[dict]:
    """Records after the Get Features 0x07 marker and before the 0x08 one."""
    def marker(r: dict, fid: int) -> bool:
        return (r["name"] == "nvme_cmd_submit" and r["qid"] == 0 and r["opcode"] == "get-features"
                and r["cdw10"] & 0xFF == fid)
    start = next(i for i, r in enumerate(records) if marker(r, 0x07))
    end = next(i for i, r in enumerate(records) if i > start and marker(r, 0x08))
    return records[start + 1:end]


def test_fio_counts_match_the_recorded_trace(tmp_path: Path) -> None:
    require_guest()
    trace = tmp_path / "fio.msgpack"
    with NvshellProcess(tmp_path / "run", "-trace", "nvme_cmd_*", "-trace", f"file={trace}") as nv:
        rc, out = run_guest([nv.run_dir / "ctrl0.sock"], GUEST_SCRIPT, timeout=150)
        assert rc == 0, out
    assert nv.proc is not None and nv.proc.returncode == 0, nv.log()  # SIGTERM: clean exit, file closed
    fio = _fio_json(out)["jobs"][0]
    fio_reads, fio_writes = fio["read"]["total_ios"], fio["write"]["total_ios"]
    assert fio_reads + fio_writes == 3000 and fio_reads > 0 and fio_writes > 0, fio

    records = list(iter_records(str(trace)))  # raises on a truncated tail
    window = _between_markers(records)
    summary = Summary()
    for r in window:
        if r.get("qid", 0) > 0:
            summary.feed(r)
    opcodes = summary.as_dict()["opcodes"]
    assert opcodes["read"]["count"] == fio_reads, (opcodes, fio_reads)
    assert opcodes["write"]["count"] == fio_writes, (opcodes, fio_writes)
    assert all(v["errors"] == 0 for v in opcodes.values())
    submits = [r for r in window if r["name"] == "nvme_cmd_submit" and r["qid"] > 0]
    assert sum(r["opcode"] == "read" for r in submits) == fio_reads
    assert all(r["nlb"] == 8 for r in submits if r["opcode"] in ("read", "write"))

    # The decoder script on the whole file: its per-opcode counts include fio's.
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "nvtrace.py"), "--summary", str(trace)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    m = re.search(r"^\s+read\s+(\d+)", done.stdout, re.M)
    assert m and int(m.group(1)) >= fio_reads, done.stdout
    m = re.search(r"^\s+write\s+(\d+)", done.stdout, re.M)
    assert m and int(m.group(1)) == fio_writes, done.stdout   # the kernel itself never writes here
