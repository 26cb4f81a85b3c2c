"""``nvshell-vm`` (nvshell/vm.py) without booting: the command line it builds for a running
nvshell (``--dry-run``), its refusals, and the QEMU version check.  The boot itself, with the
guest harness's QEMU and kernel and fio in the guest, is tests/test_guest_tools.py."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nvshell.testing import REPO, NvmeTestHost
from nvshell.vm import VmError, check_qemu, parse_qemu_version


def vm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nvshell.vm", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


TWO = ["-object", "x-nvme-subsystem,id=s0", "-device", "x-nvme-ctrl,id=ca,subsys=s0",
       "-device", "x-nvme-ctrl,id=cb,subsys=s0"]


def test_dry_run_command_line(nvshell_factory) -> None:
    nv = nvshell_factory(*TWO, wait_for=["ca.sock", "cb.sock", "qmp.sock"])
    r = vm("--run-dir", str(nv.run_dir), "--qemu", "/opt/q/qemu-system-x86_64", "--accel", "tcg", "--mem", "2G",
           "--cpus", "3", "--kernel", "/boot/vmlinuz", "--initrd", "/boot/initrd", "--append", "root=/dev/nvme0n1 rw",
           "--dry-run", "--", "-nic", "user", "-s")
    assert r.returncode == 0, r.stderr
    dev = lambda c: json.dumps({"driver": "vfio-user-pci", "id": f"nvshell-{c}",  # noqa: E731
                                "socket": {"type": "unix", "path": str(nv.socket(c))}}, separators=(",", ":"))
    assert shlex.split(r.stdout) == [
        "/opt/q/qemu-system-x86_64", "-machine", "q35,memory-backend=mem", "-accel", "tcg", "-cpu", "max",
        "-smp", "3", "-m", "2G", "-object", "memory-backend-memfd,id=mem,size=2G,share=on",
        "-display", "none", "-serial", "mon:stdio", "-device", dev("ca"), "-device", dev("cb"),
        "-kernel", "/boot/vmlinuz", "-initrd", "/boot/initrd", "-append", "console=ttyS0 root=/dev/nvme0n1 rw",
        "-nic", "user", "-s"]
    # --connect instead of --run-dir, one controller, a disk image instead of a kernel.
    r = vm("--connect", f"unix:{nv.qmp_path}", "--ctrl", "cb", "--accel", "kvm", "--disk", "/img/a,b.qcow2",
           "--disk", "/img/data.raw", "--console", "file:/tmp/c.log", "--dry-run")
    assert r.returncode == 0, r.stderr
    words = shlex.split(r.stdout)
    assert words[0] == "qemu-system-x86_64" and words[words.index("-cpu") + 1] == "host"
    assert [w for w in words if w.startswith("{")] == [dev("cb")]
    assert words[words.index("-serial") + 1] == "file:/tmp/c.log"
    drives = [words[i + 1] for i, w in enumerate(words) if w == "-drive"]
    assert drives == ["file=/img/a,,b.qcow2,if=virtio,format=qcow2", "file=/img/data.raw,if=virtio,format=raw"]
    assert "-kernel" not in words


def test_refusals(nvshell_factory, tmp_path: Path) -> None:
    nv = nvshell_factory()
    base = ["--run-dir", str(nv.run_dir), "--dry-run"]
    r = vm(*base)
    assert r.returncode == 2 and "nothing to boot: give --kernel (with --initrd) or --disk" in r.stderr
    r = vm(*base, "--disk", "d.img", "--initrd", "i")
    assert r.returncode == 2 and "--initrd and --append need --kernel" in r.stderr
    r = vm(*base, "--disk", "d.img", "--ctrl", "nope")
    assert r.returncode == 1 and "no controller 'nope' in nvshell (it has: ctrl0)" in r.stderr
    with NvmeTestHost(nv.socket()):
        r = vm(*base, "--disk", "d.img")
        assert r.returncode == 1 and "controller ctrl0 already has a vfio-user client" in r.stderr
    r = vm("--run-dir", str(tmp_path / "none"), "--disk", "d.img", "--dry-run")
    assert r.returncode == 1 and f"cannot ask nvshell at unix:{tmp_path}/none/qmp.sock" in r.stderr
    assert "is nvshell running?" in r.stderr
    r = vm("--connect", "bogus", "--disk", "d.img")
    assert r.returncode == 1 and "--connect: expected unix:PATH or tcp:HOST:PORT" in r.stderr
    r = vm("--run-dir", str(nv.run_dir), "--disk", "d.img", "--qemu", str(tmp_path / "no-such-qemu"))
    assert r.returncode == 1 and "no-such-qemu' not found (install QEMU >= 10.1 or pass --qemu)" in r.stderr


def test_qemu_version_check(tmp_path: Path) -> None:
    assert parse_qemu_version("QEMU emulator version 10.1.2 (Debian 1:10.1.2+ds-1)\nCopyright") == (10, 1, 2)
    assert parse_qemu_version("QEMU emulator version 11.0.50 (v11.0.0-1234-gdeadbeef)") == (11, 0, 50)
    assert parse_qemu_version("QEMU emulator version 10.1") == (10, 1, 0)
    with pytest.raises(VmError, match="cannot tell the QEMU version from: something else"):
        parse_qemu_version("something else")
    # A QEMU older than 10.1 is not on this machine: a binary that answers --version as 9.2.0 does.
    old = tmp_path / "qemu-old"
    old.write_text("#!/bin/sh\necho 'QEMU emulator version 9.2.0 (Debian 1:9.2.0+ds-1)'\n")
    old.chmod(0o755)
    with pytest.raises(VmError, match=rf"{old} is QEMU 9\.2\.0; vfio-user-pci needs QEMU >= 10\.1"):
        check_qemu(str(old))
    failing = tmp_path / "qemu-broken"
    failing.write_text("#!/bin/sh\necho 'cannot load libcapstone.so.5' >&2\nexit 127\n")
    failing.chmod(0o755)
    with pytest.raises(VmError, match=r"--version failed \(status 127\): cannot load libcapstone"):
        check_qemu(str(failing))
