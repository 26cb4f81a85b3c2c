#!/usr/bin/env python3
"""What protection information costs: 4 KiB random reads at QD32, with and without PI type 1, one run.

Each boot of the test guest (../shared/guest/run.sh) sees one nvshell controller with two
namespaces of the same size: a plain one (512-byte blocks) and a PI type 1 one (512 + 8
bytes, 16b guard). Both are filled first (so the PI is real, not the all-ones escape of
unwritten blocks), then the same fio job runs on each, in alternating order per round:

- ``plain``: no metadata.
- ``pi``: the Linux block-integrity path: the guest builds a PI buffer per request and checks
  every guard CRC itself, the device checks guard and reference tag too (PRCHK) and returns
  the tuples through the metadata pointer.
- ``pi-device``: the same namespace with ``integrity/read_verify`` off in the guest: the driver
  then asks the device to check and strip the PI (PRACT + PRCHK), so only the device pays.

    sudo python3 scripts/bench_pi.py --rounds 3 --runtime 5 [--json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvshell.testing import GUEST_DIR, NvshellProcess, guest_unavailable_reason  # noqa: E402

JOBS = ("plain", "pi", "pi-device")


def guest_script(runtime: int, size: str, order: tuple[str, ...]) -> str:
    return f"""
set -e
dev_of() {{ for d in /sys/block/nvme0n*; do if [ "$(cat "$d/nsid")" = "$1" ]; then echo "${{d##*/}}"; fi; done; }}
PLAIN=$(dev_of 1); PI=$(dev_of 2)
for d in $PLAIN $PI; do
    fio --name=fill --filename=/dev/$d --direct=1 --bs=1M --ioengine=libaio --iodepth=4 --rw=write \\
        --size={size} >/dev/null 2>&1
done
run() {{
    fio --name=$1 --filename=/dev/$2 --direct=1 --bs=4k --ioengine=libaio --rw=randread --iodepth=32 \\
        --time_based --runtime={runtime} --size={size} --output-format=terse --terse-version=3 >/tmp/out 2>&1 \\
        || {{ cat /tmp/out; exit 1; }}
    echo "result $1 $(cut -d';' -f8 /tmp/out | tail -n1)"
}}
for job in {' '.join(order)}; do
    case $job in
        plain) run plain $PLAIN ;;
        pi) echo 1 >/sys/block/$PI/integrity/read_verify; run pi $PI ;;
        pi-device) echo 0 >/sys/block/$PI/integrity/read_verify; run pi-device $PI ;;
    esac
done
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="boots (job order alternates)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per fio job")
    parser.add_argument("--size", default="128M", help="bytes of each namespace filled and read")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    reason = guest_unavailable_reason()
    if reason:
        print(f"bench_pi: {reason}", file=sys.stderr)
        return 2
    results: dict[str, list[float]] = {j: [] for j in JOBS}
    nv_args = ["-object", "x-nvme-subsystem,id=subsys0", "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0",
               "-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=512M,attached-to=all",
               "-object", "x-nvme-ns-nvm,id=ns2,subsys=subsys0,size=512M,ms=8,pi=1,attached-to=all"]
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            order = JOBS if round_no % 2 == 0 else tuple(reversed(JOBS))
            script = Path(tmp) / f"bench{round_no}.sh"
            script.write_text(guest_script(args.runtime, args.size, order))
            with NvshellProcess(Path(tmp) / f"run{round_no}", *nv_args) as nv:
                cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(script), "--timeout", "400",
                       "--socket", str(nv.run_dir / "ctrl0.sock")]
                done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=500)
            if done.returncode:
                print(done.stdout, file=sys.stderr)
                return 1
            for name, iops in re.findall(r"^result (\S+) ([\d.]+)$", done.stdout, re.M):
                results[name].append(float(iops))
            print(f"round {round_no + 1}: " + ", ".join(f"{j} {results[j][-1]:.0f}" for j in JOBS), file=sys.stderr)
    summary = {j: statistics.median(results[j]) for j in JOBS}
    if args.json:
        print(json.dumps({"rounds": args.rounds, "runtime": args.runtime, "raw": results, "median": summary},
                         indent=2))
    else:
        print(f"{'job':<12}{'IOPS':>10}{'ratio':>8}")
        for j in JOBS:
            print(f"{j:<12}{summary[j]:>10.0f}{summary[j] / summary['plain']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
