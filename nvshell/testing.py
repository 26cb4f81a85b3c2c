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

REPO = Path(__file__).resolve().parent.parent
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
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
