"""Run the real programs from Python: nvshell as a subprocess, and the Linux test guest.

``NvshellProcess`` starts ``python -m nvshell`` headless (``--no-shell``) in a private run
directory and waits for its sockets; ``run_guest`` boots the ``../shared/guest`` VM (or the one
``NVSHELL_GUEST_DIR`` names) against one or more controller sockets and returns what the guest
script printed.  The project's tests, its benchmark scripts and users' own test suites share these.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

def _is_checkout(path: Path) -> bool:
    return (path / "device" / "__init__.py").is_file() and (path / "nvshell" / "testing.py").is_file()


def source_checkout() -> Path:
    """The nvshell source tree the tests belong to.

    Why not just this file's directory: once nvshell is installed, pytest loads the plugin
    (entry point ``pytest11``) -- and with it this module -- from site-packages before it puts a
    checkout's tests on the path, so CI running ``pytest`` in its clone imports the installed copy.
    Then the checkout is the current directory (or one above it) holding nvshell's source."""
    here = Path(__file__).resolve().parent.parent
    if _is_checkout(here):
        return here
    cwd = Path.cwd().resolve()
    return next((d for d in (cwd, *cwd.parents) if _is_checkout(d)), here)


REPO = source_checkout()
GUEST_DIR = Path(os.environ.get("NVSHELL_GUEST_DIR", REPO.parent / "shared" / "guest"))
GUEST_SCRIPTS = REPO / "tests" / "guest_scripts"
NVGUEST_DIR = Path(os.environ.get("NVGUEST_DIR", "/var/tmp/nvguest"))


class GuestUnavailable(RuntimeError):
    """The guest harness cannot run here (not root, not built, not found)."""


def guest_unavailable_reason() -> str | None:
    """Why guest tests cannot run here, or None when they can."""
    if not (GUEST_DIR / "run.sh").exists():
        return f"guest harness not found at {GUEST_DIR}"
    if os.geteuid() != 0:
        return "guest harness needs root (chroot and mount namespaces)"
    image = NVGUEST_DIR / "sid" / "opt" / "nvguest" / "vmlinuz"
    if not image.exists():
        return f"guest image not built (run {GUEST_DIR}/build.sh)"
    return None


class NvshellProcess:
    """A headless nvshell subprocess; use as a context manager."""

    def __init__(self, run_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.args = ["--run-dir", str(self.run_dir), "--no-shell", *args]
        self.env = dict(os.environ, **(env or {}))
        if (REPO / "device" / "__init__.py").is_file():  # a source checkout: run this tree's code
            self.env.setdefault("PYTHONPATH", str(REPO))
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = self.run_dir.parent / f"{self.run_dir.name}.log"

    def start(self, wait_for: list[str] | None = None, timeout: float = 20.0) -> "NvshellProcess":
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # nvshell refuses an open one
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "nvshell", *self.args], cwd=self.run_dir.parent, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        for name in wait_for if wait_for is not None else ["ctrl0.sock", "qmp.sock"]:
            self.wait_socket(self.run_dir / name, timeout)
        return self

    def wait_socket(self, path: Path, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not path.is_socket():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"nvshell exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no socket {path} after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def qmp_path(self) -> Path:
        """The default QMP socket (``RUN_DIR/qmp.sock``)."""
        return self.run_dir / "qmp.sock"

    def socket(self, ctrl: str = "ctrl0") -> Path:
        """A controller's vfio-user socket (``RUN_DIR/CTRL.sock``, where nvshell puts them)."""
        return self.run_dir / f"{ctrl}.sock"

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "NvshellProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_guest(sockets: list[Path], script: str, *, env: dict[str, str] | None = None, timeout: int = 300,
              append: str = "", extra: list[str] | None = None) -> tuple[int, str]:
    """Boot the test VM with one vfio-user-pci per socket, run ``script`` (text or a
    file name in tests/guest_scripts) and return (exit status, output)."""
    reason = guest_unavailable_reason()
    if reason:
        raise GuestUnavailable(reason)
    path = GUEST_SCRIPTS / script
    if not path.exists():
        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"nvshell-guest-{os.getpid()}-{time.monotonic_ns()}.sh"
        tmp.write_text(script)
        path = tmp
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(path), "--timeout", str(timeout)]
    for sock in sockets:
        cmd += ["--socket", str(sock)]
    for key, value in (env or {}).items():
        cmd += ["--env", f"{key}={value}"]
    if append:
        cmd += ["--append", append]
    cmd += extra or []
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout + 60)
    return done.returncode, done.stdout


# ---------------------------------------------------------------------------------------------
# A test guest without a VM: the vfio-user client driving a controller like a host's nvme driver


class NvmeHostError(AssertionError):
    """A command did not complete (in time, or at all), or completed with an error where none was expected."""


PAGE = 4096
#: CC value the host writes to enable: EN, CSS NVM, MPS 4 KiB, AMS round robin, IOSQES 6, IOCQES 4.
CC_ENABLE = 1 | (6 << 16) | (4 << 20)


class NvmeTestHost:
    """Drive an nvshell controller socket the way a host's NVMe driver does, without a VM.

    Why here: users' tests (and ours) want real NVMe commands against a running nvshell in
    milliseconds, not a 20 s guest boot.  It speaks vfio-user through
    ``nvshell.device.vfio_user.client.VfioUserClient`` (the path QEMU takes): shared guest RAM
    as a memfd, BAR0 registers, doorbells (mmap'ed when the controller offers it), and polls
    completion queues.  Commands go through ``submit``/``reap`` (any queue depth) or ``cmd``.
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, ram_size: int = 16 << 20,
                 ram_base: int = 0x4000_0000, timeout: float = 5.0):
        from nvshell.device.vfio_user.client import VfioUserClient
        from nvshell.device.vfio_user.interface import IrqIndex, RegionFlag, RegionIndex

        self.timeout = timeout
        self.client = VfioUserClient(timeout=timeout).connect(str(socket_path))
        self.client.negotiate()
        self.ram = self.client.map_memory(ram_base, ram_size)
        self._ram_end = ram_base + ram_size
        self._next = ram_base
        vectors = self.client.irq_info(IrqIndex.MSIX).count
        self.client.set_msix_eventfds(vectors)
        info = self.client.region_info(RegionIndex.BAR0)
        self._bar0 = RegionIndex.BAR0
        self.doorbells = self.client.mmap_region_area(RegionIndex.BAR0) if info.flags & RegionFlag.MMAP else None
        self.queues: dict[int, dict[str, int]] = {}
        self._cid = 0
        self._lba_sizes: dict[int, int] = {}

    # -- plumbing --------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """Page-aligned guest RAM (never freed: a test host lives for one test)."""
        addr = self._next
        self._next += (size + PAGE - 1) & ~(PAGE - 1)
        if self._next > self._ram_end:
            raise MemoryError("NvmeTestHost: guest RAM exhausted (pass a bigger ram_size)")
        return addr

    def _ring(self, index: int, value: int) -> None:
        if self.doorbells is not None:
            self.doorbells[4 * index:4 * index + 4] = value.to_bytes(4, "little")
        else:
            self.client.write32(self._bar0, 0x1000 + 4 * index, value)

    def prp(self, addr: int, length: int) -> tuple[int, int]:
        """PRP1/PRP2 for a page-aligned buffer of ``length`` bytes (a PRP list when needed)."""
        pages = max(1, (length + PAGE - 1) // PAGE)
        if pages == 1:
            return addr, 0
        if pages == 2:
            return addr, addr + PAGE
        lst = self.alloc(8 * (pages - 1))
        self.ram.write(lst, b"".join((addr + PAGE * i).to_bytes(8, "little") for i in range(1, pages)))
        return addr, lst

    # -- controller bring-up ---------------------------------------------------------------
    def enable(self, admin_depth: int = 32) -> None:
        """Program AQA/ASQ/ACQ, set CC.EN and wait for CSTS.RDY."""
        asq, acq = self.alloc(64 * admin_depth), self.alloc(16 * admin_depth)
        self.client.write32(self._bar0, 0x24, (admin_depth - 1) << 16 | (admin_depth - 1))
        self.client.region_write(self._bar0, 0x28, asq.to_bytes(8, "little"))
        self.client.region_write(self._bar0, 0x30, acq.to_bytes(8, "little"))
        self.client.write32(self._bar0, 0x14, CC_ENABLE)
        deadline = time.monotonic() + self.timeout
        while self.client.read32(self._bar0, 0x1C) & 1 == 0:
            if time.monotonic() > deadline:
                raise NvmeHostError("controller did not become ready (CSTS.RDY)")
            time.sleep(0.001)
        self.queues[0] = dict(sq=asq, cq=acq, size=admin_depth, tail=0, head=0, phase=1)

    def create_io_queue(self, qid: int = 1, size: int = 64, vector: int | None = None) -> None:
        """Create I/O CQ ``qid`` and SQ ``qid`` (interrupt vector ``qid`` by default)."""
        cq, sq = self.alloc(16 * size), self.alloc(64 * size)
        vec = qid if vector is None else vector
        self.check(self.cmd(0x05, cdw10=(size - 1) << 16 | qid, cdw11=vec << 16 | 3, dptr1=cq), "Create I/O CQ")
        self.check(self.cmd(0x01, cdw10=(size - 1) << 16 | qid, cdw11=qid << 16 | 1, dptr1=sq), "Create I/O SQ")
        self.queues[qid] = dict(sq=sq, cq=cq, size=size, tail=0, head=0, phase=1)

    def start(self, io_queues: int = 1, depth: int = 64) -> "NvmeTestHost":
        """``enable`` and create ``io_queues`` I/O queue pairs (1..N): the usual first step."""
        self.enable()
        for qid in range(1, io_queues + 1):
            self.create_io_queue(qid, depth)
        return self

    # -- commands --------------------------------------------------------------------------
    def submit(self, opcode: int, qid: int = 0, **fields: int) -> int:
        """Put one SQE on queue ``qid`` and ring its doorbell; return the command id."""
        from nvshell.device.nvme.spec import SQE

        q = self.queues[qid]
        self._cid = (self._cid + 1) & 0xFFFF
        self.ram.write(q["sq"] + 64 * q["tail"], SQE.pack(opcode=opcode, cid=self._cid, **fields))
        q["tail"] = (q["tail"] + 1) % q["size"]
        self._ring(2 * qid, q["tail"])
        return self._cid

    def reap(self, qid: int = 0, count: int = 1, timeout: float | None = None) -> list[Any]:
        """Wait for ``count`` CQEs on queue ``qid`` and return them (``CQE`` tuples), in order."""
        from nvshell.device.nvme.spec import CQE

        q = self.queues[qid]
        out: list[Any] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(out) < count:
            e = CQE.unpack(self.ram.read(q["cq"] + 16 * q["head"], 16))
            if e.status & 1 != q["phase"]:
                if time.monotonic() > deadline:
                    raise NvmeHostError(f"queue {qid}: {len(out)} of {count} completions after the timeout")
                time.sleep(0.0005)
                continue
            out.append(e)
            q["head"] = (q["head"] + 1) % q["size"]
            if q["head"] == 0:
                q["phase"] ^= 1
            self._ring(2 * qid + 1, q["head"])
        return out

    def cmd(self, opcode: int, qid: int = 0, **fields: int) -> Any:
        """Submit one command and return its CQE."""
        cid = self.submit(opcode, qid, **fields)
        e = self.reap(qid)[0]
        if e.cid != cid:
            raise NvmeHostError(f"queue {qid}: completion for cid {e.cid}, expected {cid}")
        return e

    @staticmethod
    def status(cqe: Any) -> int:
        """(SCT << 8) | SC of a CQE (0: success)."""
        return (cqe.status >> 1) & 0x7FF

    def check(self, cqe: Any, what: str = "command") -> Any:
        if self.status(cqe):
            raise NvmeHostError(f"{what} failed with status {self.status(cqe):#x}")
        return cqe

    def identify(self, cns: int, nsid: int = 0) -> bytes:
        buf = self.alloc(PAGE)
        self.check(self.cmd(0x06, nsid=nsid, dptr1=buf, cdw10=cns), f"Identify CNS {cns}")
        return self.ram.read(buf, PAGE)

    def lba_size(self, nsid: int = 1) -> int:
        """The namespace's LBA data size, from Identify Namespace (FLBAS, LBAF)."""
        if nsid not in self._lba_sizes:
            data = self.identify(0, nsid)
            if not any(data[:8]):
                raise NvmeHostError(f"namespace {nsid} is not active on this controller")
            flbas = data[26]
            fmt = (flbas & 0xF) | (((flbas >> 5) & 0x3) << 4)  # FLBAS bits 3:0 and 6:5
            lbaf = int.from_bytes(data[128 + 4 * fmt:132 + 4 * fmt], "little")
            self._lba_sizes[nsid] = 1 << ((lbaf >> 16) & 0xFF)
        return self._lba_sizes[nsid]

    def _io_fields(self, slba: int, nlb: int, nsid: int, buf: int, lba: int | None = None) -> dict[str, int]:
        p1, p2 = self.prp(buf, nlb * (lba or self.lba_size(nsid)))
        return dict(nsid=nsid, dptr1=p1, dptr2=p2, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=nlb - 1)

    def write(self, slba: int, data: bytes, *, nsid: int = 1, qid: int = 1) -> None:
        """Write ``data`` (a whole number of LBAs) at ``slba``."""
        lba = self.lba_size(nsid)
        if not data or len(data) % lba:
            raise ValueError(f"write of {len(data)} bytes: not a whole number of {lba}-byte LBAs")
        buf = self.alloc(len(data))
        self.ram.write(buf, data)
        self.check(self.cmd(0x01, qid, **self._io_fields(slba, len(data) // lba, nsid, buf)), f"write LBA {slba}")

    def read(self, slba: int, nlb: int, *, nsid: int = 1, qid: int = 1) -> bytes:
        """Read ``nlb`` LBAs at ``slba``."""
        buf = self.alloc(nlb * self.lba_size(nsid))
        self.check(self.cmd(0x02, qid, **self._io_fields(slba, nlb, nsid, buf)), f"read LBA {slba}")
        return self.ram.read(buf, nlb * self.lba_size(nsid))

    def io(self, opcode: int, count: int, *, nlb: int = 8, qid: int = 1, nsid: int = 1, depth: int = 8,
           lba_step: int | None = None, lba_size: int | None = None) -> list[Any]:
        """Issue ``count`` I/O commands (0x01 write, 0x02 read), ``depth`` at a time, on one buffer.

        Returns the CQEs; their status is not checked (fault-injection tests want to see it).
        ``lba_size`` skips the Identify that finds it (for a namespace that is not there)."""
        lba = lba_size or self.lba_size(nsid)
        buf = self.alloc(nlb * lba)
        step = nlb if lba_step is None else lba_step
        depth = max(1, min(depth, self.queues[qid]["size"] - 1))
        out: list[Any] = []
        issued = 0
        while issued < count:
            batch = min(depth, count - issued)
            for i in range(batch):
                self.submit(opcode, qid, **self._io_fields((issued + i) * step, nlb, nsid, buf, lba))
            out += self.reap(qid, batch)
            issued += batch
        return out

    def close(self) -> None:
        if self.doorbells is not None:
            self.doorbells.close()
            self.doorbells = None
        self.client.close()

    def __enter__(self) -> "NvmeTestHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# QMP from synchronous test code


class QmpConnection:
    """A ``qemu.qmp.QMPClient`` connected to nvshell, usable from synchronous (pytest) code.

    Why a loop thread: QMPClient is asyncio; tests are plain functions, and a test may run its
    own event loop.  The client lives on a private loop in a daemon thread; every call is handed
    to it and waited for.  Events are collected from the moment of connection, so
    ``wait_event`` also finds one that arrived before the call.
    """

    def __init__(self, address: str | os.PathLike[str] | tuple[str, int], *, timeout: float = 10.0):
        import asyncio
        import threading

        from qemu.qmp import QMPClient

        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nvshell-qmp", daemon=True)
        self._thread.start()
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.client = QMPClient("nvshell-test")
        addr = address if isinstance(address, tuple) else os.fspath(address)
        try:
            self._call(self.client.connect(addr))
        except BaseException:
            self._stop_loop()
            raise
        self._pump: Any = self._call(self._start_pump())

    async def _start_pump(self) -> Any:
        import asyncio

        return asyncio.ensure_future(self._collect())

    async def _stop_pump(self) -> None:
        import asyncio

        self._pump.cancel()
        await asyncio.gather(self._pump, return_exceptions=True)

    async def _collect(self) -> None:
        async for event in self.client.events:
            with self._cond:
                self.events.append(dict(event))
                self._cond.notify_all()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout or self.timeout)

    def execute(self, command: str, arguments: dict[str, Any] | None = None, /, **kwargs: Any) -> Any:
        """Run a QMP command and return its ``return`` value; a QMP error raises
        ``qemu.qmp.ExecuteError`` (its ``error_class`` and ``args``/message as QEMU's)."""
        args = {**(arguments or {}), **kwargs}
        return self._call(self.client.execute(command, args or None))

    def hmp(self, line: str) -> str:
        """An HMP line through ``human-monitor-command`` (what the shell prints)."""
        return str(self.execute("human-monitor-command", {"command-line": line}))

    def wait_event(self, name: str, timeout: float | None = None, **data: Any) -> dict[str, Any]:
        """The first event ``name`` (not yet returned by a previous wait) whose ``data`` holds ``data``'s items.

        Raises ``TimeoutError`` naming the events that did arrive."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._cond:
            while True:
                for i, ev in enumerate(self.events):
                    got = ev.get("data") or {}
                    if ev.get("event") == name and all(got.get(k) == v for k, v in data.items()):
                        del self.events[i]
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({str(e.get("event")) for e in self.events})
                    raise TimeoutError(f"no {name} event with {data} (events seen: {seen})")
                self._cond.wait(left)

    # -- helpers for the common steps of a test ------------------------------------------------
    def add_namespace(self, id: str, size: str | int = "64M", *, subsys: str = "subsys0",
                      attached_to: str | list[str] = "all", backend: str = "memory", **props: Any) -> None:
        """``object-add x-nvme-ns-nvm`` (more properties as keyword arguments, ``_`` for ``-``)."""
        attached = [attached_to] if isinstance(attached_to, str) else list(attached_to)
        extra = {k.replace("_", "-"): v for k, v in props.items()}
        self.execute("object-add", {"qom-type": "x-nvme-ns-nvm", "id": id, "subsys": subsys, "size": str(size),
                                    "backend": backend, "attached-to": attached, **extra})

    def del_namespace(self, id: str) -> None:
        self.execute("object-del", {"id": id})

    def add_fault(self, id: str, **rule: Any) -> dict[str, Any]:
        """``x-nvme-fault-add`` with the rule's keyval names (``opcode="read", action="status", ...``)."""
        return self.execute("x-nvme-fault-add", {"id": id, **rule})

    def del_fault(self, id: str) -> None:
        self.execute("x-nvme-fault-del", {"id": id})

    def faults(self) -> list[dict[str, Any]]:
        return list(self.execute("x-nvme-fault-list"))

    def trace(self, *patterns: str, enable: bool = True) -> None:
        """Switch trace points matching each glob on (or off)."""
        for pattern in patterns:
            self.execute("trace-event-set-state", {"name": pattern, "enable": enable})

    def trace_file(self, path: str | os.PathLike[str] | None, *, flush: bool = False) -> Any:
        """Start recording to ``path`` (None: stop recording, which closes the file)."""
        if path is None:
            return self.execute("x-trace-file", {"enable": False})
        if flush:
            return self.execute("x-trace-file", {"flush": True})
        return self.execute("x-trace-file", {"enable": True, "path": os.fspath(path)})

    def close(self) -> None:
        if not self._loop.is_closed():
            try:
                self._call(self._stop_pump())
                self._call(self.client.disconnect())
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> "QmpConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: str | os.PathLike[str], name: str | None = None) -> list[dict[str, Any]]:
    """Every record of an nvshell trace file (optionally only trace points matching the glob ``name``)."""
    from nvshell.device.trace_decode import filter_names, iter_records

    return list(filter_names(iter_records(os.fspath(path)), name))
