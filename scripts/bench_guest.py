#!/usr/bin/env python3
"""Compare nvshell with QEMU's own in-process NVMe device, in one run, alternating.

Machines here are noisy, so absolute IOPS mean little: this script boots the
test guest (../shared/guest/run.sh) ROUNDS times against each device in turn,
runs the same fio random-read jobs (4 KiB, QD1 and QD32, libaio, O_DIRECT) and
reports the median IOPS of each and the ratio nvshell / QEMU.

    sudo python3 scripts/bench_guest.py --rounds 3 --runtime 5 [--doorbells mmap|trap] [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvshell.testing import GUEST_DIR, NvshellProcess, guest_unavailable_reason  # noqa: E402

import subprocess  # noqa: E402

JOBS = ("randread-qd1", "randread-qd32")


def guest_script(runtime: int) -> str:
    return f"""
set -e
DEV=$(ls /dev/nvme*n1 | head -n1)
for job in "randread-qd1 1" "randread-qd32 32"; do
    set -- $job
    fio --name=$1 --filename=$DEV --direct=1 --bs=4k --ioengine=libaio --rw=randread --iodepth=$2 \\
        --time_based --runtime={runtime} --size=256M --output-format=terse --terse-version=3 >/tmp/out 2>&1 \\
        || {{ cat /tmp/out; exit 1; }}
    echo "result $1 $(cut -d';' -f8 /tmp/out | tail -n1)"
done
"""


def run_once(script: Path, sockets: list[Path], extra: list[str]) -> dict[str, float]:
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(script), "--timeout", "300", *extra]
    for sock in sockets:
        cmd += ["--socket", str(sock)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    if done.returncode:
        raise RuntimeError(f"guest failed ({done.returncode}):\n{done.stdout}")
    return {name: float(iops) for name, iops in re.findall(r"^result (\S+) ([\d.]+)$", done.stdout, re.M)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="boots per device (alternating)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per fio job")
    parser.add_argument("--doorbells", choices=("mmap", "trap"), default="mmap")
    parser.add_argument("--backend", choices=("memory", "null"), default="memory")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    reason = guest_unavailable_reason()
    if reason:
        print(f"bench_guest: {reason}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {"nvshell": {j: [] for j in JOBS}, "qemu": {j: [] for j in JOBS}}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.sh"
        script.write_text(guest_script(args.runtime))
        nv_args = ["-object", "x-nvme-subsystem,id=subsys0",
                   "-device", f"x-nvme-ctrl,id=ctrl0,subsys=subsys0,doorbells={args.doorbells}",
                   "-object", f"x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1G,backend={args.backend},attached-to=all"]
        for round_no in range(args.rounds):
            with NvshellProcess(Path(tmp) / f"run{round_no}", *nv_args) as nv:
                for job, iops in run_once(script, [nv.run_dir / "ctrl0.sock"], []).items():
                    results["nvshell"][job].append(iops)
            for job, iops in run_once(script, [], ["--local-nvme", "1G"]).items():
                results["qemu"][job].append(iops)
            print(f"round {round_no + 1}: " + ", ".join(
                f"{dev} {job} {results[dev][job][-1]:.0f}" for dev in results for job in JOBS), file=sys.stderr)
    summary = {job: {"nvshell_iops": statistics.median(results["nvshell"][job]),
                     "qemu_iops": statistics.median(results["qemu"][job])} for job in JOBS}
    for job in JOBS:
        summary[job]["ratio"] = summary[job]["nvshell_iops"] / summary[job]["qemu_iops"]
    if args.json:
        print(json.dumps({"rounds": args.rounds, "runtime": args.runtime, "doorbells": args.doorbells,
                          "backend": args.backend, "raw": results, "summary": summary}, indent=2))
    else:
        print(f"{'job':<16}{'nvshell IOPS':>14}{'QEMU IOPS':>12}{'ratio':>8}")
        for job in JOBS:
            s = summary[job]
            print(f"{job:<16}{s['nvshell_iops']:>14.0f}{s['qemu_iops']:>12.0f}{s['ratio']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
