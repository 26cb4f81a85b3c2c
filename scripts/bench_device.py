#!/usr/bin/env python3
"""Device-only cost of a 4 KiB read: microseconds of nvshell CPU per command, no VM.

Why: guest benchmarks (scripts/bench_guest.py) need a quiet host and measure the guest,
QEMU and nvshell together. This one measures what the device itself spends per command,
as CPU time of the nvshell process (sum of its threads' ``/proc/PID/task/*/schedstat``
run time, nanosecond resolution), which is meaningful even on a busy machine.

The host side is a vfio-user client in this process that behaves like the Linux driver
the guest runs: guest RAM as a memfd, one I/O queue pair, MSI-X eventfds it waits on
(``poll``) instead of polling the CQ, and -- by default, as Linux does when OACS.DBBUF is
set -- shadow doorbells with EventIdx (Doorbell Buffer Config), ringing a real doorbell
only when EventIdx says so. Each interrupt reaps every new CQE, moves the CQ head once and
submits as many new reads (one doorbell for the batch), keeping QD commands in flight.

    python3 scripts/bench_device.py [--count 20000] [--qd 1,32] [--doorbells trap|mmap]
                                    [--no-shadow] [--backend memory|null] [--write] [--json]

Prints per QD: us of nvshell CPU per command, commands per second (wall: depends on the
client and the machine), real doorbell writes and interrupts per command.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import random
import select
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nvshell.device.nvme.spec import SQE  # noqa: E402
from nvshell.testing import NvmeTestHost, NvshellProcess  # noqa: E402

PAGE = 4096
_CQE = struct.Struct("<IIHHHH")
_U32 = struct.Struct("<I")
READ, WRITE = 0x02, 0x01
DBBUF_CONFIG = 0x7C


def process_cpu_ns(pid: int) -> int:
    """Run time of every thread of ``pid`` so far (ns)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def need_event(event_idx: int, new: int, old: int) -> bool:
    return (new - event_idx - 1) & 0xFFFF < (new - old) & 0xFFFF


class Host:
    """One I/O queue pair driven like Linux's nvme driver (see module docstring)."""

    def __init__(self, socket: Path, depth: int, shadow: bool):
        self.h = NvmeTestHost(socket, ram_size=64 << 20)
        self.h.start(io_queues=1, depth=depth)
        q = self.h.queues[1]
        self.depth = depth
        self.ram = self.h.ram
        self.sq_base, self.cq_base = q["sq"], q["cq"]
        self.tail = self.head = 0
        self.phase = 1
        self.real_doorbells = 0
        self.interrupts = 0
        self.lba_size = self.h.lba_size(1)
        self.buffers = [self.h.alloc(PAGE) for _ in range(depth)]
        self.irq_fd = self.h.client.irq_fds[1]
        self.shadow = shadow
        if shadow:
            self.dbs, self.eis = self.h.alloc(PAGE), self.h.alloc(PAGE)
            self.h.check(self.h.cmd(DBBUF_CONFIG, dptr1=self.dbs, dptr2=self.eis), "Doorbell Buffer Config")
        self.cid = 0

    def _doorbell(self, index: int, new: int, old: int) -> None:
        if self.shadow:
            self.ram.write(self.dbs + 4 * index, _U32.pack(new))
            ei = _U32.unpack(self.ram.read(self.eis + 4 * index, 4))[0]
            if not need_event(ei, new, old):
                return
        self.real_doorbells += 1
        self.h.ring(index, new)

    def submit(self, n: int, opcode: int, nblocks: int) -> None:
        """``n`` 4 KiB commands at random 4 KiB-aligned places of the first ``nblocks`` blocks."""
        if not n:
            return
        old = self.tail
        per = PAGE // self.lba_size
        for _ in range(n):
            self.cid = (self.cid + 1) & 0xFFFF
            slba = random.randrange(nblocks) * per
            sqe = SQE.pack(opcode=opcode, cid=self.cid, nsid=1, dptr1=self.buffers[self.cid % self.depth],
                           cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=per - 1)
            self.ram.write(self.sq_base + 64 * self.tail, sqe)
            self.tail = (self.tail + 1) % self.depth
        self._doorbell(2, self.tail, old)

    def wait_reap(self, timeout: float = 5.0) -> int:
        """Wait for the vector, reap every CQE present, move the CQ head once."""
        fd = self.irq_fd
        got = 0
        while not got:
            r, _, _ = select.select([fd], [], [], timeout)
            if not r:
                raise TimeoutError("no interrupt")
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass
            self.interrupts += 1
            old = self.head
            while True:
                e = _CQE.unpack(self.ram.read(self.cq_base + 16 * self.head, 16))
                if e[5] & 1 != self.phase:
                    break
                if e[5] >> 1:
                    raise RuntimeError(f"command failed: status {e[5] >> 1:#x}")
                got += 1
                self.head = (self.head + 1) % self.depth
                if self.head == 0:
                    self.phase ^= 1
            if got:
                self._doorbell(3, self.head, old)
        return got

    def close(self) -> None:
        self.h.close()


def run(pid: int, host: Host, qd: int, count: int, opcode: int, nblocks: int, think: float = 0.0) -> dict:
    """``count`` commands with ``qd`` in flight; CPU of nvshell per command. ``think``: seconds
    the host waits after each reap before it submits again (a guest's interrupt handling and
    application take ~100-200 us under TCG: the device then sleeps and is woken per command)."""
    for n in (min(2000, count), count):           # a warm-up pass, then the measured one
        host.real_doorbells = host.interrupts = 0
        cpu0, t0 = process_cpu_ns(pid), time.perf_counter()
        submitted = min(qd, n)
        host.submit(submitted, opcode, nblocks)
        done = 0
        while done < n:
            got = host.wait_reap()
            if think:
                time.sleep(think)
            done += got
            more = min(got, n - submitted)
            submitted += more
            host.submit(more, opcode, nblocks)
        cpu1, t1 = process_cpu_ns(pid), time.perf_counter()
    return {"qd": qd, "commands": count, "cpu_us_per_cmd": (cpu1 - cpu0) / 1000 / count,
            "iops": count / (t1 - t0), "doorbells_per_cmd": host.real_doorbells / count,
            "interrupts_per_cmd": host.interrupts / count}


class InProcess:
    """The real controller in this process, no IOThread: a doorbell write runs the round at
    once (``Controller.kick``), so the thread CPU time around it is the device's own cost:
    doorbell, fetch, decode, dispatch, PRP mapping, backend, CQE, MSI-X eventfd write."""

    def __init__(self, backend: str, depth: int):
        import nvshell.device.nvme  # noqa: F401  (registers every command)
        from nvshell.device.backends import open_backend
        from nvshell.device.nvme.config import ControllerConfig
        from nvshell.device.nvme.controller import Controller
        from nvshell.device.nvme.namespace import NvmNamespace
        from nvshell.device.nvme.subsystem import Subsystem
        from nvshell.device.vfio_user.dma import GuestMemory
        from nvshell.device.pci.config import MSIX_CTL_ENABLE, MSIX_OFFSET
        from nvshell.device.vfio_user.interface import RegionIndex
        from nvshell.device.vfio_user.irq import MsixEventfds

        self.sub = Subsystem()
        self.ctrl = Controller(ControllerConfig(serial="BENCH", doorbells="trap"), self.sub, None)
        ns = NvmNamespace(open_backend(backend, 1 << 30, None), lba_size=512)
        self.sub.attach(self.sub.add_namespace(ns), self.ctrl, notify=False)
        self.ram_base, ram_size = 0x1_0000_0000, 16 << 20
        self.fd = os.memfd_create("bench-ram")
        os.ftruncate(self.fd, ram_size)
        self.ram = mmap.mmap(self.fd, ram_size)
        self.mem = GuestMemory()
        self.mem.map(self.ram_base, ram_size, self.fd, 0, 3)
        self.irq = MsixEventfds()
        self.irq_fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        for v, fd in enumerate(self.irq_fds):
            self.irq.assign(v, os.dup(fd))
        self.ctrl.pci.bind(self.mem, self.irq)
        # MSI-X Enable in config space, as the host's driver does first (INTx otherwise).
        ctl = int.from_bytes(self.ctrl.pci.region_read(RegionIndex.CONFIG, MSIX_OFFSET + 2, 2), "little")
        self.ctrl.pci.region_write(RegionIndex.CONFIG, MSIX_OFFSET + 2, (ctl | MSIX_CTL_ENABLE).to_bytes(2, "little"))
        self.bar0 = self.ctrl.pci.bar0
        self._next = self.ram_base
        self.depth = depth
        self.cid = 0
        self.q: dict[int, list[int]] = {}   # qid -> [sq, cq, size, tail, head, phase]
        asq, acq = self.alloc(64 * 32), self.alloc(16 * 32)
        self.q[0] = [asq, acq, 32, 0, 0, 1]
        self.bar0.write(0x24, 4, (31 << 16) | 31)
        self.bar0.write(0x28, 8, asq)
        self.bar0.write(0x30, 8, acq)
        self.bar0.write(0x14, 4, 0x460001)
        assert self.bar0.read(0x1C, 4) & 1, "controller not ready"
        cq, sq = self.alloc(16 * depth), self.alloc(64 * depth)
        self.admin(0x05, cdw10=(depth - 1) << 16 | 1, cdw11=1 << 16 | 3, dptr1=cq)
        self.admin(0x01, cdw10=(depth - 1) << 16 | 1, cdw11=1 << 16 | 1, dptr1=sq)
        self.q[1] = [sq, cq, depth, 0, 0, 1]
        self.buffers = [self.alloc(PAGE) for _ in range(depth)]
        self.cid = 0

    def alloc(self, size: int) -> int:
        addr = self._next
        self._next += (size + PAGE - 1) // PAGE * PAGE
        return addr

    def put(self, qid: int, sqe: bytes) -> None:
        q = self.q[qid]
        off = q[0] - self.ram_base + 64 * q[3]
        self.ram[off:off + 64] = sqe
        q[3] = (q[3] + 1) % q[2]

    def ring_sq(self, qid: int) -> None:
        self.bar0.write(0x1000 + 8 * qid, 4, self.q[qid][3])

    def reap(self, qid: int) -> int:
        q = self.q[qid]
        n = 0
        while True:
            off = q[1] - self.ram_base + 16 * q[4]
            e = _CQE.unpack_from(self.ram, off)
            if e[5] & 1 != q[5]:
                return n
            if e[5] >> 1:
                raise RuntimeError(f"command failed: status {e[5] >> 1:#x}")
            n += 1
            q[4] = (q[4] + 1) % q[2]
            if q[4] == 0:
                q[5] ^= 1

    def ring_cq(self, qid: int) -> None:
        self.bar0.write(0x1000 + 8 * qid + 4, 4, self.q[qid][4])

    def admin(self, opcode: int, **fields: int) -> None:
        self.cid += 1
        self.put(0, SQE.pack(opcode=opcode, cid=self.cid, **fields))
        self.ring_sq(0)
        if self.reap(0) != 1:
            raise RuntimeError(f"admin command {opcode:#x} did not complete")
        self.ring_cq(0)

    def run(self, qd: int, count: int, opcode: int, nblocks: int) -> dict:
        per = PAGE // 512
        rnd = random.Random(1)
        for n in (min(2000, count), count):
            self.ctrl.interrupts.fired.clear()
            cpu = 0.0
            done = 0
            while done < n:
                k = min(qd, n - done)
                for _ in range(k):
                    self.cid = (self.cid + 1) & 0xFFFF
                    slba = rnd.randrange(nblocks) * per
                    self.put(1, SQE.pack(opcode=opcode, cid=self.cid, nsid=1,
                                         dptr1=self.buffers[self.cid % self.depth],
                                         cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=per - 1))
                t0 = time.thread_time()
                self.ring_sq(1)
                t1 = time.thread_time()
                got = self.reap(1)
                if got != k:
                    raise RuntimeError(f"{got} of {k} completions")
                t2 = time.thread_time()
                self.ring_cq(1)
                cpu += time.thread_time() - t2 + t1 - t0
                done += k
        for fd in self.irq_fds:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass
        return {"qd": qd, "commands": count, "cpu_us_per_cmd": cpu * 1e6 / count, "iops": count / cpu,
                "doorbells_per_cmd": 1 / qd, "interrupts_per_cmd": self.ctrl.interrupts.fired.get(1, 0) / count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--qd", default="1,32")
    parser.add_argument("--doorbells", default="trap", choices=("trap", "mmap"))
    parser.add_argument("--no-shadow", action="store_true")
    parser.add_argument("--backend", default="memory", choices=("memory", "null"))
    parser.add_argument("--write", action="store_true", help="4 KiB writes instead of reads")
    parser.add_argument("--fill", action="store_true", help="write the first 64 MiB first (reads hit data)")
    parser.add_argument("--extra", default="", help="extra nvshell arguments (space separated)")
    parser.add_argument("--props", default="", help="more x-nvme-ctrl properties, e.g. poll-max-ns=0")
    parser.add_argument("--inproc", action="store_true",
                        help="the controller in this process, no IOThread: the command path alone")
    parser.add_argument("--profile", metavar="FILE", help="with --inproc: cProfile stats to FILE")
    parser.add_argument("--pyspy", metavar="FILE",
                        help="record the nvshell process with py-spy (raw collapsed stacks) while measuring")
    parser.add_argument("--think-us", type=float, default=0.0,
                        help="host pause after each reap before the next submission (a guest's gap)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    qds = [int(q) for q in args.qd.split(",")]
    depth = max(64, 2 * max(qds))
    results = []
    if args.inproc:
        rig = InProcess(args.backend, depth)
        prof = None
        if args.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        for qd in qds:
            rig.ctrl.interrupts.fired.clear()
            results.append(rig.run(qd, args.count, WRITE if args.write else READ, (1 << 30) // PAGE))
        if prof is not None:
            prof.disable()
            prof.dump_stats(args.profile)
    else:
        with tempfile.TemporaryDirectory(prefix="nvbench-") as tmp:
            nv_args = ["-object", "x-nvme-subsystem,id=subsys0",
                       "-device", f"x-nvme-ctrl,id=ctrl0,subsys=subsys0,doorbells={args.doorbells}"
                                  + (f",{args.props}" if args.props else ""),
                       "-object", f"x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1G,backend={args.backend},"
                                  "attached-to=all", *args.extra.split()]
            with NvshellProcess(Path(tmp) / "run", *nv_args) as nv:
                assert nv.proc is not None
                host = Host(nv.socket("ctrl0"), depth, not args.no_shadow)
                nblocks = (64 << 20) // PAGE if args.fill else (1 << 30) // PAGE
                try:
                    if args.fill:
                        per = PAGE // host.lba_size
                        for i in range(nblocks):
                            host.h.check(host.h.cmd(WRITE, 1, nsid=1, dptr1=host.buffers[0], cdw10=i * per,
                                                    cdw12=per - 1), "fill")
                    spy = None
                    if args.pyspy:
                        import subprocess
                        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--format",
                                                "raw", "--nonblocking", "--threads", "-r", "500", "-o", args.pyspy,
                                                "--pid", str(nv.proc.pid)], stdout=subprocess.DEVNULL)
                        time.sleep(1.0)
                    try:
                        for qd in qds:
                            results.append(run(nv.proc.pid, host, qd, args.count, WRITE if args.write else READ,
                                               nblocks, args.think_us / 1e6))
                    finally:
                        if spy is not None:
                            spy.send_signal(2)
                            spy.wait(30)
                finally:
                    host.close()
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"QD{r['qd']:<3} {r['cpu_us_per_cmd']:7.2f} us CPU/cmd  {r['iops']:8.0f} cmd/s  "
                  f"doorbells/cmd {r['doorbells_per_cmd']:.3f}  irqs/cmd {r['interrupts_per_cmd']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
