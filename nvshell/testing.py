"""Run the real programs from Python: nvshell as a subprocess, and the Linux test guest.

``NvshellProcess`` starts ``python -m nvshell`` headless (``--no-shell``) in a private run
directory and waits for its sockets; ``run_guest`` boots the ``../shared/guest`` VM (or the one
``NVSHELL_GUEST_DIR`` names) against one or more controller sockets and returns what the guest
script printed.  The project's tests, its benchmark scripts and users' own test suites share these.
"""

from __future__ import annotations

import os
import select
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


def wait_until(predicate: Any, timeout: float = 5.0, what: str = "condition", interval: float = 0.005) -> Any:
    """Poll ``predicate()`` until it returns something true (returned) or ``timeout`` passes
    (``TimeoutError`` naming ``what``).

    Why: a test that sleeps and then asserts fails on a loaded machine and wastes time on an
    idle one; this waits exactly as long as the condition takes, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {timeout} s")
        time.sleep(interval)


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
    """A headless nvshell subprocess; use as a context manager.

    ``NvshellProcess.globals`` (``use_globals``) are appended to every command line as
    ``-global`` options: a whole test suite runs with other device defaults (the project's
    ``pytest --nvshell-global x-nvme-ctrl.doorbells=mmap``), while a test that sets the property
    on its device keeps its value (an explicit property wins over a global)."""

    globals: tuple[str, ...] = ()

    @classmethod
    def use_globals(cls, globals: "list[str] | tuple[str, ...]") -> None:
        """``DRIVER.PROP=VALUE`` defaults for every process started from now on."""
        cls.globals = tuple(globals)

    def __init__(self, run_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.run_dir = Path(run_dir)
        self.args = ["--run-dir", str(self.run_dir), "--no-shell", *args]
        for g in self.globals:
            self.args += ["-global", g]
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
    """A command did not complete (in time, or at all), or completed with an error where none was
    expected (then ``status``, (SCT << 8) | SC, and ``dnr`` say which)."""

    def __init__(self, message: str, status: int | None = None, dnr: bool = False):
        super().__init__(message)
        self.status = status
        self.dnr = dnr


PAGE = 4096
#: The host's data buffer for ``admin`` and ``nvm`` (followed by a guard page).
BUF_SIZE = 64 << 10
#: CC.CSS: the NVM command set only, or all I/O command sets the controller supports (CAP.CSS bit 6).
CSS_NVM = 0
CSS_ALL = 6
#: Written past the data of each ``admin`` command: a controller writing more than asked overwrites it.
GUARD = b"\xa5" * 64


class _Spec:
    """A name of ``nvshell.device.nvme.spec``, imported on first use.

    Why lazy: pytest loads this module with the plugin before any test runs; a broken device
    model must fail the tests that use it, not the start of every test session."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        from nvshell.device.nvme import spec

        return getattr(getattr(spec, self._name), attr)


A = _Spec("AdminOpcode")
N = _Spec("NvmOpcode")


def _changes_formats(opcode: int) -> bool:
    """Admin commands after which a namespace's format may differ (cached LBA sizes are dropped)."""
    return opcode in (A.NAMESPACE_MANAGEMENT, A.NAMESPACE_ATTACHMENT, A.FORMAT_NVM, A.SANITIZE)


def cc_enable(css: int = CSS_NVM) -> int:
    """The CC value a host writes to enable: EN, ``css``, MPS 4 KiB, AMS round robin, IOSQES 6, IOCQES 4."""
    return 1 | (css << 4) | (6 << 16) | (4 << 20)


CC_ENABLE = cc_enable(CSS_NVM)


def status(cqe: Any) -> int:
    """(SCT << 8) | SC of a CQE (0: success)."""
    return (cqe.status >> 1) & 0x7FF


def dnr(cqe: Any) -> bool:
    """The CQE's Do Not Retry bit."""
    return bool(cqe.status & 0x8000)


class ServedController:
    """A real ``Controller`` in a real ``Subsystem`` on its own IOThread, served on ``socket_path``
    by the real ``VfioUserServer``.

    Why: tests of the device itself (admin commands, zones, protection information, hostile
    clients) look at controller state while a host drives it, without starting a process.
    ``NvmeTestHost.serve`` connects a host to one.  Controller state belongs to the IOThread
    (the threading rule): read or change it with ``run``."""

    def __init__(self, socket_path: str | os.PathLike[str], *, name: str = "ctrl0", subsystem: Any = None,
                 ns_size: int = 0, lba_size: int = 512, **config: Any):
        import nvshell.device.nvme  # noqa: F401  (registers every command)
        from nvshell.device.iothread import IOThread
        from nvshell.device.nvme.config import ControllerConfig
        from nvshell.device.nvme.controller import Controller
        from nvshell.device.nvme.subsystem import Subsystem
        from nvshell.device.vfio_user.server import VfioUserServer

        config.setdefault("serial", name)
        config.setdefault("max_ioqpairs", 4)
        config.setdefault("max_intr_vectors", config["max_ioqpairs"] + 1)
        self.socket = os.fspath(socket_path)
        self.closed = False
        self.iothread = IOThread(f"host-{name}")
        self.iothread.start()
        try:
            self.subsys = subsystem if subsystem is not None else Subsystem()
            self.ctrl = Controller(ControllerConfig(**config), self.subsys, self.iothread)
            self.ctrl.name = name
            #: The namespace ``ns_size`` asked for (NSID 1 in a fresh subsystem), else None.
            self.ns: Any = None
            if ns_size:
                from nvshell.device.backends import MemoryBackend
                from nvshell.device.nvme.namespace import NvmNamespace

                self.ns = NvmNamespace(MemoryBackend(ns_size), lba_size=lba_size)
                self.add_namespace(self.ns, notify=False)
            self.server = VfioUserServer(self.socket, self.ctrl.pci, self.iothread, name=name)
            self.server.start()
        except BaseException:
            self.iothread.stop()
            raise

    def add_namespace(self, ns: Any, *, notify: bool = True) -> int:
        """Add ``ns`` to the subsystem and attach it to this controller; returns its NSID."""
        nsid = int(self.subsys.add_namespace(ns))
        self.subsys.attach(nsid, self.ctrl, notify=notify)
        return nsid

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the controller's IOThread, waited for."""
        return self.iothread.run(fn, *args)

    def close(self) -> None:
        """Stop serving and shut the controller down (once; its state stays readable)."""
        if self.closed:
            return
        self.closed = True
        self.server.close()
        self.iothread.run(self.ctrl.shutdown)
        self.iothread.stop()


class NvmeTestHost:
    """Drive an nvshell controller socket the way a host's NVMe driver does, without a VM.

    Why here: users' tests (and ours) want real NVMe commands against a running nvshell in
    milliseconds, not a 20 s guest boot.  It speaks vfio-user through
    ``nvshell.device.vfio_user.client.VfioUserClient`` (the path QEMU takes): shared guest RAM
    as a memfd, BAR0 registers, doorbells (mmap'ed when the controller offers it), MSI-X
    eventfds: completions are waited for on the queue's interrupt, which is never consumed
    (a test checks it with ``client.wait_irq``).

    Layers, each usable alone: ``submit``/``reap``/``peek`` (any queue depth), ``cmd`` (one
    command; on the admin queue, completions of outstanding Asynchronous Event Requests are kept
    for ``aens``), ``admin``/``nvm`` (with the host's data buffer ``buf``), and named commands
    (``identify``, ``log``, ``get_feature``, ``format_nvm``, ``ns_create``, ``zone_send``...).
    Named commands that return data check the status (``NvmeHostError``); ``cmd``, ``admin``,
    ``nvm`` and the ``zone_*`` commands return the CQE for the test to judge.

    ``NvmeTestHost.serve(dir, ...)`` also starts a controller in this process
    (``ServedController``, as ``target``) for tests that look inside it (``ctrl``, ``run``).
    """

    def __init__(self, socket_path: str | os.PathLike[str], *, ram_size: int = 16 << 20,
                 ram_base: int = 0x4000_0000, timeout: float = 5.0, target: ServedController | None = None):
        from nvshell.device.vfio_user.client import VfioUserClient
        from nvshell.device.vfio_user.interface import IrqIndex, RegionFlag, RegionIndex

        self.timeout = timeout
        self.target = target
        self.doorbells: Any = None
        self.client = VfioUserClient(timeout=timeout)
        try:
            self.client.connect(os.fspath(socket_path))
            self.client.negotiate()
            self.ram = self.client.map_memory(ram_base, ram_size)
            self.ram_base, self.ram_size = ram_base, ram_size
            self._next = ram_base
            self.msix_vectors = int(self.client.irq_info(IrqIndex.MSIX).count)
            self.client.set_msix_eventfds(self.msix_vectors)
            self._bar0 = RegionIndex.BAR0
            if self.client.region_info(RegionIndex.BAR0).flags & RegionFlag.MMAP:
                self.doorbells = self.client.mmap_region_area(RegionIndex.BAR0)
            #: Per queue: sq, cq (guest addresses), size, tail, head, phase, vector (None: no interrupt).
            self.queues: dict[int, dict[str, Any]] = {}
            self.buf = self.alloc(BUF_SIZE + PAGE)
            self._cid = 0
            self._lba_sizes: dict[int, int] = {}
            self._prp_lists: dict[tuple[int, int], int] = {}
            self._queue_mem: dict[tuple[str, int, int], int] = {}
            self._aer: set[int] = set()
            self._aens: list[int] = []
            self._admin_depth, self._css = 32, None
        except BaseException:
            self.close()
            raise

    @classmethod
    def serve(cls, directory: str | os.PathLike[str], *, name: str = "ctrl0", ram_size: int = 8 << 20,
              timeout: float = 5.0, **controller: Any) -> "NvmeTestHost":
        """A ``ServedController`` on ``directory/NAME.sock`` (``controller``: its options and
        ``ControllerConfig`` fields) and a host connected to it, not yet enabled."""
        target = ServedController(Path(directory) / f"{name}.sock", name=name, **controller)
        try:
            return cls(target.socket, ram_size=ram_size, timeout=timeout, target=target)
        except BaseException:
            target.close()
            raise

    # -- the served controller (only for a host made by ``serve``) ---------------------------
    def _target(self) -> ServedController:
        if self.target is None:
            raise AttributeError("this host drives a socket it did not start (see NvmeTestHost.serve)")
        return self.target

    @property
    def ctrl(self) -> Any:
        return self._target().ctrl

    @property
    def subsys(self) -> Any:
        return self._target().subsys

    @property
    def ns(self) -> Any:
        return self._target().ns

    def run(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` on the served controller's IOThread."""
        return self._target().run(fn, *args)

    # -- plumbing --------------------------------------------------------------------------
    def alloc(self, size: int) -> int:
        """Page-aligned guest RAM (never freed: a test host lives for one test)."""
        addr = self._next
        self._next += (size + PAGE - 1) & ~(PAGE - 1)
        if self._next > self.ram_base + self.ram_size:
            raise MemoryError("NvmeTestHost: guest RAM exhausted (pass a bigger ram_size)")
        return addr

    @property
    def doorbell_mmap(self) -> bool:
        """Whether the controller offered its doorbell page as an mmap area."""
        return self.doorbells is not None

    def ring(self, index: int, value: int) -> None:
        """Write doorbell ``index`` (2*qid: SQ tail, 2*qid+1: CQ head)."""
        if self.doorbells is not None:
            self.doorbells[4 * index:4 * index + 4] = value.to_bytes(4, "little")
        else:
            self.client.write32(self._bar0, 0x1000 + 4 * index, value)

    def reg32(self, offset: int) -> int:
        return int(self.client.read32(self._bar0, offset))

    def reg64(self, offset: int) -> int:
        return int.from_bytes(self.client.region_read(self._bar0, offset, 8), "little")

    def write_reg32(self, offset: int, value: int) -> None:
        self.client.write32(self._bar0, offset, value)

    def prp(self, addr: int, length: int) -> tuple[int, int]:
        """PRP1/PRP2 for a page-aligned buffer of ``length`` bytes (a PRP list when needed)."""
        pages = max(1, (length + PAGE - 1) // PAGE)
        if pages == 1:
            return addr, 0
        if pages == 2:
            return addr, addr + PAGE
        lst = self._prp_lists.get((addr, pages))
        if lst is None:
            lst = self._prp_lists[(addr, pages)] = self.alloc(8 * (pages - 1))
            self.ram.write(lst, b"".join((addr + PAGE * i).to_bytes(8, "little") for i in range(1, pages)))
        return addr, lst

    def _wait_regs(self, ready: bool, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while bool(self.reg32(0x1C) & 1) != ready:
            if time.monotonic() > deadline:
                raise NvmeHostError(f"{what}: CSTS.RDY did not become {int(ready)} (CSTS {self.reg32(0x1C):#x})")
            time.sleep(0.001)

    # -- controller bring-up ---------------------------------------------------------------
    def enable(self, admin_depth: int = 32, css: int | None = None) -> "NvmeTestHost":
        """Program AQA/ASQ/ACQ, set CC.EN and wait for CSTS.RDY.  ``css`` None: as Linux, every
        I/O command set when CAP.CSS offers it, else NVM only."""
        if css is None:
            css = CSS_ALL if self.reg64(0) >> 37 & (1 << 6) else CSS_NVM
        self._admin_depth, self._css = admin_depth, css
        asq = self._queue_memory(("sq", 0, admin_depth), 64 * admin_depth)
        acq = self._queue_memory(("cq", 0, admin_depth), 16 * admin_depth)
        self.client.write32(self._bar0, 0x24, (admin_depth - 1) << 16 | (admin_depth - 1))
        self.client.region_write(self._bar0, 0x28, asq.to_bytes(8, "little"))
        self.client.region_write(self._bar0, 0x30, acq.to_bytes(8, "little"))
        self.client.write32(self._bar0, 0x14, cc_enable(css))
        self._wait_regs(True, "enable")
        self.queues[0] = dict(sq=asq, cq=acq, size=admin_depth, tail=0, head=0, phase=1, vector=0)
        return self

    def disable(self) -> None:
        """CC.EN 1 -> 0 (a Controller Level Reset): every queue is gone."""
        self.client.write32(self._bar0, 0x14, 0)
        self._wait_regs(False, "disable")
        self.queues.clear()
        self._aer.clear()
        self._lba_sizes.clear()

    def reset(self) -> None:
        """``disable``, then ``enable`` again as before (a fresh admin queue)."""
        self.disable()
        self.enable(self._admin_depth, self._css)

    def _queue_memory(self, key: tuple[str, int, int], size: int) -> int:
        """Guest memory for a queue, the same each time the queue is made again (a host that
        resets often does not run out of RAM); zeroed, so no stale phase tag looks posted."""
        addr = self._queue_mem.get(key)
        if addr is None:
            addr = self._queue_mem[key] = self.alloc(size)
        self.ram.write(addr, bytes(size))
        return addr

    def create_io_queue(self, qid: int = 1, size: int = 64, vector: int | None = None, *,
                        interrupts: bool = True) -> None:
        """Create I/O CQ ``qid`` and SQ ``qid`` (interrupt vector ``qid`` by default; with
        ``interrupts=False`` the CQ has none and completions are polled)."""
        cq = self._queue_memory(("cq", qid, size), 16 * size)
        sq = self._queue_memory(("sq", qid, size), 64 * size)
        vec = qid if vector is None else vector
        cdw11 = vec << 16 | 3 if interrupts else 1
        self.check(self.cmd(A.CREATE_IO_CQ, cdw10=(size - 1) << 16 | qid, cdw11=cdw11, dptr1=cq), "Create I/O CQ")
        self.check(self.cmd(A.CREATE_IO_SQ, cdw10=(size - 1) << 16 | qid, cdw11=qid << 16 | 1, dptr1=sq),
                   "Create I/O SQ")
        self.queues[qid] = dict(sq=sq, cq=cq, size=size, tail=0, head=0, phase=1, vector=vec if interrupts else None)

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
        if qid == 0 and _changes_formats(opcode):
            self._lba_sizes.clear()
        self.ram.write(q["sq"] + 64 * q["tail"], SQE.pack(opcode=opcode, cid=self._cid, **fields))
        q["tail"] = (q["tail"] + 1) % q["size"]
        self.ring(2 * qid, q["tail"])
        return self._cid

    def peek(self, qid: int = 0) -> Any | None:
        """The CQE at queue ``qid``'s head if the controller posted it (not consumed), else None."""
        from nvshell.device.nvme.spec import CQE

        q = self.queues[qid]
        e = CQE.unpack(self.ram.read(q["cq"] + 16 * q["head"], 16))
        return e if e.status & 1 == q["phase"] else None

    def reap(self, qid: int = 0, count: int = 1, timeout: float | None = None) -> list[Any]:
        """Wait for ``count`` CQEs on queue ``qid`` and return them (``CQE`` tuples), in order."""
        q = self.queues[qid]
        out: list[Any] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        irq_fd = self.client.irq_fds.get(q.get("vector"))   # None: no interrupt, poll
        while len(out) < count:
            e = self.peek(qid)
            if e is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise NvmeHostError(f"queue {qid}: {len(out)} of {count} completions after the timeout")
                if irq_fd is not None and select.select([irq_fd], [], [], min(left, 0.01))[0]:
                    irq_fd = None    # signalled (maybe by an earlier completion): poll from here on
                elif irq_fd is None:
                    time.sleep(0.0005)
                continue
            out.append(e)
            q["head"] = (q["head"] + 1) % q["size"]
            if q["head"] == 0:
                q["phase"] ^= 1
            self.ring(2 * qid + 1, q["head"])
        return out

    def cmd(self, opcode: int, qid: int = 0, *, timeout: float | None = None, **fields: int) -> Any:
        """Submit one command and return its CQE."""
        cid = self.submit(opcode, qid, **fields)
        while True:
            e = self.reap(qid, timeout=timeout)[0]
            if qid == 0 and self._take_aen(e):
                continue
            if e.cid != cid:
                raise NvmeHostError(f"queue {qid}: completion for cid {e.cid}, expected {cid}")
            return e

    status = staticmethod(status)
    dnr = staticmethod(dnr)

    def check(self, cqe: Any, what: str = "command") -> Any:
        if status(cqe):
            raise NvmeHostError(f"{what} failed with status {status(cqe):#x}", status(cqe), dnr(cqe))
        return cqe

    def admin(self, opcode: int, *, data: bytes | None = None, length: int = 0, **fields: int) -> tuple[Any, bytes]:
        """One admin command with ``buf`` (or, when larger, fresh RAM) as its data (PRP1, PRP2 or a
        PRP list as needed):
        ``data`` is written there first; returns the CQE and the first ``length`` (or
        ``len(data)``) bytes of ``buf`` afterwards."""
        n = max(length, len(data or b""))
        addr = self.buf if n <= BUF_SIZE else self.alloc(n + len(GUARD))
        self.ram.write(addr, (data or b"").ljust(n, b"\0") + GUARD)
        p1, p2 = self.prp(addr, n)
        fields.setdefault("dptr1", p1)
        fields.setdefault("dptr2", p2)
        e = self.cmd(opcode, **fields)
        if self.ram.read(addr + n, len(GUARD)) != GUARD:
            raise NvmeHostError(f"admin opcode {opcode:#x}: the controller wrote past the {n}-byte buffer")
        return e, self.ram.read(addr, n) if n else b""

    # -- Asynchronous Event Requests -------------------------------------------------------
    def _take_aen(self, cqe: Any) -> bool:
        if cqe.cid not in self._aer:
            return False
        self._aer.discard(cqe.cid)
        if status(cqe):
            raise NvmeHostError(f"Asynchronous Event Request failed with status {status(cqe):#x}")
        self._aens.append(cqe.dw0)
        return True

    def request_aen(self) -> None:
        """Have one Asynchronous Event Request outstanding (its completion goes to ``aens``)."""
        if not self._aer:
            self._aer.add(self.submit(A.ASYNC_EVENT_REQUEST, 0))

    def aens(self, timeout: float = 2.0) -> list[int]:
        """AEN completions (dword 0) received so far, waiting up to ``timeout`` for one."""
        deadline = time.monotonic() + timeout
        while not self._aens and self._aer:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                cqe = self.reap(0, timeout=min(left, 0.05))[0]
            except NvmeHostError:
                continue
            if not self._take_aen(cqe):
                raise NvmeHostError(f"admin queue: unexpected completion for cid {cqe.cid}")
        out, self._aens = self._aens, []
        return out

    # -- admin commands --------------------------------------------------------------------
    def identify(self, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> bytes:
        e, data = self.admin(A.IDENTIFY, length=PAGE, nsid=nsid, cdw10=cns | (cntid << 16), cdw11=csi << 24)
        self.check(e, f"Identify CNS {cns}")
        return data

    def identify_ctrl(self) -> bytes:
        return self.identify(0x01)

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

    def get_log(self, lid: int, length: int, *, nsid: int | None = None, offset: int = 0, rae: bool = False,
                lsp: int = 0, lsi: int = 0, csi: int = 0) -> tuple[Any, bytes]:
        """Get Log Page (``nsid`` None: the broadcast NSID): the CQE and the ``length`` bytes read."""
        from nvshell.device.nvme.spec import BROADCAST_NSID

        numd = length // 4 - 1
        return self.admin(A.GET_LOG_PAGE, length=length, nsid=BROADCAST_NSID if nsid is None else nsid,
                          cdw10=lid | (lsp << 8) | (int(rae) << 15) | ((numd & 0xFFFF) << 16),
                          cdw11=(numd >> 16) | (lsi << 16), cdw12=offset & 0xFFFFFFFF, cdw13=offset >> 32,
                          cdw14=csi << 24)

    def log(self, lid: int, length: int, **kw: Any) -> bytes:
        """Get Log Page, checked: the bytes read."""
        e, data = self.get_log(lid, length, **kw)
        self.check(e, f"Get Log Page {lid:#x}")
        return data

    def get_feature(self, fid: int, sel: int = 0, nsid: int = 0, cdw11: int = 0) -> Any:
        return self.cmd(A.GET_FEATURES, nsid=nsid, cdw10=fid | (sel << 8), cdw11=cdw11, dptr1=self.buf)

    def set_feature(self, fid: int, value: int, nsid: int = 0, save: bool = False, data: bytes | None = None) -> Any:
        return self.admin(A.SET_FEATURES, data=data, nsid=nsid, cdw10=fid | (int(save) << 31), cdw11=value)[0]

    def enable_notices(self, aec: int = 0xF00) -> None:
        """Set Features Asynchronous Event Configuration, as a host does after its first scan."""
        self.check(self.set_feature(0x0B, aec), "Set Features AEC")

    def format_nvm(self, nsid: int, lbaf: int, *, mset: int = 0, pi: int = 0, pil: int = 0, ses: int = 0) -> Any:
        cdw10 = (lbaf & 0xF) | (mset << 4) | (pi << 5) | (pil << 8) | (ses << 9) | ((lbaf >> 4) << 12)
        return self.check(self.cmd(A.FORMAT_NVM, nsid=nsid, cdw10=cdw10), "Format NVM")

    def ns_create(self, nsze: int, flbas: int = 0, nmic: int = 1, *, ncap: int | None = None, csi: int = 0) -> int:
        """Namespace Management create; returns the new NSID."""
        data = bytearray(PAGE)
        data[0:16] = nsze.to_bytes(8, "little") + (nsze if ncap is None else ncap).to_bytes(8, "little")
        data[26] = flbas
        data[30] = nmic
        e, _ = self.admin(A.NAMESPACE_MANAGEMENT, data=bytes(data), cdw10=0, cdw11=csi << 24)
        return int(self.check(e, "Namespace Management create").dw0)

    def ns_attach(self, nsid: int, cntlids: list[int], detach: bool = False) -> None:
        data = b"".join(n.to_bytes(2, "little") for n in [len(cntlids), *cntlids])
        e, _ = self.admin(A.NAMESPACE_ATTACHMENT, data=data.ljust(PAGE, b"\0"), nsid=nsid, cdw10=1 if detach else 0)
        self.check(e, "Namespace Attachment")

    # -- I/O commands ----------------------------------------------------------------------
    def _lba(self, nsid: int, lba_size: int | None) -> int:
        if lba_size:
            return lba_size
        try:
            return self.lba_size(nsid)
        except NvmeHostError:
            return 512          # no such namespace: the command's status will say so

    def _io_fields(self, slba: int, nlb: int, nsid: int, buf: int, lba: int | None = None) -> dict[str, int]:
        p1, p2 = self.prp(buf, nlb * (lba or self.lba_size(nsid)))
        return dict(nsid=nsid, dptr1=p1, dptr2=p2, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=nlb - 1)

    def nvm(self, opcode: int, slba: int = 0, nlb: int = 1, *, nsid: int = 1, data: bytes | None = None,
            qid: int = 1, cdw12: int = 0, lba_size: int | None = None, **fields: int) -> tuple[Any, bytes]:
        """One I/O command on ``nlb`` LBAs at ``slba`` with a data buffer (``buf`` when it fits):
        ``data`` is written there first; returns the CQE and the buffer afterwards."""
        n = max(nlb * self._lba(nsid, lba_size), len(data or b""))
        addr = self.buf if n <= BUF_SIZE else self.alloc(n)
        self.ram.write(addr, (data or b"").ljust(n, b"\0"))
        p1, p2 = self.prp(addr, n)
        fields.setdefault("dptr1", p1)
        fields.setdefault("dptr2", p2)
        e = self.cmd(opcode, qid, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                     cdw12=((nlb - 1) & 0xFFFF) | cdw12, **fields)
        return e, self.ram.read(addr, n)

    def write(self, slba: int, data: bytes, *, nsid: int = 1, qid: int = 1) -> None:
        """Write ``data`` (a whole number of LBAs) at ``slba``."""
        lba = self.lba_size(nsid)
        if not data or len(data) % lba:
            raise ValueError(f"write of {len(data)} bytes: not a whole number of {lba}-byte LBAs")
        self.check(self.nvm(N.WRITE, slba, len(data) // lba, nsid=nsid, qid=qid, data=data)[0], f"write LBA {slba}")

    def read(self, slba: int, nlb: int, *, nsid: int = 1, qid: int = 1) -> bytes:
        """Read ``nlb`` LBAs at ``slba``."""
        e, data = self.nvm(N.READ, slba, nlb, nsid=nsid, qid=qid, lba_size=self.lba_size(nsid))
        self.check(e, f"read LBA {slba}")
        return data

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

    # -- zoned namespaces ------------------------------------------------------------------
    def zone_send(self, nsid: int, slba: int, action: int, *, select_all: bool = False, data: bytes = b"",
                  qid: int = 1) -> Any:
        """Zone Management Send (Zone Send Action ``action``; ``data``: a descriptor extension)."""
        fields: dict[str, int] = {}
        if data:
            self.ram.write(self.buf, data)
            fields["dptr1"], fields["dptr2"] = self.prp(self.buf, len(data))
        return self.cmd(N.ZONE_MANAGEMENT_SEND, qid, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                        cdw13=action | (int(select_all) << 8), **fields)

    def zone_receive(self, nsid: int, slba: int, size: int, *, action: int = 0, field: int = 0,
                     partial: bool = False, qid: int = 1) -> tuple[Any, bytes]:
        """Zone Management Receive (a report of ``size`` bytes); returns the CQE and the data."""
        size = max(size, 4)
        addr = self.buf if size <= BUF_SIZE else self.alloc(size)
        self.ram.write(addr, bytes(size))
        p1, p2 = self.prp(addr, size)
        e = self.cmd(N.ZONE_MANAGEMENT_RECEIVE, qid, nsid=nsid, dptr1=p1, dptr2=p2, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                     cdw12=size // 4 - 1, cdw13=action | (field << 8) | (int(partial) << 16))
        return e, self.ram.read(addr, size)

    def zone_append(self, nsid: int, zslba: int, nlb: int, data: bytes = b"", *, qid: int = 1) -> Any:
        """Zone Append; the CQE's dw0/dw1 hold the LBA written."""
        return self.nvm(N.ZONE_APPEND, zslba, nlb, nsid=nsid, data=data, qid=qid)[0]

    def close(self) -> None:
        if self.doorbells is not None:
            self.doorbells.close()
            self.doorbells = None
        self.client.close()
        if self.target is not None:
            self.target.close()

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
