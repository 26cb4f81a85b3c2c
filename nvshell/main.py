"""The ``nvshell`` program: command line, process wiring, and how it stops.

One asyncio loop runs the control plane (QMP servers, the shell); every
controller serves its vfio-user socket on its own IOThread (see
``device.iothread``). This module only wires those pieces together: it parses
the QEMU-style command line, builds the machine (or the default topology),
starts the monitors, then hands the terminal to the shell, runs a script from
stdin, or serves headless until SIGTERM or QMP ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import stat
import sys
import typing
from pathlib import Path

from nvshell.device.errors import NvshellError
from nvshell.device.machine import Machine
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.qmp.address import parse_qmp_address
from nvshell.monitor.qmp.server import QMPServer
from nvshell import cmdline
from nvshell.shell import route_sigint, unroute_sigint

log = logging.getLogger("nvshell")

DESCRIPTION = """\
nvshell: an NVMe controller emulator for virtual machines, served over vfio-user.
Boot QEMU (>= 10.1) with
  -object memory-backend-memfd,id=mem,size=1G,share=on -machine q35,memory-backend=mem
  -device '{"driver":"vfio-user-pci","socket":{"type":"unix","path":"RUN_DIR/ctrl0.sock"}}'
and inspect or change the device from the shell, or remotely over QMP.

Without -object/-device/-readconfig nvshell creates the default topology:
subsystem subsys0, controller ctrl0 (socket RUN_DIR/ctrl0.sock) and a 1 GiB
in-memory NVM namespace ns1 attached to all controllers.
"""

EPILOG = """\
examples:
  nvshell                                   default topology, interactive shell
  nvshell --no-shell                        serve headless until SIGTERM/SIGINT or QMP quit
  nvshell -object x-nvme-subsystem,id=subsys0 \\
          -device x-nvme-ctrl,id=ctrl0,subsys=subsys0 \\
          -object x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1G,attached-to=all
  nvshell -global x-nvme-ctrl.doorbells=mmap   every controller (default one included) shares its doorbells
  nvshell -object help | -device help | -object x-nvme-ns-nvm,help
  echo 'info qtree' | nvshell               run shell commands from stdin, then exit
  nvshell --connect unix:/run/user/0/nvshell/qmp.sock   shell on a running nvshell
"""


def default_run_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "nvshell"
    return Path(f"/tmp/nvshell-{os.getuid()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvshell", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-object", action="append", default=[], metavar="TYPE,id=ID[,PROP=VALUE...]",
                        help="create a user-creatable object (x-nvme-subsystem, x-nvme-ns-nvm, "
                             "x-nvme-ns-zoned); 'help' lists types, 'TYPE,help' its properties")
    parser.add_argument("-device", action="append", default=[], metavar="DRIVER,id=ID[,PROP=VALUE...]",
                        help="create a device (x-nvme-ctrl: one NVMe controller on its own vfio-user "
                             "socket); 'help' lists drivers, 'DRIVER,help' its properties")
    parser.add_argument("-global", dest="globals", action="append", default=[], metavar="DRIVER.PROP=VALUE",
                        help="default of a device property for every device of type DRIVER created afterwards "
                             "(command line and device_add); a property given on the device wins (repeatable; "
                             "also driver=DRIVER,property=PROP,value=VALUE)")
    parser.add_argument("-readconfig", action="append", default=[], metavar="FILE",
                        help="read objects and devices from a configuration file (see README)")
    parser.add_argument("-qmp", action="append", default=[], metavar="unix:PATH|tcp:HOST:PORT[,server=on,wait=off]",
                        help="also serve QMP on this address (repeatable); RUN_DIR/qmp.sock is always served")
    parser.add_argument("-trace", action="append", default=[], metavar="PATTERN|file=PATH",
                        help="enable trace events matching PATTERN, or record them to a file")
    parser.add_argument("-fault", action="append", default=[], metavar="id=ID[,MATCH...],action=ACTION[,...]",
                        help="add a fault injection rule, as the shell's fault_add (repeatable; see README)")
    parser.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                        help="directory for sockets (default $XDG_RUNTIME_DIR/nvshell or /tmp/nvshell-$UID, "
                             "created owner-only; an existing one must be yours, not a symlink, mode 0700)")
    parser.add_argument("--no-shell", action="store_true",
                        help="no interactive shell: serve until SIGTERM, SIGINT or QMP 'quit' (commands on a "
                             "non-terminal stdin still run first)")
    parser.add_argument("--keep-going", action="store_true",
                        help="in script mode, go on after a failing command (exit status stays non-zero)")
    parser.add_argument("--history-file", type=Path, default=None, metavar="FILE",
                        help="shell history file (default $XDG_STATE_HOME/nvshell/history)")
    parser.add_argument("--connect", metavar="unix:PATH|tcp:HOST:PORT",
                        help="run the shell against a running nvshell over QMP instead of starting one")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    return parser


#: Options that describe the nvshell to start: with --connect (a shell on one already running)
#: they would be ignored, so they are refused instead.
_STARTUP_ONLY = (("-object", "object"), ("-device", "device"), ("-global", "globals"),
                 ("-readconfig", "readconfig"), ("-qmp", "qmp"), ("-trace", "trace"), ("-fault", "fault"))


def _refuse_with_connect(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    given = [option for option, dest in _STARTUP_ONLY if getattr(args, dest)]
    if given:
        parser.error(f"{', '.join(given)}: only when starting nvshell, not with --connect "
                     "(change a running one from its shell: device_add, object_add, trace-event, fault_add)")


def prepare_run_dir(path: Path) -> Path:
    """Create the run directory owner-only, or check an existing one; never fix one up.

    Why refuse rather than chmod: ``--run-dir /tmp`` would lock every other user out
    of /tmp, and a symlink planted by another user at the default
    ``/tmp/nvshell-$UID`` would have us chmod (and put our sockets in) whatever it
    points to. An existing directory must be a real directory (not a symlink), ours,
    and closed to group and others; otherwise nvshell stops with this error.
    """
    path = path.expanduser()
    if path.parent != path:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise NvshellError(f"run directory {path} is a symbolic link; give a real directory (--run-dir)")
    if not stat.S_ISDIR(st.st_mode):
        raise NvshellError(f"run directory {path} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise NvshellError(f"run directory {path} belongs to another user (uid {st.st_uid})")
    if st.st_mode & 0o077:
        raise NvshellError(f"run directory {path} is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                           "use a private directory (mode 0700) or a new path")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.connect:
        _refuse_with_connect(parser, args)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="nvshell: %(levelname)s: %(name)s: %(message)s")
    try:
        if args.connect:
            from nvshell.remote import run_remote
            return asyncio.run(run_remote(args.connect, history_file=args.history_file,
                                          keep_going=args.keep_going))
        help_text = cmdline.help_request(args.object, args.device)
        if help_text is not None:
            return _print_to_reader(help_text)
        specs = cmdline.parse(objects=args.object, devices=args.device, readconfig=args.readconfig,
                              globals=args.globals)
        qmp_addresses = [parse_qmp_address(a) for a in args.qmp]
        run_dir = prepare_run_dir(args.run_dir or default_run_dir())
        return _run_to_end(serve(args, run_dir, specs, qmp_addresses))
    except NvshellError as exc:
        print(f"nvshell: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def serve(args: argparse.Namespace, run_dir: Path, specs: "cmdline.Specs", qmp_addresses: list) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    machine = Machine(run_dir)
    machine.set_control_plane(loop.call_soon_threadsafe)   # guest-made tree changes run on this loop
    servers: list[QMPServer] = []
    ctx: MonitorContext | None = None
    try:
        if specs.empty:
            cmdline.apply_globals(machine, specs.globals)
            cmdline.default_topology(machine)
        else:
            cmdline.apply(machine, specs)
        ctx = MonitorContext(machine=machine, request_shutdown=stop.set)
        _apply_trace_options(ctx, args.trace)
        from nvshell.monitor.commands_iostat import sampler_of
        sampler_of(ctx).start()   # info iostat's last minute covers the time before it is asked
        if args.fault:
            from nvshell.monitor.commands_faults import apply_fault_options
            apply_fault_options(machine, args.fault)
        # Handlers before the QMP socket appears: whoever sees the socket may signal us at once.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, _stop_or_exit, stop, sig)
        # SIGINT: cancel the shell's running command, else stop cleanly like SIGTERM (status 0).
        route_sigint(loop, stop.set)
        for address in [parse_qmp_address(f"unix:{run_dir / 'qmp.sock'},server=on,wait=off"), *qmp_addresses]:
            server = QMPServer(ctx)
            await server.listen(address)
            servers.append(server)
            if address.kind == "tcp" and not _loopback(address.host):
                print(f"nvshell: warning: QMP on {server.describe()} has no authentication: anyone who can "
                      "reach it controls nvshell (opens and truncates files, creates sockets, quits); "
                      "see README, 'What a QMP client can do'", file=sys.stderr)
        _announce(machine, servers, quiet=not sys.stdin.isatty() and not args.no_shell)
        return await _run_frontend(args, ctx, stop)
    finally:
        unroute_sigint(loop)
        if ctx is not None:
            from nvshell.monitor.commands_iostat import sampler_of
            sampler_of(ctx).stop()
        for server in servers:
            await server.close()
        machine.shutdown()


def _print_to_reader(text: str) -> int:
    """Print ``text``; a reader that stops early (``nvshell -device help | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Python would report the failed flush of stdout at exit: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _stop_or_exit(stop: asyncio.Event, sig: int) -> None:
    """The first SIGTERM/SIGHUP stops nvshell cleanly; a second one, while it is still stopping,
    ends the process at once (as the user asked twice)."""
    if not stop.is_set():
        stop.set()
    else:
        os._exit(128 + sig)


#: How long the tasks still alive when ``serve`` returns (QMP sessions finishing a reply, the
#: statistics sampler) may take to honour their cancellation before nvshell exits anyway.
EXIT_GRACE_S = 3.0


def _run_to_end(coro: "asyncio.Future[int] | typing.Coroutine[object, object, int]") -> int:
    """``asyncio.run`` with a bounded end.

    ``asyncio.run`` cancels the tasks left at exit and then waits for them without limit: one task
    that never finishes would keep a stopping nvshell alive forever.  Here they get
    ``EXIT_GRACE_S``; a task still running after that is named on stderr and abandoned.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=EXIT_GRACE_S))
                for task in stuck:
                    print(f"nvshell: warning: task {task.get_name()} did not stop within {EXIT_GRACE_S:g} s; "
                          "exiting anyway", file=sys.stderr)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


async def _run_frontend(args: argparse.Namespace, ctx: MonitorContext, stop: asyncio.Event) -> int:
    """Shell, script or headless, each ending on its own condition or on ``stop``."""
    from nvshell.shell import run_script, run_shell

    if sys.stdin.isatty() and not args.no_shell:
        work = asyncio.ensure_future(run_shell(ctx, history_file=args.history_file))
    else:
        work = asyncio.ensure_future(_script_then_serve(args, ctx, stop, run_script))
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if work in done:
        stopper.cancel()
        return work.result()
    work.cancel()
    try:
        await work
    except (asyncio.CancelledError, Exception):
        pass
    return 0


async def _script_then_serve(args: argparse.Namespace, ctx: MonitorContext, stop: asyncio.Event, run_script) -> int:
    rc = 0
    if not sys.stdin.isatty():
        rc = await run_script(ctx, sys.stdin, keep_going=args.keep_going)
    if args.no_shell:
        await stop.wait()
    return rc


def _apply_trace_options(ctx: MonitorContext, options: list[str]) -> None:
    # Called even without -trace: it installs the tracing sinks (latency statistics).
    from nvshell.monitor.trace_options import apply_trace_options
    apply_trace_options(ctx, options)


def _loopback(host: str | None) -> bool:
    """``host`` only accepts connections from this machine (no host: every interface)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _announce(machine: Machine, servers: list[QMPServer], *, quiet: bool) -> None:
    """Tell the user where to point QEMU and QMP clients (stderr in script mode)."""
    out = sys.stderr if quiet else sys.stdout
    for line in machine.describe_sockets():
        print(line, file=out)
    for server in servers:
        print(f"QMP monitor: {server.describe()}", file=out)
    out.flush()
