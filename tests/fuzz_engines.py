"""Seeded fuzzers for the three ways in from outside: vfio-user messages, NVMe commands
from a DMA-capable client, QMP input.

Each engine drives the real code through its real socket and checks after every input
that the process still answers (a probe request gets its reply in time), then, at the
end, that nothing leaked (file descriptors, threads, held input). The fast suite runs
each for a few seconds (tests/test_fuzz.py); ``scripts/fuzz.py`` runs them for minutes
and prints the figures the README quotes. Same seed, same inputs.

Why probes: a hostile input's own reply may legitimately be an error or nothing (a
NO_REPLY message, a REPLY-type message, a command the driver never completes), but a
valid request right behind it must always be answered, promptly: anything else is a
wedge.
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.client import VfioUserClient, VfioUserProtocolError
from nvshell.testing import NvmeHostError, NvmeTestHost, ServedController

#: Longest a probe may take before the input counts as a hang (generous: a loaded 2-core CI box).
PROBE_TIMEOUT = 5.0


@dataclass
class Figures:
    """What a run saw: the numbers the README reports."""

    target: str
    seed: int
    inputs: int = 0
    crashes: int = 0          # an exception logged at ERROR, or the server gone
    hangs: int = 0            # a probe not answered within PROBE_TIMEOUT
    violations: int = 0       # a reply that breaks the protocol (wrong id, size, status)
    drops: int = 0            # connections the server closed (expected for framing errors)
    leaks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Resident set growth over the run (informative: allocators keep freed memory).
    rss_growth_kib: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.hangs or self.violations or self.leaks)

    def line(self) -> str:
        leaks = ", ".join(self.leaks) or "none"
        return (f"{self.target}: seed {self.seed}, {self.inputs} inputs in {self.seconds:.1f} s, "
                f"{self.crashes} crashes, {self.hangs} hangs, {self.violations} protocol violations, "
                f"{self.drops} dropped connections, leaks: {leaks}, RSS {self.rss_growth_kib // 1024:+d} MiB")


class ErrorLog(logging.Handler):
    """Collects ERROR records (tracebacks) from nvshell while a fuzzer runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self, context: str) -> list[str]:
        """The collected records as notes (with their exception and ``context``), cleared."""
        notes = []
        for r in self.records[:3]:
            exc = f": {r.exc_info[0].__name__}: {r.exc_info[1]}" if r.exc_info and r.exc_info[1] else ""
            notes.append(f"{r.getMessage()}{exc} (after {context})")
        self.records.clear()
        return notes

    def __enter__(self) -> "ErrorLog":
        logging.getLogger("nvshell").addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger("nvshell").removeHandler(self)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _settle(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


class _Run:
    """What every engine does around its inputs, once: a scratch directory (``base``), the
    baseline (file descriptors, threads, RSS), ERROR records collected, the budget (seconds or
    inputs: ``more()``), and at the end the figures' time, RSS growth and leaks."""

    def __init__(self, target: str, seconds: float, seed: int, tmp: Path | None, max_inputs: int | None):
        self.fig = Figures(target, seed)
        self.rng = random.Random(seed)
        self.seconds, self.max_inputs = seconds, max_inputs
        self._own_tmp = tempfile.TemporaryDirectory(prefix="nvfuzz-") if tmp is None else None
        self.base = Path(self._own_tmp.name) if self._own_tmp else tmp
        assert self.base is not None
        self.errors = ErrorLog()

    def __enter__(self) -> "_Run":
        self._fds0, self._threads0, self._rss0 = _fds(), threading.active_count(), _rss_kib()
        self.t0 = time.monotonic()
        self.errors.__enter__()
        return self

    def more(self) -> bool:
        """Budget left for another input."""
        return time.monotonic() - self.t0 < self.seconds and (self.max_inputs is None
                                                             or self.fig.inputs < self.max_inputs)

    def take_errors(self, context: str) -> None:
        """ERROR records logged since the last input count as crashes of that input."""
        if self.errors.records:
            self.fig.crashes += len(self.errors.records)
            self.fig.notes.extend(self.errors.take(context))

    def __exit__(self, *exc: object) -> None:
        self.errors.__exit__()
        fig = self.fig
        fig.seconds = time.monotonic() - self.t0
        fig.rss_growth_kib = _rss_kib() - self._rss0
        if not _settle(lambda: _fds() <= self._fds0):
            fig.leaks.append(f"{_fds() - self._fds0} file descriptors")
        if not _settle(lambda: threading.active_count() <= self._threads0):
            fig.leaks.append(f"{threading.active_count() - self._threads0} threads")
        if self._own_tmp is not None:
            self._own_tmp.cleanup()


# ================================================================== vfio-user messages
def _vfio_payload(rng: random.Random, command: int) -> bytes:
    """A payload for ``command``: mostly well-formed with hostile field values."""
    u32 = lambda: rng.choice([0, 1, 2, 3, 4, 0xFF, 0x1000, 0xFFFFFFFF, rng.getrandbits(32)])  # noqa: E731
    u64 = lambda: rng.choice([0, 0x1000, 0x40000000, 0x40001000, 1 << 63, (1 << 64) - 1,  # noqa: E731
                              rng.getrandbits(64), rng.getrandbits(20) << 12])
    flags = lambda: rng.choice([0, 1, 2, 3, 1 << rng.randrange(32), rng.getrandbits(32)])  # noqa: E731
    if rng.random() < 0.1:
        return rng.randbytes(rng.choice([0, 1, 7, 23, 40, 200]))
    if command == P.Command.VERSION:
        caps = rng.choice([
            b'{"capabilities":{"max_msg_fds":8}}', b"[" * rng.randrange(1, 5000), b'{"capabilities":[]}',
            json.dumps({"capabilities": {"max_data_xfer_size": u64(), "pgsizes": u32()}}).encode(),
            rng.randbytes(30), b"", b"{" * 100 + b"}" * 100, b'"\\ud800"', b"1e400"])
        return P.VERSION.pack(major=rng.choice([0, 0, 1, 0xFFFF]), minor=u32() & 0xFFFF) + caps + b"\0"
    if command == P.Command.DMA_MAP:
        return P.DMA_MAP.pack(argsz=rng.choice([32, 0, 31, 1000]), flags=flags(), offset=u64() & 0xFFFFF000,
                              addr=u64(), size=rng.choice([0, 0x1000, 0x2000, 0x100000, u64()]))
    if command == P.Command.DMA_UNMAP:
        return P.DMA_UNMAP.pack(argsz=rng.choice([24, 0, 23, 100]), flags=flags(), addr=u64(), size=u64())
    if command in (P.Command.DEVICE_GET_INFO,):
        return P.DEVICE_INFO.pack(argsz=rng.choice([16, 0, 15, 1 << 20]))
    if command == P.Command.DEVICE_GET_REGION_INFO:
        return P.REGION_INFO.pack(argsz=rng.choice([32, 0, 31, 64, 4096]), index=rng.choice([0, 1, 4, 5, 7, 8, 9,
                                                                                              u32()]))
    if command == P.Command.DEVICE_GET_IRQ_INFO:
        return P.IRQ_INFO.pack(argsz=rng.choice([16, 0, 1000]), index=rng.choice([0, 2, 4, 5, u32()]))
    if command == P.Command.DEVICE_SET_IRQS:
        count = rng.choice([0, 1, 2, 5, 65, u32()])
        head = P.IRQ_SET.pack(argsz=rng.choice([20, 0, (20 + count) & 0xFFFFFFFF]), flags=flags() if rng.random() < 0.5 else
                              rng.choice([0x21, 0x22, 0x24, 0x29, 0x31]), index=rng.choice([2, 0, 4, u32()]),
                              start=rng.choice([0, 1, 4, 64, u32()]), count=count)
        return head + rng.randbytes(rng.choice([0, 1, min(count, 64)]))
    if command in (P.Command.REGION_READ, P.Command.REGION_WRITE):
        region = rng.choice([0, 0, 4, 5, 7, 1, 9, u32()])
        offset = rng.choice([0, 0x14, 0x1C, 0x24, 0x28, 0x1000, 0x1004, 0x2000, 0x3FFC, u64() & 0xFFFF, u64()])
        count = rng.choice([1, 2, 4, 8, 3, 0, 4096, 1 << 20, u32()])
        data = rng.randbytes(count if count <= 64 else rng.choice([0, 8])) if command == P.Command.REGION_WRITE \
            else b""
        if command == P.Command.REGION_WRITE and offset == 0x14 and rng.random() < 0.7:
            data = b"\0\0\0\0"  # keep the controller mostly disabled: CC writes are the fuzzer's too
        return P.REGION_RW.pack(offset=offset, region=region, count=count) + data
    return rng.randbytes(rng.choice([0, 8, 16, 64]))


def _vfio_fds(rng: random.Random) -> list[int]:
    kinds = rng.choices(["none", "eventfd", "memfd", "pipe", "sealed"], [70, 12, 6, 6, 6])[0]
    n = 0 if kinds == "none" else rng.choice([1, 1, 2, 3])
    fds: list[int] = []
    for _ in range(n):
        if kinds == "eventfd":
            fds.append(os.eventfd(0, os.EFD_CLOEXEC))
        elif kinds == "pipe":
            r, w = os.pipe()
            os.close(r)
            fds.append(w)
        else:
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if kinds == "sealed" else 0))
            os.ftruncate(fd, rng.choice([0, 0x1000, 0x100000]))
            fds.append(fd)
    return fds


class _VfioSession:
    """One fuzzing client: negotiated, guest RAM mapped, waiting for inputs."""

    def __init__(self, path: str):
        self.c = VfioUserClient(timeout=PROBE_TIMEOUT).connect(path)
        self.c.negotiate()
        self.next_id = 1000

    def close(self) -> None:
        self.c.close()


def fuzz_vfio(seconds: float, seed: int, tmp: Path | None = None, *, max_inputs: int | None = None) -> Figures:
    """Malformed and hostile vfio-user messages against a real controller."""
    with _Run("vfio-user messages", seconds, seed, tmp, max_inputs) as run:
        fig, rng, base = run.fig, run.rng, run.base
        target = ServedController(base / "nvme.sock", name="e2e", doorbells="mmap")  # the fuzzer is its client
        session: _VfioSession | None = None
        try:
            commands = [int(c) for c in P.Command] + [0, 19, 255, 0xFFFF]
            while run.more():
                if session is None:
                    try:
                        session = _VfioSession(target.socket)
                    except Exception as exc:
                        fig.crashes += 1
                        fig.notes.append(f"cannot connect: {exc}")
                        break
                fig.inputs += 1
                ok = _vfio_one(rng, session, commands, fig)
                if not ok:
                    session.close()
                    session = None
                run.take_errors(f"input {fig.inputs}")
            if session is not None:
                session.close()
        finally:
            target.close()
    return run.fig


def _vfio_one(rng: random.Random, s: _VfioSession, commands: list[int], fig: Figures) -> bool:
    """One input and its probe; False when the connection is gone (or must be dropped)."""
    c = s.c
    roll = rng.random()
    fds: list[int] = []
    if roll < 0.03:  # framing errors: a size that cannot be right (the server drops us)
        size = rng.choice([0, 1, 15, P.MAX_MESSAGE_SIZE + 1, 0xFFFFFFFF])
        c.send_raw(P.HEADER.pack(msg_id=1, command=rng.choice(commands) & 0xFFFF, size=size, flags=0, error=0))
        if not _peer_gone(c):
            fig.violations += 1
            fig.notes.append(f"framing error (size {size}) did not drop the client")
        fig.drops += 1
        return False
    if roll < 0.05:  # a partial message, then the client vanishes
        c.send_raw(rng.randbytes(rng.randrange(1, 40)))
        return False
    command = rng.choice(commands) if rng.random() < 0.3 else rng.choice(
        [P.Command.DMA_MAP, P.Command.DMA_UNMAP, P.Command.REGION_READ, P.Command.REGION_WRITE,
         P.Command.DEVICE_SET_IRQS, P.Command.DEVICE_GET_REGION_INFO, P.Command.VERSION,
         P.Command.DEVICE_GET_IRQ_INFO, P.Command.DEVICE_RESET])
    payload = _vfio_payload(rng, command)
    if rng.random() < 0.3:
        fds = _vfio_fds(rng)
    flag_roll = rng.random()
    flags = 0 if flag_roll < 0.8 else rng.choice([P.MsgFlag.NO_REPLY, P.MsgFlag.REPLY, 0x21, 0x2, 0xF,
                                                  rng.getrandbits(32)])
    s.next_id = (s.next_id + 1) & 0xFFFF
    msg_id = s.next_id
    expects = (flags & P.TYPE_MASK) == P.MsgFlag.COMMAND and not flags & P.MsgFlag.NO_REPLY
    probe_id = (msg_id + 0x8000) & 0xFFFF
    probe = P.pack_header(probe_id, P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.size) + P.DEVICE_INFO.pack(argsz=16)
    try:
        # Each message in its own sendmsg, as every vfio-user client sends (QEMU, SPDK,
        # libvfio-user): the descriptors belong to the message they ride with. The probe
        # right behind it is often read by the server in the same recvmsg.
        c.send_raw(P.pack_header(msg_id, command, len(payload), flags) + payload, fds)
        c.send_raw(probe)
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)
    return _vfio_replies(c, msg_id, command, expects, probe_id, fig)


def _vfio_replies(c: VfioUserClient, msg_id: int, command: int, expects: bool, probe_id: int, fig: Figures) -> bool:
    got_reply = False
    while True:
        try:
            header, payload, rfds = c.receive()
        except (VfioUserProtocolError, ConnectionError) as exc:
            fig.violations += 1
            fig.notes.append(f"connection lost after {P.command_name(command)}: {exc}")
            return False
        except (socket.timeout, TimeoutError):
            fig.hangs += 1
            fig.notes.append(f"no answer to a probe after {P.command_name(command)} id {msg_id}")
            return False
        for fd in rfds:
            os.close(fd)
        if header.msg_id == probe_id and header.command == P.Command.DEVICE_GET_INFO:
            if expects and not got_reply:
                fig.violations += 1
                fig.notes.append(f"{P.command_name(command)} id {msg_id}: no reply")
            if header.flags != P.MsgFlag.REPLY or len(payload) != P.DEVICE_INFO.size:
                fig.violations += 1
                fig.notes.append(f"probe answered with flags {header.flags:#x} size {len(payload)}")
            return True
        if header.msg_id != msg_id or header.command != command or not expects or got_reply:
            fig.violations += 1
            fig.notes.append(f"unexpected message id {header.msg_id} command {header.command} "
                             f"(sent id {msg_id} command {command})")
            return False
        got_reply = True
        if header.flags & P.MsgFlag.ERROR:
            if header.flags != P.ERROR_REPLY_FLAGS or payload or not 0 < header.error < 200:
                fig.violations += 1
                fig.notes.append(f"bad error reply flags {header.flags:#x} errno {header.error} size {len(payload)}")


def _peer_gone(c: VfioUserClient, timeout: float = PROBE_TIMEOUT) -> bool:
    assert c.sock is not None
    c.sock.settimeout(timeout)
    try:
        while True:
            if not c.sock.recv(65536):
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True


# ================================================================== NVMe commands
#: Admin opcodes the fuzzer leaves out, and why: each would make the fuzzer's own probe
#: path wait legitimately (not a device defect).
_ADMIN_SKIP = {
    0x00: "Delete I/O SQ (would delete the probe's queue)",
    0x04: "Delete I/O CQ (ditto)",
    0x0C: "Asynchronous Event Request (completes only on an event)",
    0x7C: "Doorbell Buffer Config (moves doorbells into guest memory the fuzzer scribbles on)",
}


def fuzz_nvme(seconds: float, seed: int, tmp: Path | None = None, *, max_inputs: int | None = None) -> Figures:
    """Random and targeted NVMe commands (admin and I/O) from a DMA-capable client."""
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.namespace import NvmNamespace
    from nvshell.device.nvme.subsystem import Subsystem

    with _Run("NVMe commands", seconds, seed, tmp, max_inputs) as run:
        fig, rng, base = run.fig, run.rng, run.base
        g = NvmeTestHost.serve(base, name="e2e", doorbells="mmap", subsystem=Subsystem(capacity=64 << 20))
        try:
            ns = NvmNamespace(MemoryBackend(8 << 20))
            nsid = g.subsys.add_namespace(ns, configured=True)
            g.subsys.attach(nsid, g.ctrl)
            g.enable()
            g.create_io_queue(1, 16, interrupts=False)
            data = g.alloc(256 << 10)
            prp_list = g.alloc(4096)
            g.ram.write(prp_list, b"".join((data + 4096 * i).to_bytes(8, "little") for i in range(1, 64)))
            end = g.ram_base + g.ram_size
            pointers = [data, data + 8, data + 0xFFF, prp_list, end - 4096, end - 8, end, 0, 1 << 63,
                        g.ram_base - 4096, 0xFFFFFFFFFFFFF000]
            admin_ops = [op for op in range(256) if op not in _ADMIN_SKIP]
            known_admin = [0x01, 0x02, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0D, 0x10, 0x11, 0x14, 0x15, 0x18, 0x19,
                           0x1A, 0x80, 0x81, 0x82, 0x84, 0x86]
            while run.more():
                fig.inputs += 1
                qid = 0 if rng.random() < 0.5 else 1
                if qid == 0:
                    opcode = rng.choice(known_admin) if rng.random() < 0.7 else rng.choice(admin_ops)
                    if opcode == 0x80 and rng.random() < 0.8:
                        opcode = 0x06  # Format NVM is slow-ish: keep it rare
                else:
                    opcode = rng.choice([0x00, 0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0C, 0x0D, 0x11, 0x19]) \
                        if rng.random() < 0.8 else rng.randrange(256)
                u32 = lambda: rng.choice([0, 1, 7, 0xFF, 0xFFFF, 0xFFFF0000, 0xFFFFFFFF,  # noqa: E731
                                          rng.getrandbits(32), rng.getrandbits(8)])
                fields = dict(
                    opcode=opcode, cid=0, flags=rng.choice([0, 0, 0, 0x40, 0x80, 0xC0, rng.getrandbits(8)]),
                    nsid=rng.choice([nsid, nsid, 0, 2, 0xFFFFFFFF, rng.getrandbits(32)]),
                    dptr1=rng.choice(pointers) if rng.random() < 0.9 else rng.getrandbits(64),
                    dptr2=rng.choice(pointers + [prp_list]) if rng.random() < 0.9 else rng.getrandbits(64),
                    cdw10=u32(), cdw11=u32(), cdw12=u32() & (0xFFFF00FF if qid else 0xFFFFFFFF),
                    cdw13=u32(), cdw14=u32(), cdw15=u32())
                if qid == 1 and opcode in (0x01, 0x02) and rng.random() < 0.7:
                    fields["cdw10"], fields["cdw11"] = rng.randrange(0, 20000), 0
                    fields["cdw12"] = rng.choice([0, 7, 63, 0xFFFF])
                if not _nvme_one(g, qid, fields, fig):
                    break
                run.take_errors(f"queue {qid} {fields}")
        finally:
            g.close()
            for n in list(g.subsys.namespaces.values()):
                n.close()
    return run.fig


def _nvme_one(g: NvmeTestHost, qid: int, fields: dict[str, int], fig: Figures) -> bool:
    """Submit one command, wait for its CQE (polling, not the interrupt); False if stuck."""
    sqe = {k: v for k, v in fields.items() if k not in ("opcode", "cid")}
    cid = fields["cid"] = g.submit(fields["opcode"], qid, **sqe)
    try:
        e = g.reap(qid, timeout=PROBE_TIMEOUT)[0]
    except NvmeHostError:
        fig.hangs += 1
        fig.notes.append(f"no completion for opcode {fields['opcode']:#x} on queue {qid}: {fields}")
        return False
    sct = (e.status >> 9) & 0x7
    if e.cid != cid or e.sqid != qid or sct in (4, 5, 6):  # SCT 4-6 are reserved
        fig.violations += 1
        fig.notes.append(f"bad CQE {e} for {fields}")
    csts = g.reg32(0x1C)
    if not csts & 1 or csts & 2:  # CSTS.RDY and no CFS
        fig.notes.append(f"controller not ready after {fields}: re-enabling")
        g.write_reg32(0x14, 0)
        g.queues.clear()
        try:
            g.enable()
            g.create_io_queue(1, 16, interrupts=False)
        except NvmeHostError as exc:
            fig.hangs += 1
            fig.notes.append(f"re-enable failed: {exc}")
            return False
    return True


# ================================================================== QMP input
#: Commands the QMP fuzzer leaves out: they stop the process or write files by design
#: (what a QMP client can make nvshell do is documented, not a defect).
_QMP_SKIP = {"quit", "x-trace-file", "human-monitor-command"}
#: Argument names whose values are host paths: never fuzzed with made-up values.
_PATH_ARGS = {"file", "path", "socket", "filename"}


_QOM_PROPS = ["size", "subsys", "attached-to", "lba-size", "backend", "nsid", "doorbells", "mdts", "mqes",
              "max-ioqpairs", "cntlid", "serial", "zone-size", "ms", "pi", "uuid", "subnqn", "ns-mgmt-capacity"]
_QOM_VALUES = ["subsys0", "ctrl0", ["all"], "memory", "null", "16M", "4096", 512, 0, "trap", "auto", "0x10"]


def _qmp_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "str", "bool", "null", "float", "list", "dict", "big"]
    kind = rng.choice(kinds if depth < 3 else kinds[:6])
    if kind == "int":
        return rng.choice([0, 1, -1, 512, 4096, 2 ** 31, 2 ** 63, -2 ** 63, 2 ** 64, rng.getrandbits(40)])
    if kind == "big":
        return int("9" * rng.choice([20, 300, 4000]))
    if kind == "str":
        return rng.choice(["", "ctrl0", "ns1", "subsys0", "x-nvme-ns-nvm", "x-nvme-ctrl", "/objects/ns1",
                           "/machine/peripheral/ctrl0", "all", "1G", "-1", "on", "read", "nvme_*",
                           "\u00e9\u4e2d", "\ud800", "a" * 300, rng.choice(["size", "lba-size", "attached-to"])])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "float":
        return rng.choice([0.5, 1e300, -0.0, 1e-300])
    if kind == "list":
        return [_qmp_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "size", "x", "path", "enable"]): _qmp_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _qmp_input(rng: random.Random, commands: list[dict[str, Any]], serial: int) -> tuple[bytes, bool]:
    """Bytes of one input and whether it is one complete request (expects a reply with its id)."""
    roll = rng.random()
    if roll < 0.15:
        return rng.randbytes(rng.randrange(1, 200)), False
    if roll < 0.25:
        garbage = rng.choice([b"[" * rng.randrange(1, 3000), b"{" * 50, b'{"execute": "query-status"', b"}}]]",
                              b"\x1b[A\x1b[B", b'"unterminated', b"1e400", b"nul\x00l", b"\xff\xfe", b"truex",
                              b'{"execute": "qom-get", "arguments": {"path": "/", "property": "x"}, "id": 1e400}'])
        return garbage, False
    cmd = rng.choice(commands)
    args: dict[str, Any] = {}
    for arg in cmd["args"]:
        if arg in _PATH_ARGS:
            continue
        if rng.random() < 0.7:
            args[arg] = _qmp_value(rng)
    if cmd["name"] in ("object-add", "device_add"):  # open-ended properties: the types' own names
        for _ in range(rng.randrange(4)):
            args[rng.choice(_QOM_PROPS)] = rng.choice([_qmp_value(rng), rng.choice(_QOM_VALUES)])
    if rng.random() < 0.2:
        args[rng.choice(["bogus", "id", "size"])] = _qmp_value(rng)
    request: dict[str, Any] = {"execute": cmd["name"], "id": f"fz-{serial}"}
    if args or rng.random() < 0.2:
        request["arguments"] = args
    if rng.random() < 0.05:
        request["execute"] = rng.choice([1, None, ["x"], "no-such-command"])
    text = json.dumps(request, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.1:
        cut = rng.randrange(1, len(text))
        return text[:cut].encode("utf-8", "surrogatepass"), False
    try:
        return text.encode("utf-8"), True
    except UnicodeEncodeError:  # a lone surrogate written raw: invalid UTF-8, a parse error (no id)
        return text.encode("utf-8", "surrogatepass"), False


def fuzz_qmp(seconds: float, seed: int, tmp: Path | None = None, *, max_inputs: int | None = None) -> Figures:
    """Random bytes, broken JSON and schema-shaped requests with hostile values, against a
    real Machine (default topology) behind the real QMP server."""
    from nvshell.device.machine import Machine, default_topology
    from nvshell.device.trace import TRACE
    from nvshell.monitor.qmp import session as S
    from tests.qmp_helpers import MonitorThread, RawClient

    sinks_before = len(TRACE.sinks)
    with _Run("QMP input", seconds, seed, tmp, max_inputs) as run:
        fig, rng, base = run.fig, run.rng, run.base
        machine = Machine(str(base))
        default_topology(machine)
        mon = MonitorThread(base, machine)
        client: RawClient | None = None
        try:
            probe_client = RawClient(mon.unix_path)
            listed = probe_client.cmd("query-qmp-schema")["return"]
            probe_client.close()
            commands = _qmp_commands(listed)
            serial = 0
            while run.more():
                if client is None:
                    client = RawClient(mon.unix_path, timeout=PROBE_TIMEOUT)
                fig.inputs += 1
                serial += 1
                data, complete = _qmp_input(rng, commands, serial)
                probe = json.dumps({"execute": "query-status", "id": f"probe-{serial}"}).encode()
                try:
                    # \x01 forces the lexer back to a known state, whatever the input left open
                    client.send(data + b"\x01" + probe)
                    seen_own = _qmp_until_probe(client, serial, fig)
                except (socket.timeout, TimeoutError):
                    fig.hangs += 1
                    fig.notes.append(f"no probe reply after {data[:120]!r}")
                    client.close()
                    client = None
                    continue
                except (EOFError, ConnectionError) as exc:
                    fig.violations += 1
                    fig.notes.append(f"session closed after {data[:120]!r}: {exc!r}")
                    client = None
                    fig.drops += 1
                    continue
                if complete and not seen_own:
                    fig.violations += 1
                    fig.notes.append(f"no reply to {data[:120]!r}")
                if rng.random() < 0.01:
                    client.close()
                    client = None
                run.take_errors(repr(data[:300]))
            if client is not None:
                client.close()
            if not _settle(lambda: mon.run(lambda: len(mon.server.sessions)) == 0):
                fig.leaks.append("sessions left open")
            held = mon.run(lambda: S.QMPSession.input_total)
            if held:
                fig.leaks.append(f"{held} bytes of input held after every client left")
        finally:
            mon.stop()
        if len(TRACE.sinks) > sinks_before:
            fig.leaks.append(f"{len(TRACE.sinks) - sinks_before} trace sinks")
    return run.fig


def _qmp_commands(schema: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Command names and argument names from query-qmp-schema."""
    types = {t["name"]: t for t in schema}
    out = []
    for entry in schema:
        if entry.get("meta-type") != "command" or entry["name"] in _QMP_SKIP:
            continue
        arg_type = types.get(entry.get("arg-type", ""), {})
        out.append({"name": entry["name"], "args": [m["name"] for m in arg_type.get("members", [])]})
    return out


def _qmp_until_probe(client: Any, serial: int, fig: Figures) -> bool:
    """Read replies up to the probe's; True if the input's own reply came."""
    own = False
    while True:
        line = client.recv_line()
        try:
            reply = json.loads(line)
        except ValueError:
            fig.violations += 1
            fig.notes.append(f"unparsable reply {line[:120]!r}")
            continue
        if "event" in reply:
            continue
        if reply.get("id") == f"probe-{serial}":
            if "return" not in reply:
                fig.violations += 1
                fig.notes.append(f"probe failed: {reply}")
            return own
        if reply.get("id") == f"fz-{serial}":
            own = True
        if not ("return" in reply or ("error" in reply and {"class", "desc"} <= set(reply["error"]))):
            fig.violations += 1
            fig.notes.append(f"malformed reply {reply}")


ENGINES: dict[str, Callable[..., Figures]] = {"vfio": fuzz_vfio, "nvme": fuzz_nvme, "qmp": fuzz_qmp}
