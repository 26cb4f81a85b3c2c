"""The real ``nvshell`` program in a pseudo-terminal (pexpect): the shell as a user sees it.

Why a pty and the real program: the in-process shell tests (``test_shell.py``) drive
prompt_toolkit with pipe input; they cannot show how the prompt, completion, history,
live events and signals behave on a terminal, nor that the program removes its sockets.

Robustness on a loaded machine: every wait is a pexpect ``expect`` with a generous timeout,
there are no timing assertions, and the prompt is matched with a regex.  prompt_toolkit in
full-render mode (``TERM=vt100``; ``TERM=dumb`` prints the prompt before entering raw mode,
which races with typed keys) starts each prompt with ``ESC[?2004h`` (bracketed paste on) and
ends an accepted line with ``ESC[?2004l``; so a fresh prompt is ``ESC[?2004h ... (nvshell)``
and a command's output is what follows the last ``ESC[?2004l`` before the next prompt.
With ``PROMPT_TOOLKIT_NO_CPR=1`` the bottom toolbar and the completion menu are not drawn
(their height is unknown), so completion is checked by what Tab inserts into the line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

pexpect = pytest.importorskip("pexpect")

from tests.harness import REPO, NvshellProcess  # noqa: E402

TIMEOUT = 60  # seconds for any single expectation; generous for a loaded 2-core machine
PROMPT_RE = r"\x1b\[\?2004h[^\r\n]*?\(nvshell\)"
# An accepted line: drawn in full once more, then CR CR LF.
DONE_RE = r"\(nvshell\) ([^\r\n]*?)(?:\x1b\[[0-9;?]*[A-Za-z])*\r\r\n"
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>]")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def clean(text: str) -> str:
    """Terminal output as plain lines: escape sequences and carriage returns removed."""
    return ANSI_RE.sub("", text).replace("\r", "")


class Screen:
    """Just enough of a VT100 to read what a user sees: text, CR/LF/BS, cursor moves
    (``CSI n A/B/C/D/G/H``) and erasing (``CSI J/K``); styles and modes are ignored.

    Why: prompt_toolkit redraws differentially and erases the prompt before printing
    asynchronous output above it, so the raw byte stream says little about the screen;
    this shows whether an event line really sits on its own line above an intact prompt."""

    CSI_RE = re.compile(r"\x1b\[([0-?]*)[ -/]*([@-~])|\x1b[()][0-9A-Za-z]|\x1b[=>]|([\r\n\b])|([^\x1b\r\n\b]+)")

    def __init__(self, width: int = 250) -> None:
        self.width = width
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0

    def feed(self, data: str) -> "Screen":
        for m in self.CSI_RE.finditer(data):
            params, final, ctl, text = m.groups()
            if text is not None:
                for ch in text:
                    if ch < " ":
                        continue
                    line = self._line()
                    if self.col >= len(line):
                        line.extend(" " * (self.col - len(line) + 1))
                    line[self.col] = ch
                    self.col = min(self.col + 1, self.width - 1)
            elif ctl == "\r":
                self.col = 0
            elif ctl == "\n":
                self.row += 1
                self._line()
            elif ctl == "\b":
                self.col = max(0, self.col - 1)
            elif final:
                nums = [int(x) for x in (params or "").lstrip("?").split(";") if x.isdigit()]
                n = nums[0] if nums else 1
                if final == "A":
                    self.row = max(0, self.row - n)
                elif final == "B":
                    self.row += n
                elif final == "C":
                    self.col = min(self.col + n, self.width - 1)
                elif final == "D":
                    self.col = max(0, self.col - n)
                elif final == "G":
                    self.col = n - 1
                elif final == "J" and not params:
                    del self._line()[self.col:]
                    del self.lines[self.row + 1:]
                elif final == "K" and not params:
                    del self._line()[self.col:]
        return self

    def _line(self) -> list[str]:
        while len(self.lines) <= self.row:
            self.lines.append([])
        return self.lines[self.row]

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A short temporary directory: socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nvp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def program_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("NVSHELL_HISTORY", "XDG_RUNTIME_DIR", "NO_COLOR"):
        env.pop(key, None)
    env.update(PROMPT_TOOLKIT_NO_CPR="1", NVSHELL_MENU_ROWS="0", TERM="vt100", PYTHONPATH=str(REPO),
               XDG_STATE_HOME=str(tmp / "state"), PYTHONUNBUFFERED="1")
    return env


class Shell:
    """``python -m nvshell ARGS`` in a pty, with helpers to type lines and read results."""

    def __init__(self, tmp: Path, *args: str, run_dir: Path | None = None, history: Path | None = None,
                 cpr: bool = False, dimensions: tuple[int, int] = (50, 250)) -> None:
        """``cpr``: the terminal answers cursor position requests (the toolbar is drawn)."""
        self.tmp = tmp
        self.run_dir = run_dir or tmp / "run"
        self.history = history or tmp / "history"
        argv = ["-m", "nvshell", "--history-file", str(self.history)]
        if "--connect" not in args:
            argv += ["--run-dir", str(self.run_dir)]
        env = program_env(tmp)
        if cpr:
            del env["PROMPT_TOOLKIT_NO_CPR"]
        self.child = pexpect.spawn(sys.executable, argv + list(args), cwd=str(REPO), env=env,
                                   encoding="utf-8", codec_errors="replace", timeout=TIMEOUT,
                                   dimensions=dimensions)
        self.log: list[str] = []
        self.child.logfile_read = _Collect(self.log)

    def prompt(self) -> str:
        """Wait for a fresh prompt; returns the cleaned text printed since the last one."""
        self.child.expect(PROMPT_RE)
        return clean(self.child.before)

    def run(self, text: str, *, events: bool = False) -> str:
        """Type ``text`` + Enter; returns the output printed before the next prompt.

        The accepted line is drawn once more in full, ending in CR CR LF (``DONE_RE``); waiting
        for that first skips prompt redraws left in the buffer by earlier asynchronous output.
        ``self.line`` is the whole accepted line (what Tab completion and history put there).
        Event lines are dropped from the result unless ``events``."""
        self.child.send(text + "\r")
        self.child.expect(DONE_RE)
        self.line = clean(self.child.match.group(1))
        self.child.expect(PROMPT_RE)
        out = clean(self.child.before)
        if not events:
            out = "".join(line for line in out.splitlines(keepends=True) if not line.startswith("[event] "))
        return out

    def type(self, text: str) -> None:
        self.child.send(text)

    def tab(self, text: str, rest: str) -> None:
        """Type ``text`` and Tab; the completion must insert ``rest``."""
        self.child.send(text + "\t")
        self.child.expect(rest)

    def wait_exit(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        if self.child.exitstatus is None:
            return -int(self.child.signalstatus)
        return int(self.child.exitstatus)

    def close(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)

    def __enter__(self) -> "Shell":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def remote_shell(tmp: Path) -> Iterator[tuple[NvshellProcess, Shell]]:
    """A headless nvshell in ``tmp/run`` and ``nvshell --connect`` to it in a pty."""
    run_dir = tmp / "run"
    with NvshellProcess(run_dir) as nv, Shell(tmp, "--connect", f"unix:{run_dir}/qmp.sock", run_dir=run_dir) as remote:
        yield nv, remote


class _Collect:
    """A file-like ``logfile_read`` that keeps everything the program printed."""

    def __init__(self, sink: list[str]) -> None:
        self.sink = sink

    def write(self, data: str) -> None:
        self.sink.append(data)

    def flush(self) -> None:
        pass


@pytest.fixture
def shell(tmp: Path) -> Iterator[Shell]:
    with Shell(tmp) as sh:
        yield sh


def sockets(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.is_socket()) if run_dir.exists() else []


# ---------------------------------------------------------------------------------------
# Start, help, errors


def test_prompt_announces_sockets(shell: Shell) -> None:
    banner = shell.prompt()
    assert f"ctrl0: vfio-user socket {shell.run_dir}/ctrl0.sock" in banner
    assert f"QMP monitor: unix:{shell.run_dir}/qmp.sock" in banner
    assert sockets(shell.run_dir) == ["ctrl0.sock", "qmp.sock"]
    shell.type("quit\r")
    assert shell.wait_exit() == 0
    assert sockets(shell.run_dir) == []


def test_help_has_text_for_every_command(shell: Shell) -> None:
    shell.prompt()
    lines = [line for line in shell.run("help").splitlines() if line]
    names = [line.split()[0].split("|")[0] for line in lines]
    for expected in ("help", "info", "object_add", "object_del", "device_add", "device_del",
                     "qom-list", "qom-get", "qom-set", "quit"):
        assert expected in names, lines
    for line in lines:
        head, sep, text = line.partition(" -- ")
        assert sep and text.strip(), f"no help text: {line!r}"
    info = [line for line in shell.run("info").splitlines() if line]
    assert any(line.startswith("info qtree") for line in info), info
    for line in info:
        assert line.startswith("info ") and len(line.split()) >= 2, line
        assert line.partition(" -- ")[2].strip(), f"no help text: {line!r}"
    for name in names:  # `help NAME` answers for every listed command
        assert shell.run(f"help {name}").startswith(name), name


def test_errors_are_one_line_and_the_shell_goes_on(shell: Shell) -> None:
    shell.prompt()
    for line, expected in [("bogus", "Error: unknown command: 'bogus'"),
                           ("info nosuch", "Error: unknown command: 'info nosuch'"),
                           ("object_add nosuchtype,id=x", None),
                           ("device_del nosuchdev", "Error: Device 'nosuchdev' not found"),
                           ('qom-get "/unterminated', None),
                           ("qom-get", None)]:
        out = shell.run(line)
        lines = [x for x in out.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (line, out)
        if expected:
            assert lines[0] == expected
    assert "VM status: running" in shell.run("info status")
    shell.type("quit\r")
    assert shell.wait_exit() == 0


# ---------------------------------------------------------------------------------------
# info qtree: golden transcript

GOLDEN_QTREE_SESSION = """\
(nvshell) object_add x-nvme-subsystem,id=sub1,uuid=11111111-2222-3333-4444-555555555555
(nvshell) object_add x-nvme-ns-nvm,id=nsa,subsys=sub1,size=64M,uuid=<uuid>
(nvshell) object_add x-nvme-ns-nvm,id=nsb,subsys=sub1,size=16M,lba-size=4096,uuid=<uuid>,attached-to=ctrl1
(nvshell) device_add x-nvme-ctrl,id=ctrl1,subsys=sub1,serial=SN1
(nvshell) info qtree -b
bus: main-system-bus
  type System
  dev: x-nvme-subsystem, id "subsys0"
    bus: subsys0
      type x-nvme-subsys-bus
      dev: x-nvme-ns-nvm, id "ns1"
      dev: x-nvme-ctrl, id "ctrl0"
        bus: ctrl0
          type nvme-bus
          attached: x-nvme-ns-nvm, id "ns1", nsid 1
  dev: x-nvme-subsystem, id "sub1"
    bus: sub1
      type x-nvme-subsys-bus
      dev: x-nvme-ns-nvm, id "nsa"
      dev: x-nvme-ns-nvm, id "nsb"
      dev: x-nvme-ctrl, id "ctrl1"
        bus: ctrl1
          type nvme-bus
          attached: x-nvme-ns-nvm, id "nsb", nsid 2
"""


def _golden_ns(id: str, subsys: str, nsid: int, uuid: str, eui64: str, nguid: str, attached_to: str,
               attached: str, size: int, lba_size: int) -> str:
    """One namespace of ``GOLDEN_QTREE_FULL``: every property, defaults resolved."""
    return f"""\
      dev: x-nvme-ns-nvm, id "{id}"
        subsys = "/objects/{subsys}"
        nsid = {nsid}
        uuid = "{uuid}"
        eui64 = "{eui64}"
        nguid = "{nguid}"
        attached-to = {attached_to}
        attached = {attached}
        size = {size}
        file = ""
        backend = "memory"
        direct = false
        lba-size = {lba_size}
        ms = 0
        mset = 0
        pi = 0
        pil = 0
        pif = 0
        mssrl = 131072
        mcl = 131072
        msrc = 128
        nlbas = {size // lba_size}
"""


def _golden_ctrl(id: str, subsys: str, serial: str, attached: str) -> str:
    """One controller of ``GOLDEN_QTREE_FULL`` (``attached``: its nvme-bus line)."""
    return f"""\
      dev: x-nvme-ctrl, id "{id}"
        subsys = "/objects/{subsys}"
        socket = "<run-dir>/{id}.sock"
        cntlid = 1
        serial = "{serial}"
        model = "nvshell NVMe Ctrl"
        firmware = "1.0"
        max-ioqpairs = 64
        max-intr-vectors = 65
        mqes = 2047
        max-aer-retention = 100
        aerl = 3
        mdts = 7
        doorbells = "trap"
        poll-max-ns = 300000
        ocp = false
        msix = true
        connected = false
        bus: {id}
          type nvme-bus
          attached: {attached}
"""


def _golden_subsys(id: str, uuid: str, controllers: str, namespaces: str, members: str) -> str:
    return f"""\
  dev: x-nvme-subsystem, id "{id}"
    subnqn = "nqn.2014-08.org.nvmexpress:uuid:{uuid}"
    uuid = "{uuid}"
    ns-mgmt-capacity = 1073741824
    controllers = {controllers}
    namespaces = {namespaces}
    bus: {id}
      type x-nvme-subsys-bus
""" + members


#: ``info qtree`` after that session: every property's effective value (``backend`` and the
#: derived ``serial``, ``eui64`` and ``nguid`` included), as the guest sees them.
GOLDEN_QTREE_FULL = "bus: main-system-bus\n  type System\n" + _golden_subsys(
    "subsys0", "<subsys0-uuid>", '["ctrl0"]', '["ns1"]',
    _golden_ns("ns1", "subsys0", 1, "<ns1-uuid>", "<ns1-eui64>", "<ns1-nguid>", '["all"]', '["ctrl0"]', 1 << 30, 512)
    + _golden_ctrl("ctrl0", "subsys0", "ctrl0", 'x-nvme-ns-nvm, id "ns1", nsid 1')) + _golden_subsys(
    "sub1", "11111111-2222-3333-4444-555555555555", '["ctrl1"]', '["nsa", "nsb"]',
    _golden_ns("nsa", "sub1", 1, "aaaaaaaa-0000-4000-8000-000000000001", "92f2c8ef74a87cab",
               "3935f5927b2f937de556b71ef3cf955d", "[]", "[]", 64 << 20, 512)
    + _golden_ns("nsb", "sub1", 2, "bbbbbbbb-0000-4000-8000-000000000002", "0ebb5c743ec35f83",
                 "951857d54d91be7d2c7163663fe6a2fe", '["ctrl1"]', '["ctrl1"]', 16 << 20, 4096)
    + _golden_ctrl("ctrl1", "sub1", "SN1", 'x-nvme-ns-nvm, id "nsb", nsid 2'))


def test_info_qtree_golden_transcript(shell: Shell) -> None:
    shell.prompt()
    session = ""
    ns_uuids = ["aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"]
    for line in ["object_add x-nvme-subsystem,id=sub1,uuid=11111111-2222-3333-4444-555555555555",
                 f"object_add x-nvme-ns-nvm,id=nsa,subsys=sub1,size=64M,uuid={ns_uuids[0]}",
                 f"object_add x-nvme-ns-nvm,id=nsb,subsys=sub1,size=16M,lba-size=4096,uuid={ns_uuids[1]},"
                 "attached-to=ctrl1",
                 "device_add x-nvme-ctrl,id=ctrl1,subsys=sub1,serial=SN1",
                 "info qtree -b"]:
        out = shell.run(line)
        session += f"(nvshell) {line}\n{out}"
    normalized = session.replace(ns_uuids[0], "<uuid>").replace(ns_uuids[1], "<uuid>")
    assert normalized == GOLDEN_QTREE_SESSION
    assert (shell.run_dir / "ctrl1.sock").is_socket()

    full = shell.run("info qtree")
    # Values nvshell chose (random uuids, the ids derived from them) are read back over QOM and
    # replaced by placeholders; everything else, defaults resolved, is compared byte for byte.
    chosen = {}
    for path, prop, mark in [("/objects/subsys0", "uuid", "<subsys0-uuid>"), ("/objects/ns1", "uuid", "<ns1-uuid>"),
                             ("/objects/ns1", "eui64", "<ns1-eui64>"), ("/objects/ns1", "nguid", "<ns1-nguid>")]:
        chosen[json.loads(shell.run(f"qom-get {path} {prop}"))] = mark
    normalized = full.replace(str(shell.run_dir), "<run-dir>")
    for value, mark in chosen.items():
        normalized = normalized.replace(value, mark)
    assert normalized == GOLDEN_QTREE_FULL
    sub1 = full[full.index('dev: x-nvme-subsystem, id "sub1"'):]
    assert 'subnqn = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"' in sub1
    assert f'socket = "{shell.run_dir}/ctrl1.sock"' in sub1
    assert 'serial = "SN1"' in sub1 and "connected = false" in sub1
    assert f'uuid = "{ns_uuids[1]}"' in sub1 and "lba-size = 4096" in sub1 and "size = 16777216" in sub1
    shell.type("quit\r")
    assert shell.wait_exit() == 0
    assert sockets(shell.run_dir) == []  # the hot-added controller's socket too


# ---------------------------------------------------------------------------------------
# Completion, history, Ctrl-C, exit


def test_tab_completes_command_subcommand_and_property(shell: Shell) -> None:
    shell.prompt()
    # A command name: "device_a" is unique; Tab inserts the rest.
    shell.tab("device_a", "dd")
    # A type name, then a property name ("mq" -> "mqes="), then a value typed by hand.
    shell.tab(" x-nvme-c", "trl")
    shell.tab(",id=ctrl9,subsys=subsys0,mq", "es=")
    shell.type("1023,doorbells=t\t")  # an enum value
    shell.child.expect("rap")
    out = shell.run("")
    assert out.strip() == "", out
    assert shell.line == "device_add x-nvme-ctrl,id=ctrl9,subsys=subsys0,mqes=1023,doorbells=trap"
    assert shell.run("qom-get /machine/peripheral/ctrl9 mqes").strip() == "1023"
    assert "trap" in shell.run("qom-get /machine/peripheral/ctrl9 doorbells")
    # An info sub-command and a device id.
    shell.tab("info qt", "ree")
    assert "dev: x-nvme-ctrl, id \"ctrl9\"" in shell.run("")
    shell.type("device_del ctrl\t")  # ctrl0 and ctrl9: Tab adds nothing, we finish by hand
    out = shell.run("9", events=True)
    assert shell.line == "device_del ctrl9"
    assert out.strip() in ("", "[event] ctrl9: device deleted"), out
    if not out.strip():  # the event comes when removal completes: before or after the prompt
        shell.child.expect(r"\[event\] ctrl9: device deleted")
    listing = shell.run("qom-list /machine/peripheral")
    assert "ctrl0 (" in listing and "ctrl9" not in listing, listing
    shell.type("quit\r")
    assert shell.wait_exit() == 0


def test_history_across_two_runs(tmp: Path) -> None:
    with Shell(tmp) as first:
        first.prompt()
        assert first.run("info status").strip() == "VM status: running"
        assert first.run("qom-get /objects/ns1 nsid").strip() == "1"
        first.type("quit\r")
        assert first.wait_exit() == 0
    history = (tmp / "history").read_text()
    assert "+info status" in history and "+qom-get /objects/ns1 nsid" in history

    with Shell(tmp) as second:
        second.prompt()
        second.type("\x1b[A\x1b[A\x1b[A")  # Up three times: quit, qom-get, info status
        assert second.run("").strip() == "VM status: running"
        assert second.line == "info status"
        # Auto-suggest from history: "qom-g" shows the rest; Right arrow accepts it.
        second.type("qom-g")
        second.child.expect("et /objects/ns1 nsid")
        second.type("\x1b[C")
        assert second.run("").strip() == "1"
        assert second.line == "qom-get /objects/ns1 nsid"
        second.type("\x04")
        assert second.wait_exit() == 0


def test_ctrl_c_cancels_the_line(shell: Shell) -> None:
    shell.prompt()
    shell.type("device_del ctrl0")  # would remove the controller if it ran
    shell.child.expect("ctrl0")
    shell.type("\x03")
    shell.prompt()
    assert "ctrl0" in shell.run("qom-list /machine/peripheral")
    assert (shell.run_dir / "ctrl0.sock").is_socket()
    shell.type("\x04")  # Ctrl-D on an empty line exits
    assert shell.wait_exit() == 0
    assert sockets(shell.run_dir) == []


def test_ctrl_d_on_a_non_empty_line_does_not_exit(shell: Shell) -> None:
    shell.prompt()
    shell.type("info stat\x04")  # Ctrl-D deletes forward here; nothing to delete
    assert shell.run("us").strip() == "VM status: running"
    shell.type("\x04")
    assert shell.wait_exit() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signals_stop_the_shell_cleanly(shell: Shell, sig: signal.Signals) -> None:
    shell.prompt()
    shell.type("info qt")  # a half-typed line does not keep the program alive
    shell.child.expect("qt")
    shell.child.kill(sig)
    assert shell.wait_exit() == 0
    assert sockets(shell.run_dir) == []


# ---------------------------------------------------------------------------------------
# Live output above the prompt


def test_guest_connect_event_appears_above_a_half_typed_line(shell: Shell) -> None:
    from nvshell.device.vfio_user.client import VfioUserClient

    shell.prompt()
    shell.type("info qt")
    shell.child.expect("qt")
    client = VfioUserClient(timeout=TIMEOUT).connect(shell.run_dir / "ctrl0.sock")
    try:
        client.negotiate()
        shell.child.expect(r"\[event\] ctrl0: guest connected[^\r\n]*\r?\n")
        # The prompt and the half-typed line are drawn again below the event line ...
        shell.child.expect(r"\(nvshell\)[^\r\n]*info qt")
        screen = Screen().feed("".join(shell.log)).text()
        at = next(i for i, line in enumerate(screen) if re.fullmatch(r"\[event\] ctrl0: guest connected( \(pid \d+\))?", line))  # a line of its own
        assert screen[at + 1:] == ["(nvshell) info qt"], screen[at - 2:]
        # ... and the line is still being edited: finish it by hand, and with Tab.
        out = shell.run("ree -b")
        assert 'dev: x-nvme-ctrl, id "ctrl0"' in out
        shell.tab("qom-get /machine/peripheral/ctrl0 conn", "ected")
        assert shell.run("").strip() == "true"
    finally:
        client.close()
    shell.child.expect(r"\[event\] ctrl0: guest disconnected")
    assert shell.run("qom-get /machine/peripheral/ctrl0 connected").strip() == "false"
    screen = Screen().feed("".join(shell.log)).text()
    assert any(line.startswith("[event] ctrl0: guest disconnected") for line in screen)
    assert sum(line.startswith("[event] ctrl0: guest connected") for line in screen) == 1
    shell.type("quit\r")
    assert shell.wait_exit() == 0


def test_bottom_toolbar_shows_live_state(tmp: Path) -> None:
    """With cursor position reports answered (as a real terminal does), the toolbar is drawn
    and follows the device: controllers waiting/connected, namespaces, IOPS."""
    import time

    from nvshell.device.vfio_user.client import VfioUserClient

    with Shell(tmp, cpr=True, dimensions=(30, 120)) as sh:
        child = sh.child

        def screen_shows(text: str) -> bool:
            """Read output (answering every CPR request) until ``text`` is on the screen."""
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                if child.expect([pexpect.TIMEOUT, r"\x1b\[6n"], timeout=0.5) == 1:
                    child.send("\x1b[5;1R")  # "the cursor is on row 5": the rows below are known
                if any(text in line for line in Screen(120).feed("".join(sh.log)).text()):
                    return True
            return False

        assert screen_shows(" ctrl0: waiting | 1 namespace | 0 IOPS")
        with VfioUserClient(timeout=TIMEOUT).connect(tmp / "run" / "ctrl0.sock") as client:
            client.negotiate()
            assert screen_shows(" ctrl0: connected | 1 namespace | 0 IOPS")
            child.send("object_add x-nvme-ns-nvm,id=ns2,size=1M\r")
            assert screen_shows(" ctrl0: connected | 2 namespaces | ")
        child.sendcontrol("d")
        assert sh.wait_exit() == 0
    assert sockets(tmp / "run") == []


# ---------------------------------------------------------------------------------------
# Script mode (stdin not a terminal) and headless


def run_nvshell(tmp: Path, *args: str, script: str | None = None,
                timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -m nvshell ARGS`` to its end, reading ``script`` (a file: not a terminal) or nothing."""
    if script is None:
        return subprocess.run([sys.executable, "-m", "nvshell", *args], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, cwd=str(REPO), env=program_env(tmp), timeout=timeout)
    path = tmp / "script.txt"
    path.write_text(script)
    with open(path) as stdin:
        return subprocess.run([sys.executable, "-m", "nvshell", *args], stdin=stdin, capture_output=True, text=True,
                              cwd=str(REPO), env=program_env(tmp), timeout=timeout)


def run_script(tmp: Path, script: str, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return run_nvshell(tmp, "--run-dir", str(tmp / "run"), *args, script=script, timeout=timeout)


def test_script_mode_from_a_file(tmp: Path) -> None:
    done = run_script(tmp, "# a comment\n\ninfo status\n"
                           "object_add x-nvme-ns-nvm,id=ns2,size=1M,attached-to=all\n"
                           "qom-get /objects/ns2 nsid\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "VM status: running\n2\n"
    assert "(nvshell)" not in done.stdout and "\x1b" not in done.stdout  # no prompt_toolkit
    assert "ctrl0.sock" in done.stderr  # the socket announcement goes to stderr in script mode
    assert sockets(tmp / "run") == []


def test_script_mode_stops_at_the_first_error(tmp: Path) -> None:
    done = run_script(tmp, "info status\nbogus\ninfo status\n")
    assert done.returncode == 1
    assert done.stdout == "VM status: running\n"
    assert done.stderr.splitlines()[-1] == "Error: unknown command: 'bogus'"
    assert sockets(tmp / "run") == []


def test_script_mode_keep_going(tmp: Path) -> None:
    done = run_script(tmp, "bogus\ninfo status\nquit\ninfo status\n", "--keep-going")
    assert done.returncode == 1  # a command failed: still non-zero
    assert done.stdout == "VM status: running\n"  # quit ended the script
    assert "Error: unknown command: 'bogus'" in done.stderr


def test_script_then_serve_with_no_shell(tmp: Path) -> None:
    (tmp / "script.txt").write_text("object_add x-nvme-ns-nvm,id=ns2,size=1M\n")
    with open(tmp / "script.txt") as stdin:
        proc = subprocess.Popen([sys.executable, "-m", "nvshell", "--run-dir", str(tmp / "run"), "--no-shell"],
                                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(REPO), env=program_env(tmp))
    try:
        nv = NvshellProcess(tmp / "run")
        nv.proc = proc  # reuse the harness's socket wait
        nv.wait_socket(tmp / "run" / "qmp.sock", TIMEOUT)
        check = _qmp_hmp(tmp / "run" / "qmp.sock", "info qom-tree /objects")
        assert "/ns2 (x-nvme-ns-nvm)" in check
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    assert sockets(tmp / "run") == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
@pytest.mark.parametrize("mode", ["headless", "script-open-pipe"])
def test_signals_stop_non_interactive_modes_cleanly(tmp: Path, mode: str, sig: signal.Signals) -> None:
    """A script whose stdin never closes, or ``--no-shell``: a signal still stops at once."""
    args = [sys.executable, "-m", "nvshell", "--run-dir", str(tmp / "run")]
    if mode == "headless":
        args.append("--no-shell")
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=str(REPO), env=program_env(tmp))
    try:
        if mode != "headless":
            proc.stdin.write("info status\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        nv = NvshellProcess(tmp / "run")
        nv.proc = proc
        nv.wait_socket(tmp / "run" / "qmp.sock", TIMEOUT)
        nv.wait_socket(tmp / "run" / "ctrl0.sock", TIMEOUT)
        proc.send_signal(sig)
        assert proc.wait(TIMEOUT) == 0  # stdin is still open: the reader must not hold up the exit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
    assert sockets(tmp / "run") == []


def test_qmp_quit_stops_headless(tmp: Path) -> None:
    with NvshellProcess(tmp / "run") as nv:
        assert _qmp_execute(tmp / "run" / "qmp.sock", "quit") == {}
        assert nv.proc.wait(TIMEOUT) == 0  # type: ignore[union-attr]
    assert sockets(tmp / "run") == []


def _qmp_execute(path: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    """One QMP command over a fresh connection (a tiny synchronous client)."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(str(path))
        reader = s.makefile("r")
        json.loads(reader.readline())
        s.sendall(json.dumps({"execute": "qmp_capabilities"}).encode())
        json.loads(reader.readline())
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        s.sendall(json.dumps(msg).encode())
        while True:
            reply = json.loads(reader.readline())
            if "event" not in reply:
                break
        reader.close()
    assert "return" in reply, reply
    return reply["return"]


def _qmp_hmp(path: Path, line: str) -> str:
    return str(_qmp_execute(path, "human-monitor-command", {"command-line": line})).replace("\r\n", "\n")


# ---------------------------------------------------------------------------------------
# --connect


def test_connect_to_a_headless_nvshell(tmp: Path) -> None:
    run_dir = tmp / "run"
    with remote_shell(tmp) as (nv, remote):
        remote.prompt()
        assert "VM status: running" in remote.run("info status")
        assert remote.run("bogus").strip() == "Error: unknown command: 'bogus'"
        # Completion goes over QMP too: a command, a type, a property, a QOM path.
        remote.tab("object_a", "dd")
        remote.tab(" x-nvme-ns-n", "vm")
        remote.tab(",id=ns7,si", "ze=")
        assert remote.run("1M,attached-to=all").strip() == ""
        remote.tab("qom-get /objects/su", "bsys0")
        remote.tab(" names", "paces")
        assert "ns7" in remote.run("")
        assert remote.line == "qom-get /objects/subsys0 namespaces"
        tree = remote.run("info qtree -b")
        assert 'dev: x-nvme-ns-nvm, id "ns7"' in tree and 'attached: x-nvme-ns-nvm, id "ns7", nsid 2' in tree

        # Events from the remote side appear above the prompt.
        from nvshell.device.vfio_user.client import VfioUserClient

        remote.type("info stat")
        remote.child.expect("stat")
        with VfioUserClient(timeout=TIMEOUT).connect(run_dir / "ctrl0.sock") as client:
            client.negotiate()
            remote.child.expect(r"\[event\] ctrl0: guest connected")
            remote.child.expect(r"\(nvshell\)[^\r\n]*info stat")
            assert remote.run("us").strip() == "VM status: running"
        remote.child.expect(r"\[event\] ctrl0: guest disconnected")

        # quit ends this shell only; the headless nvshell keeps serving.
        remote.type("quit\r")
        assert remote.wait_exit() == 0
        assert nv.proc is not None and nv.proc.poll() is None
        assert sockets(run_dir) == ["ctrl0.sock", "qmp.sock"]
        assert "/ns7 (x-nvme-ns-nvm)" in _qmp_hmp(run_dir / "qmp.sock", "info qom-tree /objects")
    assert nv.proc.returncode == 0
    assert sockets(run_dir) == []


def test_connect_ctrl_d_and_script(tmp: Path) -> None:
    run_dir = tmp / "run"
    with remote_shell(tmp) as (nv, remote):
        remote.prompt()
        remote.type("\x04")
        assert remote.wait_exit() == 0
        done = run_nvshell(tmp, "--connect", f"unix:{run_dir}/qmp.sock", script="info status\nbogus\n")
        assert done.returncode == 1
        assert done.stdout == "VM status: running\n"
        assert done.stderr.strip() == "Error: unknown command: 'bogus'"


def test_connect_failure_is_one_error_line(tmp: Path) -> None:
    done = run_nvshell(tmp, "--connect", f"unix:{tmp}/nothing.sock")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nvshell: error: cannot connect to unix:{tmp}/nothing.sock")
    done = run_nvshell(tmp, "--connect", "bogus")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nvshell: error:"), done.stderr


def test_connect_when_the_server_goes_away(tmp: Path) -> None:
    run_dir = tmp / "run"
    with remote_shell(tmp) as (nv, remote):
        remote.prompt()
        assert _qmp_execute(run_dir / "qmp.sock", "quit") == {}
        assert nv.proc is not None and nv.proc.wait(TIMEOUT) == 0
        remote.child.expect(r"\[event\] SHUTDOWN")
        remote.type("info status\r")
        remote.child.expect(r"Error: connection to the nvshell monitor lost\r\n")
        assert remote.wait_exit() == 1
    assert sockets(run_dir) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_connect_signals_end_the_remote_shell(tmp: Path, sig: signal.Signals) -> None:
    run_dir = tmp / "run"
    with remote_shell(tmp) as (nv, remote):
        remote.prompt()
        remote.type("info st")
        remote.child.expect("st")
        remote.child.kill(sig)
        status = remote.wait_exit()
        assert status == 0
        assert nv.proc is not None and nv.proc.poll() is None  # the served nvshell is untouched


def test_ctrl_c_interrupts_a_running_command(tmp: Path) -> None:
    """A command that never finishes (here: a QMP server that never answers
    ``human-monitor-command``) is cancelled by Ctrl-C with one error line; the shell goes on."""
    import json
    import socket
    import threading

    path = tmp / "slow.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    conns: list[socket.socket] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conns.append(conn)
        conn.sendall(b'{"QMP": {"version": {"qemu": {"major": 10, "minor": 1, "micro": 0}, "package": ""}, '
                     b'"capabilities": []}}\r\n')
        decoder = json.JSONDecoder()
        buf = ""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data.decode()
            while buf.strip():
                try:
                    msg, end = decoder.raw_decode(buf.lstrip())
                except ValueError:
                    break
                buf = buf.lstrip()[end:]
                if msg.get("execute") == "human-monitor-command":
                    continue  # never answer: the command "runs" until interrupted
                reply: dict[str, Any] = {"return": [] if msg.get("execute", "").startswith(("x-", "qom")) else {}}
                if "id" in msg:
                    reply["id"] = msg["id"]
                conn.sendall(json.dumps(reply).encode() + b"\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    remote = Shell(tmp, "--connect", f"unix:{path}", run_dir=tmp / "run")
    try:
        remote.prompt()
        remote.type("info status\r")
        remote.child.expect(DONE_RE)
        remote.type("\x03")  # the terminal is in cooked mode while a command runs: SIGINT
        remote.child.expect(r"Error: interrupted\r\n")
        remote.prompt()
        remote.type("quit\r")
        assert remote.wait_exit() == 0
    finally:
        remote.close()
        listener.close()
        for conn in conns:
            conn.close()
        thread.join(TIMEOUT)
