"""Guest test for the user-facing tools, in one boot: ``nvshell-vm`` boots the guest harness's
kernel with the harness's QEMU (inside its chroot) against a running nvshell, fio runs in the
guest, and the recording of it, exported with ``nvtrace export --perfetto``, holds one slice per
fio I/O on the queue tracks where the commands were fetched.

Why markers: the kernel reads the disk on its own (partition scan), so the script sends an admin
Get Features 0x07 just before fio and 0x08 just after; every record comes from the controller's
one IOThread, so the markers' fetch times bracket fio's commands exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from nvshell.device.trace_perfetto import parse
from tests.harness import GUEST_DIR, NVGUEST_DIR, REPO, NvshellProcess, read_trace, require_guest

pytestmark = pytest.mark.guest

FIO_IOS = 2000

GUEST_SCRIPT = rf"""
set -e
DEV=/dev/nvme0n1
nvme get-feature /dev/nvme0 -f 0x7 >/dev/null 2>&1 || true
fio --name=traced --filename=$DEV --direct=1 --bs=4k --ioengine=libaio --iodepth=16 \
    --rw=randrw --rwmixread=50 --size=64M --number_ios={FIO_IOS} --randrepeat=0 --cpus_allowed=1 \
    --output-format=json >/tmp/fio.json 2>/tmp/fio.err || {{ cat /tmp/fio.err; exit 1; }}
nvme get-feature /dev/nvme0 -f 0x8 >/dev/null 2>&1 || true
echo "@@FIO-JSON-BEGIN@@"
cat /tmp/fio.json
echo "@@FIO-JSON-END@@"
"""

#: QEMU as the guest harness runs it: inside the sid chroot (common.sh's nvg_chroot), with the
#: socket directory and the work directory bind-mounted at their own paths.
QEMU_WRAPPER = """#!/bin/bash
. {common}
NVG_EXEC=1 nvg_chroot -b {sockdir} -b {work} -- qemu-system-x86_64 "$@"
"""


def _fio_json(out: str) -> dict:
    m = re.search(r"@@FIO-JSON-BEGIN@@\s*(.*?)@@FIO-JSON-END@@", out, re.S)
    assert m, out
    text = m.group(1)
    return json.loads(text[text.index("{"):])


def test_nvshell_vm_boots_fio_and_the_perfetto_export_counts_its_ios(tmp_path: Path) -> None:
    require_guest()
    (NVGUEST_DIR / "run").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nvshell-vm.", dir=NVGUEST_DIR / "run"))  # seen inside the chroot
    try:
        trace = tmp_path / "fio.msgpack"
        with NvshellProcess(tmp_path / "run", "-trace", "nvme_cmd_*", "-trace", f"file={trace}") as nv:
            qemu = work / "qemu"
            qemu.write_text(QEMU_WRAPPER.format(common=GUEST_DIR / "common.sh", sockdir=nv.run_dir, work=work))
            qemu.chmod(0o755)
            (work / "script.sh").write_text(GUEST_SCRIPT)
            image = "/opt/nvguest"  # the guest kernel and initramfs, as QEMU sees them in the chroot
            cmd = [sys.executable, "-m", "nvshell.vm", "--run-dir", str(nv.run_dir), "--qemu", str(qemu),
                   "--kernel", f"{image}/vmlinuz", "--initrd", f"{image}/initramfs.cpio.gz",
                   "--append", "panic=-1 quiet mitigations=off nvguest.out=ttyS1 nvguest.settle=15",
                   "--console", f"file:{work}/console.log", "--mem", "1G",
                   "--", "-nodefaults", "-no-reboot", "-serial", f"file:{work}/out.log",
                   "-fw_cfg", f"name=opt/nvguest/script,file={work}/script.sh"]
            env = dict(os.environ, PYTHONPATH=str(REPO))
            dry = subprocess.run([*cmd[:3], "--dry-run", *cmd[3:]], capture_output=True, text=True, timeout=60, env=env)
            assert dry.returncode == 0, dry.stderr
            assert f'"path":"{nv.run_dir}/ctrl0.sock"' in dry.stdout and "share=on" in dry.stdout
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
            console = (work / "console.log").read_text(errors="replace")
            out = (work / "out.log").read_text(errors="replace")
            assert done.returncode == 0, (done.stderr, console[-3000:], out)
            assert "@@NVGUEST-END rc=0" in console, (console[-3000:], out)
        assert nv.proc is not None and nv.proc.returncode == 0, nv.log()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    fio = _fio_json(out)["jobs"][0]
    fio_reads, fio_writes = fio["read"]["total_ios"], fio["write"]["total_ios"]
    assert fio_reads + fio_writes == FIO_IOS and fio_reads > 0 and fio_writes > 0, fio

    records = read_trace(trace)

    def marker(r: dict, fid: int) -> bool:
        return (r["name"] == "nvme_cmd_submit" and r["qid"] == 0 and r["opcode"] == "get-features"
                and r["cdw10"] & 0xFF == fid)
    start = next(r["ts"] for r in records if marker(r, 0x07))
    end = next(r["ts"] for r in records if r["ts"] > start and marker(r, 0x08))
    fetched = Counter(r["qid"] for r in records
                      if r["name"] == "nvme_cmd_submit" and start < r["ts"] < end and r["qid"] > 0)

    pftrace = tmp_path / "fio.pftrace"
    exported = subprocess.run([sys.executable, "-m", "nvshell.nvtrace", "export", "--perfetto", str(pftrace),
                               str(trace)], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert exported.returncode == 0, exported.stderr
    timeline = parse(pftrace.read_bytes())
    fio_slices = [s for s in timeline.slices if start < s.start < end and s.track != "ctrl0 q0"]
    per_track = Counter(s.track for s in fio_slices)
    ops = Counter(s.name for s in fio_slices)
    # One slice per fio I/O, each on the track of the queue it was fetched from ...
    assert ops == {"read": fio_reads, "write": fio_writes}, (ops, fio_reads, fio_writes)
    assert per_track == {f"ctrl0 q{qid}": n for qid, n in fetched.items()}, (per_track, fetched)
    # ... and fio ran on one CPU (--cpus_allowed=1), so the nvme driver used that CPU's one queue.
    assert len(per_track) == 1, per_track
    assert all(s.end is not None and s.args["status"] == "success" and s.args["nlb"] == 8 for s in fio_slices)
