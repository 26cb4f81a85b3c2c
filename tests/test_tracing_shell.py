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

from nvshell.testing import NvmeTestHost
from tests.harness import REPO

PROMPT = r"\(nvshell\)"


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
    g = NvmeTestHost(tmp_path / "run" / "ctrl0.sock")
    try:
        # Nothing enabled in this shell yet: the set-up commands print nothing.
        g.start()
        command(shell, "trace-event nvme_cmd_* on", "trace-filter qid=1,opcode=write", "trace-filter",
                expect=r"filter: qid=1,opcode=write")
        t = in_thread(lambda: (g.io(0x02, 3, depth=1), g.io(0x01, 5, depth=1)))
        for _ in range(5):
            shell.expect(r"nvme_cmd_submit \d\d:\d\d:\d\d\.\d{6} ctrl=ctrl0 qid=1 cid=\d+ opcode=write nsid=1")
        t.join(10)
        assert "opcode=read" not in shell.before
        # The prompt still works while records arrive and after.
        command(shell, "info trace-events nvme_cmd_submit", expect="nvme_cmd_submit : state 1")
        # Rate limit: at most 5 lines a second, then a count of what was dropped.
        command(shell, "trace-filter rate=5", "trace-filter", expect=r"rate: 5 lines/s")
        t = in_thread(lambda: g.io(0x01, 60, depth=1))
        shell.expect(r"\.\.\. (\d+) trace lines dropped", timeout=20)
        assert int(shell.match.group(1)) > 0
        t.join(20)
        command(shell, "trace-filter", expect=r"rate: 5 lines/s \((\d+) dropped so far\)")
        assert int(shell.match.group(1)) >= 50
        # Off: no more lines; the latency statistics kept what was traced.
        command(shell, "trace-event nvme_cmd_* off", "info trace-events nvme_cmd_submit",
                expect="nvme_cmd_submit : state 0")
        g.io(0x01, 3, depth=1)
        command(shell, "info latency ctrl0", expect=r"ctrl0 write: n=65 errors=0")
        assert "nvme_cmd_submit" not in shell.before
        shell.expect(r"\|#+\|")                       # the histogram bars
        shell.sendline("quit")
        shell.expect(pexpect.EOF)
    finally:
        g.close()
