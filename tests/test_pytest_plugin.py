"""The pytest plugin (nvshell/pytest_plugin.py): its fixtures, used here as a user's suite uses
them, and the README's example test, extracted and run by pytest in a subprocess."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError

from nvshell.testing import REPO, NvmeHostError, NvmeTestHost, NvshellProcess, QmpConnection

EXAMPLE_MARK = "<!-- pytest-plugin-example: tests/test_pytest_plugin.py runs this block -->"


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(re.escape(EXAMPLE_MARK) + r"\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its plugin example block"
    return m.group(1)


def test_readme_example_runs_as_a_users_suite(tmp_path: Path) -> None:
    """The example, alone in a directory of its own, with only the plugin: an installed nvshell
    registers it through its pytest11 entry point; a bare checkout names it with -p."""
    (tmp_path / "test_example.py").write_text(readme_example())
    installed = any(ep.value == "nvshell.pytest_plugin"
                    for ep in importlib.metadata.entry_points(group="pytest11"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"]
    if not installed:
        cmd[3:3] = ["-p", "nvshell.pytest_plugin"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^1 passed", done.stdout, re.M), done.stdout


TWO_CTRLS = ["-object", "x-nvme-subsystem,id=s0",
             "-device", "x-nvme-ctrl,id=ca,subsys=s0", "-device", "x-nvme-ctrl,id=cb,subsys=s0",
             "-object", "x-nvme-ns-nvm,id=n1,subsys=s0,size=8M,attached-to=ca"]


@pytest.mark.nvshell(*TWO_CTRLS)
def test_marker_topology_qmp_helpers(nvshell: NvshellProcess, qmp: QmpConnection) -> None:
    nvshell.wait_socket(nvshell.socket("cb"))
    ctrls = {c["id"]: c for c in qmp.execute("x-nvme-query-controllers")}
    assert set(ctrls) == {"ca", "cb"} and ctrls["ca"]["socket"] == str(nvshell.socket("ca"))
    assert 'dev: x-nvme-ctrl, id "cb"' in qmp.hmp("info qtree -b")
    qmp.add_namespace("n2", "4M", subsys="s0", attached_to=["cb"], lba_size=4096)
    spaces = {n["id"]: n for n in qmp.execute("x-nvme-query-namespaces")}
    assert spaces["n2"]["lba-size"] == 4096
    with NvmeTestHost(nvshell.socket("cb")) as host:
        host.start()
        with pytest.raises(NvmeHostError, match="namespace 1 is not active"):
            host.lba_size(1)                                      # n1 is attached to ca only
        assert host.lba_size(2) == 4096
        host.write(3, b"\x5a" * 4096, nsid=2)
        assert host.read(3, 1, nsid=2) == b"\x5a" * 4096
    qmp.wait_event("X_NVME_CLIENT_CONNECTED", device="cb")
    with pytest.raises(ExecuteError, match="n9"):
        qmp.del_namespace("n9")
    with pytest.raises(TimeoutError, match=r"no DEVICE_DELETED event .*events seen"):
        qmp.wait_event("DEVICE_DELETED", timeout=0.2)
    qmp.add_fault("f1", ctrl="ca", opcode="read", action="status", status="unrecovered-read-error")
    assert [f["id"] for f in qmp.faults()] == ["f1"]
    qmp.del_fault("f1")
    assert qmp.faults() == []


def test_factory_and_host_errors(nvshell_factory, tmp_path: Path) -> None:
    a = nvshell_factory()
    b = nvshell_factory("-device", "x-nvme-ctrl,id=other", wait_for=["other.sock", "qmp.sock"])
    assert a.run_dir != b.run_dir and b.socket("other").is_socket()
    with NvmeTestHost(a.socket(), ram_size=1 << 20) as host:
        host.start(io_queues=2, depth=16)
        with pytest.raises(ValueError, match="whole number of 512-byte LBAs"):
            host.write(0, b"x" * 100)
        with pytest.raises(NvmeHostError, match="namespace 7 is not active|Identify CNS 0 failed"):
            host.lba_size(7)
        cqes = host.io(0x02, 5, qid=2, nsid=7, lba_size=512)       # no namespace 7
        assert {host.status(c) for c in cqes} == {0x0B}             # Invalid Namespace or Format
        with pytest.raises(MemoryError, match="guest RAM exhausted"):
            host.alloc(2 << 20)
    with pytest.raises(RuntimeError, match="nvshell exited"):
        nvshell_factory("-object", "bogus-type,id=x")


def test_nvme_host_fixture_counts(nvme_host: NvmeTestHost, qmp: QmpConnection) -> None:
    cqes = nvme_host.io(0x01, 12, depth=4)
    assert [nvme_host.status(c) for c in cqes] == [0] * 12
    ctrl = qmp.execute("x-nvme-query-controllers")[0]
    assert ctrl["connected"] and ctrl["io-commands"] == 12
