"""``nvshell-vm``: boot the user's QEMU against a running nvshell.

Why a helper: a vfio-user guest needs a command line with three easy-to-miss parts -- guest
RAM in a shared memfd (the device maps it for DMA), one ``vfio-user-pci`` per controller
socket, and a QEMU new enough to have ``vfio-user-pci`` (10.1).  The helper asks the monitor
(QMP ``x-nvme-query-controllers``) which controllers exist and where their sockets are, checks
the QEMU binary's version, builds the command line and runs QEMU in its place (exec: the
terminal, signals and exit status are QEMU's).  ``--dry-run`` prints the command line instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

#: The first QEMU release with the vfio-user client device (``-device vfio-user-pci``).
MIN_QEMU = (10, 1)
DEFAULT_QEMU = "qemu-system-x86_64"

DESCRIPTION = """\
Boot QEMU against a running nvshell: asks nvshell's QMP monitor for its controllers' vfio-user
sockets, checks that QEMU is >= 10.1 (vfio-user-pci), and runs QEMU with guest RAM in a shared
memfd, one vfio-user-pci device per controller, a kernel + initrd or a disk image, and the serial
console on this terminal. Arguments after '--' go to QEMU unchanged.
"""

EPILOG = """\
examples:
  nvshell-vm --kernel bzImage --initrd initrd.img --append 'root=/dev/nvme0n1 rw'
  nvshell-vm --disk debian.qcow2 --mem 4G --cpus 4 -- -nic user,model=virtio-net-pci
  nvshell-vm --connect unix:/tmp/nv/qmp.sock --ctrl ctrl1 --kernel bzImage --dry-run
  nvshell-vm --qemu ~/qemu/build/qemu-system-x86_64 --disk vm.img -- -s -S   (gdb stub)

what the command line holds:
  -machine q35,memory-backend=mem -object memory-backend-memfd,id=mem,size=MEM,share=on
  -device '{"driver":"vfio-user-pci","id":"nvshell-CTRL","socket":{"type":"unix","path":SOCKET}}'  per controller
  -kernel/-initrd/-append (console=ttyS0 first) and/or -drive file=DISK,if=virtio
  -serial CONSOLE (default mon:stdio: Ctrl-A X quits, Ctrl-A C the QEMU monitor) -display none

exit status: QEMU's; 2 for a usage error, 1 when nvshell cannot be asked, a controller already has a
client, or QEMU is missing or too old (the message names the version found)
"""


class VmError(Exception):
    """A problem reported as one ``nvshell-vm: error: ...`` line (exit status 1)."""


@dataclass(frozen=True)
class Controller:
    id: str
    socket: str
    connected: bool


def build_parser() -> argparse.ArgumentParser:
    from nvshell.main import default_run_dir

    p = argparse.ArgumentParser(prog="nvshell-vm", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_argument_group("which nvshell")
    where.add_argument("--connect", metavar="ADDRESS",
                       help=f"nvshell's QMP monitor: unix:PATH or tcp:HOST:PORT "
                            f"(default unix:RUN_DIR/qmp.sock, RUN_DIR as nvshell's: {default_run_dir()})")
    where.add_argument("--run-dir", metavar="DIR", type=Path, help="nvshell's --run-dir (for the default QMP socket)")
    where.add_argument("--ctrl", metavar="ID", action="append",
                       help="attach only this controller (repeatable; default: every controller)")
    qemu = p.add_argument_group("QEMU")
    qemu.add_argument("--qemu", metavar="BINARY", default=DEFAULT_QEMU,
                      help=f"QEMU system emulator to run (default {DEFAULT_QEMU} from PATH); must be >= "
                           f"{MIN_QEMU[0]}.{MIN_QEMU[1]}")
    qemu.add_argument("--mem", metavar="SIZE", default="1G", help="guest RAM, QEMU size syntax (default 1G)")
    qemu.add_argument("--cpus", metavar="N", type=int, default=2, help="vCPUs (default 2)")
    qemu.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto",
                      help="accelerator (default auto: kvm when /dev/kvm opens and the CPU has vmx/svm, else tcg)")
    qemu.add_argument("--console", metavar="CHARDEV", default="mon:stdio",
                      help="where the serial console (ttyS0) goes, as QEMU's -serial (default mon:stdio); "
                           "e.g. file:console.log, pty, unix:PATH,server=on")
    boot = p.add_argument_group("what to boot (a kernel, a disk image, or both)")
    boot.add_argument("--kernel", metavar="FILE", help="kernel image (-kernel)")
    boot.add_argument("--initrd", metavar="FILE", help="initial ramdisk (-initrd; needs --kernel)")
    boot.add_argument("--append", metavar="ARGS", default="",
                      help="kernel command line after 'console=ttyS0' (needs --kernel)")
    boot.add_argument("--disk", metavar="IMAGE", action="append", default=[],
                      help="disk image as a virtio disk (repeatable); format from the name: .qcow2 -> qcow2, else raw")
    p.add_argument("--dry-run", action="store_true",
                   help="print the QEMU command line (one shell-quoted line) and exit; QEMU is neither checked nor run")
    p.add_argument("qemu_args", nargs="*", metavar="-- QEMU_ARG", help="extra QEMU arguments, passed through unchanged")
    return p


# -- asking nvshell ------------------------------------------------------------------------

def qmp_address(args: argparse.Namespace) -> str:
    from nvshell.main import default_run_dir

    if args.connect:
        return str(args.connect)
    return f"unix:{(args.run_dir or default_run_dir()) / 'qmp.sock'}"


async def _query(address: str) -> list[dict[str, Any]]:
    from nvshell.remote import connect

    client = await connect(address, name="nvshell-vm")
    try:
        return list(await client.execute("x-nvme-query-controllers"))
    finally:
        await client.disconnect()


def query_controllers(address: str) -> list[Controller]:
    """The controllers nvshell serves, from QMP ``x-nvme-query-controllers``."""
    import logging

    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)  # our own error line says it once
    try:
        infos = asyncio.run(_query(address))
    except ValueError as e:
        raise VmError(f"--connect: {e}") from None
    except Exception as e:  # noqa: BLE001 - connection refused, no such file, not QMP...
        raise VmError(f"cannot ask nvshell at {address}: {e or type(e).__name__} (is nvshell running?)") from None
    return [Controller(str(c["id"]), str(c["socket"]), bool(c.get("connected"))) for c in infos if c.get("socket")]


def select_controllers(all_ctrls: list[Controller], wanted: Sequence[str] | None) -> list[Controller]:
    if not all_ctrls:
        raise VmError("nvshell has no controller (add one: device_add x-nvme-ctrl,id=ctrl0,subsys=...)")
    by_id = {c.id: c for c in all_ctrls}
    if wanted:
        missing = [w for w in wanted if w not in by_id]
        if missing:
            raise VmError(f"no controller {', '.join(map(repr, missing))} in nvshell (it has: {', '.join(by_id)})")
        chosen = [by_id[w] for w in dict.fromkeys(wanted)]
    else:
        chosen = list(all_ctrls)
    busy = [c.id for c in chosen if c.connected]
    if busy:
        raise VmError(f"controller {', '.join(busy)} already has a vfio-user client (one guest per controller; "
                      f"stop that VM or pick others with --ctrl)")
    return chosen


# -- QEMU ------------------------------------------------------------------------------------

def parse_qemu_version(text: str) -> tuple[int, int, int]:
    """``QEMU emulator version 10.1.2 (Debian 1:10.1.2+ds-1)`` -> (10, 1, 2)."""
    m = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise VmError(f"cannot tell the QEMU version from: {text.strip().splitlines()[0] if text.strip() else '(no output)'}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_qemu(binary: str) -> tuple[int, int, int]:
    """Run ``BINARY --version``; raise ``VmError`` naming the version when it is older than 10.1."""
    path = shutil.which(binary)
    if path is None:
        raise VmError(f"QEMU binary '{binary}' not found (install QEMU >= {MIN_QEMU[0]}.{MIN_QEMU[1]} or pass --qemu)")
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VmError(f"cannot run {path} --version: {e}") from None
    if done.returncode != 0:
        raise VmError(f"{path} --version failed (status {done.returncode}): {done.stderr.strip()[:200]}")
    version = parse_qemu_version(done.stdout)
    if version[:2] < MIN_QEMU:
        found = ".".join(map(str, version))
        raise VmError(f"{path} is QEMU {found}; vfio-user-pci needs QEMU >= {MIN_QEMU[0]}.{MIN_QEMU[1]}")
    return version


def kvm_usable() -> bool:
    """/dev/kvm opens read-write and the CPU has hardware virtualisation (vmx/svm)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"\b(vmx|svm)\b", flags) is not None


def vfio_user_device(ctrl: Controller) -> str:
    """The ``-device`` value for one controller (JSON, so any socket path works unquoted)."""
    return json.dumps({"driver": "vfio-user-pci", "id": f"nvshell-{ctrl.id}",
                       "socket": {"type": "unix", "path": ctrl.socket}}, separators=(",", ":"))


def build_command(args: argparse.Namespace, ctrls: list[Controller], *, accel: str) -> list[str]:
    cpu = "host" if accel == "kvm" else "max"
    cmd = [args.qemu, "-machine", "q35,memory-backend=mem", "-accel", accel, "-cpu", cpu,
           "-smp", str(args.cpus), "-m", args.mem,
           "-object", f"memory-backend-memfd,id=mem,size={args.mem},share=on",
           "-display", "none", "-serial", args.console]
    for ctrl in ctrls:
        cmd += ["-device", vfio_user_device(ctrl)]
    if args.kernel:
        cmd += ["-kernel", args.kernel]
        if args.initrd:
            cmd += ["-initrd", args.initrd]
        cmd += ["-append", " ".join(filter(None, ["console=ttyS0", args.append.strip()]))]
    for disk in args.disk:
        fmt = "qcow2" if disk.endswith(".qcow2") else "raw"
        cmd += ["-drive", f"file={disk.replace(',', ',,')},if=virtio,format={fmt}"]
    return cmd + list(args.qemu_args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.kernel and not args.disk:
        parser.error("nothing to boot: give --kernel (with --initrd) or --disk")
    if not args.kernel and (args.initrd or args.append):
        parser.error("--initrd and --append need --kernel")
    if args.cpus < 1:
        parser.error("--cpus must be at least 1")
    try:
        ctrls = select_controllers(query_controllers(qmp_address(args)), args.ctrl)
        accel = args.accel if args.accel != "auto" else ("kvm" if kvm_usable() else "tcg")
        cmd = build_command(args, ctrls, accel=accel)
        if args.dry_run:
            print(shlex.join(cmd))
            return 0
        check_qemu(args.qemu)
    except VmError as e:
        print(f"nvshell-vm: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"nvshell-vm: error: cannot run {cmd[0]}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0  # not reached


def console_main() -> None:
    """The ``nvshell-vm`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
