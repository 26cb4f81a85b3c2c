#!/usr/bin/env python3
"""Namespace management at scale: where the time of a create/attach/detach/delete cycle goes.

Boots the test guest against nvshell and runs tests/guest_scripts/ns-scale.sh, which times
every step from the guest's own tracefs: wall time, the time admin commands were outstanding
(the union of their intervals: the kernel's scan sends many at once) and their count, per
step. nvshell records its side of the same commands (``-trace file=``, fetch to CQE), so the
report splits each run into

* device: nvshell processing admin commands (union of fetch..CQE intervals);
* admin wait: commands outstanding as the guest sees them, minus the device time (the
  doorbell message, waking the IOThread, the interrupt back into the TCG guest);
* guest: the rest (nvme-cli start-up, the driver's scan, block devices coming and going).

Modes (``--mode``): ``cycle`` (create, attach, detach, delete one namespace, N times),
``max`` (create + attach N namespaces, then detach + delete each: nvme-cli's
nvme_create_max_ns_test), and ``attach-cycle`` / ``attach-max`` (N configured, detached
namespaces attached and detached: also runs against QEMU's own NVMe device with ``--qemu``,
which has Namespace Attachment but no Namespace Management).

    sudo python3 scripts/bench_ns_scale.py --cycles 256 [--mode cycle|max|attach-cycle|attach-max] [--qemu]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvshell.testing import (  # noqa: E402
    GUEST_DIR, GUEST_SCRIPTS, NvshellProcess, guest_unavailable_reason, read_trace,
)

MODES = ("cycle", "max", "attach-cycle", "attach-max")


def guest(script_env: dict[str, str], sockets: list[Path], extra: list[str], timeout: int) -> str:
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(GUEST_SCRIPTS / "ns-scale.sh"),
           "--timeout", str(timeout)]
    for s in sockets:
        cmd += ["--socket", str(s)]
    for k, v in script_env.items():
        cmd += ["--env", f"{k}={v}"]
    done = subprocess.run(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout + 60)
    if done.returncode:
        sys.stderr.write(done.stdout)
        raise SystemExit(f"guest failed with status {done.returncode}")
    return done.stdout


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def device_side(trace: Path) -> tuple[float, int]:
    """nvshell's busy time on admin commands (union of fetch..CQE) and their count."""
    recs = [r for r in read_trace(trace, "nvme_cmd_complete")
            if r["qid"] == 0 and r["opcode"] != "async-event-request"]
    return union_seconds([((r["ts"] - r["lat_us"] * 1000) / 1e9, r["ts"] / 1e9) for r in recs]), len(recs)


def steps(out: str) -> dict[str, dict[str, float]]:
    table = {}
    for m in re.finditer(r"^STEP (\S+) (.*)$", out, re.M):
        fields = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
        table[m.group(1)] = {k: float(v.rstrip("ms").split("/")[0]) for k, v in fields.items()
                             if k in ("n", "wall_ms", "busy_ms", "cmds", "aens")}
    return table


def report(name: str, out: str, device: tuple[float, int] | None) -> None:
    total = float(re.search(r"total_s=([\d.]+)", out).group(1))
    table = steps(out)
    print(f"\n{name}: {total:.1f} s in the guest script")
    print(f"  {'step':8} {'n':>5} {'ms/step':>8} {'admin busy ms/step':>19} {'cmds/step':>10} {'AENs':>5}")
    for step, f in sorted(table.items()):
        n = f["n"] or 1
        print(f"  {step:8} {int(n):5} {f['wall_ms'] / n:8.1f} {f['busy_ms'] / n:19.2f} "
              f"{f['cmds'] / n:10.1f} {int(f['aens']):5}")
    busy = sum(f["busy_ms"] for f in table.values()) / 1000
    cmds = sum(f["cmds"] for f in table.values())
    line = (f"  admin commands outstanding (guest's view): {busy:.2f} s of {total:.1f} s" if cmds
            else "  (guest command trace off)")
    if device is not None:
        line += f"; nvshell busy on them: {device[0]:.2f} s ({device[1]} commands)"
    print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=256)
    p.add_argument("--mode", choices=MODES, default="cycle")
    p.add_argument("--qemu", action="store_true", help="also run QEMU's own NVMe device (attach-* modes)")
    p.add_argument("--timeout", type=int, default=1800)
    args = p.parse_args(argv)
    reason = guest_unavailable_reason()
    if reason:
        p.error(reason)
    if args.qemu and not args.mode.startswith("attach"):
        p.error("QEMU's NVMe device has no Namespace Management: --qemu needs --mode attach-cycle or attach-max")
    if args.mode.startswith("attach") and not 1 <= args.cycles <= 255:
        p.error("attach modes use namespaces 2..CYCLES+1, and NSIDs end at 256: --cycles 1..255")
    heavy = args.mode.endswith("max") and args.cycles > 64   # the kernel's rescans: too many commands to trace
    env = {"CYCLES": str(args.cycles), "MODE": args.mode, "TRACE_KB": str(max(8192, args.cycles * 256)),
           "CMD_TRACE": "0" if heavy else "1"}
    detached = args.mode.startswith("attach")
    with tempfile.TemporaryDirectory(prefix="nsscale-") as tmp_name:
        tmp = Path(tmp_name)
        trace = tmp / "trace.bin"
        nv_args = ["-object", "x-nvme-subsystem,id=subsys0", "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0",
                   "-trace", "nvme_cmd_complete", "-trace", f"file={trace}"]
        if args.mode != "max":      # max: every NSID is the guest's to create
            nv_args += ["-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=64M,attached-to=all"]
        if detached:
            for nsid in range(2, args.cycles + 2):
                nv_args += ["-object", f"x-nvme-ns-nvm,id=n{nsid},subsys=subsys0,size=1M,nsid={nsid}"]
        with NvshellProcess(tmp / "run", *nv_args) as nv:
            out = guest(env, [nv.socket("ctrl0")], [], args.timeout)
        report(f"nvshell, mode {args.mode}, {args.cycles} cycles", out, device_side(trace))
        if args.qemu:
            q = ["-device", "nvme-subsys,id=nsub,nqn=nqn.2024-01.test:ref",
                 "-device", "nvme,id=nvq,serial=ref,subsys=nsub",
                 "-drive", "if=none,id=qd1,driver=null-co,size=64M,read-zeroes=on",
                 "-device", "nvme-ns,drive=qd1,bus=nvq,nsid=1"]
            for nsid in range(2, args.cycles + 2):
                q += ["-drive", f"if=none,id=qd{nsid},driver=null-co,size=1M,read-zeroes=on",
                      "-device", f"nvme-ns,drive=qd{nsid},bus=nvq,nsid={nsid},detached=on"]
            extra = [x for a in q for x in ("--qemu-arg", a)]
            report(f"QEMU nvme, mode {args.mode}, {args.cycles} cycles", guest(env, [], extra, args.timeout), None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
