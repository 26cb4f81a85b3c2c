#!/usr/bin/env python3
"""Compare nvshell with QEMU's own in-process NVMe device, in one run, alternating boots.

Machines here are noisy, so absolute numbers mean little: this script boots the
test guest (../shared/guest/run.sh) ROUNDS times against each device in turn
(nvshell, then QEMU's ``--local-nvme``), runs the same fio jobs in each boot and
reports per-job medians, the nvshell/QEMU ratio, nvshell's CPU per 1000 I/Os
(whole boot, from /proc/PID/stat) and -- with ``--latency`` -- nvshell's
device-side read service time (fetch to CQE) from a separate traced boot.

Per job it also prints where nvshell's cost goes (``--breakdown``, on by default):
the guest announces each job's start and end on its console, and at each mark the
script reads nvshell's CPU (/proc) and ``x-nvme-query-dataplane`` over QMP, so a
job's own CPU per I/O, real doorbell writes, interrupts, IOThread sleeps (each one a
wake-up to pay for) and spins that found work are divided by its own I/Os.

Jobs (4 KiB random reads unless said otherwise, O_DIRECT):
  qd1        psync QD1
  qd32       libaio QD32
  poll-qd1   pvsync2 --hipri QD1 (every boot has nvme.poll_queues=1; this guest's kernel no
             longer polls synchronous I/O: 1.0 interrupts per I/O, so this is QD1 with preadv2)
  uring-poll io_uring --hipri QD1: the kernel polls the poll queue's CQ (no interrupt)
  2x16       two jobs x libaio QD16
  seq128k    128 KiB sequential reads, libaio QD8 (MiB/s)
  randwrite  4 KiB random writes, libaio QD32

``--hog N`` runs N busy-loop processes on the host during both devices' boots
(what a user's build or a second VM does to the device's CPU).

    sudo python3 scripts/bench_guest.py --rounds 2 --runtime 5 [--hog 1] [--doorbells trap|mmap] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvshell.testing import GUEST_DIR, NvshellProcess, QmpConnection, guest_unavailable_reason  # noqa: E402

#: name -> (fio arguments, unit); unit "iops" or "MiB/s".
JOBS: dict[str, tuple[str, str]] = {
    "qd1": ("--rw=randread --bs=4k --ioengine=psync --iodepth=1", "iops"),
    "qd32": ("--rw=randread --bs=4k --ioengine=libaio --iodepth=32", "iops"),
    "poll-qd1": ("--rw=randread --bs=4k --ioengine=pvsync2 --hipri --iodepth=1", "iops"),
    "uring-poll": ("--rw=randread --bs=4k --ioengine=io_uring --hipri --iodepth=1", "iops"),
    "2x16": ("--rw=randread --bs=4k --ioengine=libaio --iodepth=16 --numjobs=2 --group_reporting", "iops"),
    "seq128k": ("--rw=read --bs=128k --ioengine=libaio --iodepth=8", "MiB/s"),
    "randwrite": ("--rw=randwrite --bs=4k --ioengine=libaio --iodepth=32", "iops"),
}
POLL_APPEND = "nvme.poll_queues=1"


#: Seconds the guest idles after announcing a job (and after its result): the host's
#: console reader sees the mark within ~0.1 s, so its samples fall in idle time.
MARK_IDLE = 0.5


def guest_script(runtime: int, jobs: list[str]) -> str:
    lines = ["set -e", "DEV=$(ls /dev/nvme*n1 | head -n1)"]
    for name in jobs:
        fio_args, _ = JOBS[name]
        lines.append(f"echo \"begin {name}\"; sleep {MARK_IDLE}")
        # terse v3: 6 read KiB, 7 read KiB/s, 8 read IOPS; 47 write KiB, 48 write KiB/s, 49 write IOPS
        lines.append(
            f"fio --name={name} --filename=$DEV --direct=1 {fio_args} --time_based --runtime={runtime} "
            f"--size=512M --output-format=terse --terse-version=3 >/tmp/{name}.out 2>&1 "
            f"|| {{ cat /tmp/{name}.out; exit 1; }}")
        lines.append(f"echo \"result {name} $(cut -d';' -f6,7,8,47,48,49 /tmp/{name}.out | tail -n1)\"; "
                     f"sleep {MARK_IDLE}")
    return "\n".join(lines) + "\n"


def parse(out: str) -> dict[str, dict[str, float]]:
    """result NAME rkb;rbw;riops;wkb;wbw;wiops -> {name: {value, ios}}."""
    got: dict[str, dict[str, float]] = {}
    for name, fields in re.findall(r"^result (\S+) ([\d.;]+)$", out, re.M):
        rkb, rbw, riops, wkb, wbw, wiops = (float(x) for x in fields.split(";"))
        unit = JOBS[name][1]
        bs_kib = 128 if name == "seq128k" else 4
        value = (rbw + wbw) / 1024 if unit == "MiB/s" else riops + wiops
        got[name] = {"value": value, "ios": (rkb + wkb) / bs_kib}
    return got


def run_guest(script: Path, sockets: list[Path], extra: list[str],
              on_mark: Callable[[str, str], None] | None = None) -> str:
    """Boot the guest, run ``script``; ``on_mark("begin"|"result", job)`` as each mark appears."""
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(script), "--timeout", "600",
           "--append", POLL_APPEND, *extra]
    for sock in sockets:
        cmd += ["--socket", str(sock)]
    out: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            mark = re.match(r"^(begin|result) (\S+)", line)
            if mark and on_mark is not None:
                on_mark(mark[1], mark[2])
        rc = proc.wait(timeout=700)
    text = "".join(out)
    if rc:
        raise RuntimeError(f"guest failed ({rc}):\n{text[-4000:]}")
    return text


#: ``x-nvme-query-dataplane`` counters shown per I/O in the breakdown: (key, column).
BREAKDOWN = (("doorbell-writes", "doorbells"), ("interrupts", "irqs"), ("sleeps", "sleeps"),
             ("spins-found", "spin-hits"), ("rounds", "rounds"))


class JobSampler:
    """nvshell's CPU and data-plane counters at each job's begin and result marks."""

    def __init__(self, nv: NvshellProcess) -> None:
        self.nv = nv
        self.qmp = QmpConnection(nv.qmp_path)
        self.begin: dict[str, tuple[float, dict[str, Any]]] = {}
        self.deltas: dict[str, dict[str, float]] = {}

    def sample(self) -> tuple[float, dict[str, Any]]:
        assert self.nv.proc is not None
        return cpu_ms(self.nv.proc.pid), self.qmp.execute("x-nvme-query-dataplane", {"device": "ctrl0"})[0]

    def __call__(self, kind: str, job: str) -> None:
        if kind == "begin":
            self.begin[job] = self.sample()
        elif job in self.begin:
            (cpu0, c0), (cpu1, c1) = self.begin.pop(job), self.sample()
            delta = {key: c1[key] - c0[key] for key, _ in BREAKDOWN}
            delta["cpu-ms"] = cpu1 - cpu0
            delta["iothread-cpu-ms"] = c1["iothread-cpu-ms"] - c0["iothread-cpu-ms"]
            delta["ios"] = c1["io-commands"] - c0["io-commands"]
            self.deltas[job] = delta

    def close(self) -> None:
        self.qmp.close()


def breakdown_row(deltas: list[dict[str, float]]) -> dict[str, float]:
    """Per I/O (medians over rounds): process CPU in us, and each ``BREAKDOWN`` counter."""
    per: dict[str, list[float]] = {}
    for d in deltas:
        ios = d["ios"]
        if not ios:
            continue
        per.setdefault("cpu-us", []).append(d["cpu-ms"] * 1000 / ios)
        per.setdefault("iothread-us", []).append(d["iothread-cpu-ms"] * 1000 / ios)
        for key, _ in BREAKDOWN:
            per.setdefault(key, []).append(d[key] / ios)
    return {key: statistics.median(v) for key, v in per.items()}


def cpu_ms(pid: int) -> float:
    """utime + stime of ``pid`` in milliseconds (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def nvshell_args(doorbells: str, backend: str, trace: bool = False, props: str = "") -> list[str]:
    extra = f",{props}" if props else ""
    args = ["-object", "x-nvme-subsystem,id=subsys0",
            "-device", f"x-nvme-ctrl,id=ctrl0,subsys=subsys0,doorbells={doorbells}{extra}",
            "-object", f"x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1G,backend={backend},attached-to=all"]
    return ["-trace", "nvme_cmd_complete", *args] if trace else args


def latency(tmp: Path, runtime: int, doorbells: str, backend: str, props: str = "") -> str:
    """Device-side read latency from one traced nvshell boot (QD1 job): ``info latency``."""
    script = tmp / "lat.sh"
    script.write_text(guest_script(runtime, ["qd1"]))
    with NvshellProcess(tmp / "lat", *nvshell_args(doorbells, backend, trace=True, props=props)) as nv:
        run_guest(script, [nv.run_dir / "ctrl0.sock"], [])
        done = subprocess.run([sys.executable, "-m", "nvshell", "--connect", f"unix:{nv.run_dir / 'qmp.sock'}"],
                              input="info latency\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=60)
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="boots per device (alternating)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds per fio job")
    parser.add_argument("--hog", type=int, default=0, help="busy-loop processes on the host during the boots")
    parser.add_argument("--doorbells", choices=("mmap", "trap"), default="trap")
    parser.add_argument("--backend", choices=("memory", "null"), default="memory")
    parser.add_argument("--props", default="", help="more x-nvme-ctrl properties, e.g. poll-max-ns=0")
    parser.add_argument("--jobs", default=",".join(JOBS), help="comma-separated subset of: " + ", ".join(JOBS))
    parser.add_argument("--latency", action="store_true", help="also one traced boot for device-side latency")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    jobs = [j for j in args.jobs.split(",") if j]
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        parser.error(f"unknown job(s): {', '.join(unknown)}")
    reason = guest_unavailable_reason()
    if reason:
        print(f"bench_guest: {reason}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, list[float]]] = {"nvshell": {j: [] for j in jobs}, "qemu": {j: [] for j in jobs}}
    per_job: dict[str, list[dict[str, float]]] = {j: [] for j in jobs}
    cpu: list[float] = []
    lat_text = ""
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        script = tmp / "bench.sh"
        script.write_text(guest_script(args.runtime, jobs))
        hog_procs = hogs(args.hog)
        try:
            for round_no in range(args.rounds):
                nv_args = nvshell_args(args.doorbells, args.backend, props=args.props)
                with NvshellProcess(tmp / f"run{round_no}", *nv_args) as nv:
                    assert nv.proc is not None
                    sampler = JobSampler(nv)
                    try:
                        got = parse(run_guest(script, [nv.run_dir / "ctrl0.sock"], [], sampler))
                    finally:
                        sampler.close()
                    used = cpu_ms(nv.proc.pid)
                for job, delta in sampler.deltas.items():
                    per_job[job].append(delta)
                ios = sum(g["ios"] for g in got.values())
                cpu.append(used / ios * 1000 if ios else float("nan"))
                for job in jobs:
                    results["nvshell"][job].append(got[job]["value"])
                qgot = parse(run_guest(script, [], ["--local-nvme", "1G"]))
                for job in jobs:
                    results["qemu"][job].append(qgot[job]["value"])
                print(f"round {round_no + 1}: " + ", ".join(
                    f"{job} {results['nvshell'][job][-1]:.0f}/{results['qemu'][job][-1]:.0f}" for job in jobs)
                    + f"; nvshell CPU {cpu[-1]:.1f} ms/1000 I/Os", file=sys.stderr)
            if args.latency:
                lat_text = latency(tmp, args.runtime, args.doorbells, args.backend, args.props)
        finally:
            for p in hog_procs:
                p.kill()
                p.wait()
    summary = {}
    for job in jobs:
        nv_v, q_v = statistics.median(results["nvshell"][job]), statistics.median(results["qemu"][job])
        summary[job] = {"unit": JOBS[job][1], "nvshell": nv_v, "qemu": q_v, "ratio": nv_v / q_v if q_v else None}
    cpu_median = statistics.median(cpu)
    if args.json:
        print(json.dumps({"rounds": args.rounds, "runtime": args.runtime, "hog": args.hog,
                          "doorbells": args.doorbells, "backend": args.backend, "raw": results,
                          "cpu_ms_per_1000_ios": cpu, "summary": summary, "per_job": per_job,
                          "latency": lat_text}, indent=2))
    else:
        print(f"doorbells={args.doorbells} backend={args.backend} hog={args.hog} rounds={args.rounds} "
              f"runtime={args.runtime}s" + (f" props={args.props}" if args.props else ""))
        print(f"{'job':<11}{'unit':>7}{'nvshell':>10}{'QEMU':>10}{'ratio':>7}")
        for job in jobs:
            s = summary[job]
            print(f"{job:<11}{s['unit']:>7}{s['nvshell']:>10.0f}{s['qemu']:>10.0f}{s['ratio']:>7.2f}")
        print(f"nvshell CPU per 1000 I/Os (whole boot): {cpu_median:.1f} ms")
        print("nvshell per I/O, each job on its own (medians; CPU of the whole process):")
        print(f"{'job':<11}{'CPU us':>8}{'IOThread':>10}" + "".join(f"{col:>11}" for _, col in BREAKDOWN))
        for job in jobs:
            row = breakdown_row(per_job[job])
            if row:
                print(f"{job:<11}{row['cpu-us']:>8.1f}{row['iothread-us']:>10.1f}" + "".join(f"{row[key]:>11.3f}" for key, _ in BREAKDOWN))
        if lat_text:
            print("device-side latency (traced QD1 boot, info latency):")
            print(lat_text.strip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
