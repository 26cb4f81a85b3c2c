"""The interactive shell (real nvshell under pexpect) prints trace records live above the
prompt while a vfio-user client does I/O, rate-limited, and the prompt stays usable."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import pexpect
import pytest

from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.vfio_user.client import VfioUserClient
from nvshell.device.vfio_user.interface import RegionIndex
from tests.harness import REPO
from tests.test_controller_e2e import RAM, RAM_SIZE, Guest

PROMPT = r"\(nvshell\)"


class SocketGuest(Guest):
    """``Guest`` (test_controller_e2e) driving an nvshell controller socket it did not create."""

    def __init__(self, path: Path) -> None:  # noqa: super().__init__ builds its own controller
        self.c = VfioUserClient(timeout=5.0).connect(str(path))
        self.c.negotiate()
        self.ram = self.c.map_memory(RAM, RAM_SIZE)
        self.c.set_msix_eventfds(5)
        self.db = self.c.mmap_region_area(RegionIndex.BAR0)
        self.next = RAM
        self.q = {}
        self.cid = 0

    def close(self) -> None:
        self.c.close()

    def setup_io_queue(self) -> int:
        self.enable()
        cq, sq = self.alloc(4096), self.alloc(4096)
        assert self.cmd(AdminOpcode.CREATE_IO_CQ, cdw10=63 << 16 | 1, cdw11=2 << 16 | 3, dptr1=cq).status >> 1 == 0
        assert self.cmd(AdminOpcode.CREATE_IO_SQ, cdw10=63 << 16 | 1, cdw11=1 << 16 | 1, dptr1=sq).status >> 1 == 0
        self.q[1] = dict(sq=sq, cq=cq, size=64, tail=0, head=0, phase=1)
        return self.alloc(4096)

    def io(self, buf: int, n: int, opcode: int = 0x01) -> None:
        for i in range(n):
            assert self.cmd(opcode, qid=1, vector=2, nsid=1, dptr1=buf, cdw10=8 * i, cdw12=7).status >> 1 == 0


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[pexpect.spawn]:
    env = dict(os.environ, PYTHONPATH=str(REPO), NVSHELL_MENU_ROWS="0", TERM="xterm", COLUMNS="200")
    child = pexpect.spawn(sys.executable, ["-m", "nvshell", "--run-dir", str(tmp_path / "run"),
                                           "--history-file", str(tmp_path / "hist")],
                          env=env, cwd=str(REPO), encoding="utf-8", timeout=15, dimensions=(40, 200))
    child.logfile_read = open(tmp_path / "pty.log", "w")  # the whole session, for failures
    child.expect(PROMPT)
    yield child
    if child.isalive():
        child.sendline("quit")
        try:
            child.expect(pexpect.EOF, timeout=10)
        except pexpect.TIMEOUT:
            child.terminate(force=True)


def in_thread(fn) -> threading.Thread:  # type: ignore[no-untyped-def]
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def command(shell: pexpect.spawn, *lines: str, expect: str) -> None:
    """Type ``lines``, then wait for ``expect`` in the output.

    Why not just the prompt: prompt_toolkit redraws "(nvshell)" while a line is typed,
    so only a command's own output proves that it (and the lines before it) ran."""
    for line in lines:
        shell.sendline(line)
    shell.expect(expect)


def test_shell_shows_records_live_and_prompt_stays_usable(shell: pexpect.spawn, tmp_path: Path) -> None:
    g = SocketGuest(tmp_path / "run" / "ctrl0.sock")
    try:
        # Nothing enabled in this shell yet: the set-up commands print nothing.
        buf = g.setup_io_queue()
        command(shell, "trace-event nvme_cmd_* on", "trace-filter qid=1,opcode=write", "trace-filter",
                expect=r"filter: qid=1,opcode=write")
        t = in_thread(lambda: (g.io(buf, 3, 0x02), g.io(buf, 5, 0x01)))
        for _ in range(5):
            shell.expect(r"nvme_cmd_submit \d\d:\d\d:\d\d\.\d{6} ctrl=ctrl0 qid=1 cid=\d+ opcode=write nsid=1")
        t.join(10)
        assert "opcode=read" not in shell.before
        # The prompt still works while records arrive and after.
        command(shell, "info trace-events nvme_cmd_submit", expect="nvme_cmd_submit : state 1")
        # Rate limit: at most 5 lines a second, then a count of what was dropped.
        command(shell, "trace-filter rate=5", "trace-filter", expect=r"rate: 5 lines/s")
        t = in_thread(lambda: g.io(buf, 60))
        shell.expect(r"\.\.\. (\d+) trace lines dropped", timeout=20)
        assert int(shell.match.group(1)) > 0
        t.join(20)
        command(shell, "trace-filter", expect=r"rate: 5 lines/s \((\d+) dropped so far\)")
        assert int(shell.match.group(1)) >= 50
        # Off: no more lines; the latency statistics kept what was traced.
        command(shell, "trace-event nvme_cmd_* off", "info trace-events nvme_cmd_submit",
                expect="nvme_cmd_submit : state 0")
        g.io(buf, 3)
        command(shell, "info latency ctrl0", expect=r"ctrl0 write: n=65 errors=0")
        assert "nvme_cmd_submit" not in shell.before
        shell.expect(r"\|#+\|")                       # the histogram bars
        shell.sendline("quit")
        shell.expect(pexpect.EOF)
    finally:
        g.close()
