"""The real ``qmp-shell`` (and ``qmp-shell -H``) against the monitor, under pexpect."""

from __future__ import annotations

import os
import shutil
import sys

import pexpect
import pytest

from nvshell.device.machine import Machine
from tests.qmp_helpers import MonitorThread

QMP_SHELL = shutil.which("qmp-shell")
pytestmark = pytest.mark.skipif(QMP_SHELL is None, reason="qmp-shell is not installed")
PROMPT = r"\(QEMU\) "


@pytest.fixture
def mon(tmp_path):
    m = MonitorThread(tmp_path, Machine(str(tmp_path)))
    yield m
    m.stop()


def spawn(mon, tmp_path, *args: str) -> pexpect.spawn:
    env = dict(os.environ, HOME=str(tmp_path), TERM="dumb")
    child = pexpect.spawn(QMP_SHELL, [*args, mon.unix_path], env=env, encoding="utf-8", timeout=10)
    child.logfile_read = sys.stdout if os.environ.get("QMP_SHELL_DEBUG") else None
    return child


def test_qmp_shell_commands_and_completion(mon, tmp_path):
    child = spawn(mon, tmp_path)
    child.expect(r"Connected to QEMU \d+\.\d+\.\d+")
    child.expect(PROMPT)
    child.sendline("query-status")
    child.expect(r'"status": "running"')
    child.expect(PROMPT)
    # qmp-shell turns size=1048576 into an int: the monitor accepts it for a size property
    child.sendline("object-add qom-type=x-nvme-subsystem id=sub1")
    child.expect(r'"return": \{\}')
    child.expect(PROMPT)
    child.sendline("object-add qom-type=x-nvme-ns-nvm id=ns1 subsys=sub1 size=1048576")
    child.expect(r'"return": \{\}')
    child.expect(PROMPT)
    child.sendline("qom-get path=/objects/ns1 property=size")
    child.expect(r'"return": 1048576')
    child.expect(PROMPT)
    child.sendline("object-del id=nope")
    child.expect(r'"class": "(GenericError|DeviceNotFound)"')
    child.expect(PROMPT)
    # completion comes from query-commands
    child.send("query-ver\t")
    child.expect("query-version")
    child.sendline("")
    child.expect(r'"package": "nvshell ')
    child.expect(PROMPT)
    child.send("qom-list-t\t")
    child.expect("qom-list-types")
    child.sendline("")
    child.expect("x-nvme-subsystem")
    child.expect(PROMPT)
    child.sendline("no-such-command")
    child.expect(r'"CommandNotFound"')
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)


def test_qmp_shell_hmp_mode(mon, tmp_path):
    child = spawn(mon, tmp_path, "-H")
    child.expect("Welcome to the HMP shell!")
    child.expect(PROMPT)
    child.sendline("object_add x-nvme-subsystem,id=subh")
    child.expect(PROMPT)
    child.sendline("info qom-tree")
    child.expect("subh")
    child.expect(PROMPT)
    child.sendline("info qtree")
    child.expect(PROMPT)
    child.send("info qt\t")  # completion parsed from 'info' output
    child.expect("info qtree")
    child.sendline("")
    child.expect(PROMPT)
    child.sendline("nosuchcmd")
    child.expect("unknown command: 'nosuchcmd'")
    child.expect(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
