"""``-global DRIVER.PROP=VALUE``: device defaults for the command line's devices and for
``device_add`` (QMP and HMP), an explicit property winning, and the start-up errors -- through
the real program, a QMP client (qemu.qmp) and a vfio-user host that sees the effect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError

from nvshell import cmdline
from nvshell.cmdline import CmdlineError
from nvshell.device.machine import Machine
from nvshell.testing import REPO, NvmeTestHost, NvshellProcess, QmpConnection

MDTS_OFFSET = 77  # Identify Controller byte 77: Maximum Data Transfer Size

SUBSYS = ["-object", "x-nvme-subsystem,id=subsys0"]


def peripheral(name: str) -> str:
    return f"/machine/peripheral/{name}"


def host_view(socket: Path) -> tuple[bool, int]:
    """What a host sees of a controller: doorbell page offered as mmap, Identify MDTS."""
    host = NvmeTestHost(socket)
    try:
        mmap = host.doorbell_mmap
        host.enable()
        return mmap, host.identify_ctrl()[MDTS_OFFSET]
    finally:
        host.close()


def test_global_sets_defaults_for_command_line_and_device_add(tmp_path: Path) -> None:
    args = ["-global", "x-nvme-ctrl.doorbells=mmap",
            "-global", "driver=x-nvme-ctrl,property=mdts,value=4",
            "-global", "x-nvme-ctrl.mdts=5",                       # a later one for the same property wins
            *SUBSYS,
            "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0",
            "-device", "x-nvme-ctrl,id=ctrl1,subsys=subsys0,doorbells=trap,mdts=6"]
    with NvshellProcess(tmp_path / "run", *args).start(wait_for=["ctrl0.sock", "ctrl1.sock", "qmp.sock"]) as nv:
        qmp = QmpConnection(nv.qmp_path)
        try:
            assert qmp.execute("qom-get", path=peripheral("ctrl0"), property="doorbells") == "mmap"
            assert qmp.execute("qom-get", path=peripheral("ctrl0"), property="mdts") == 5
            # explicit properties beat the globals
            assert qmp.execute("qom-get", path=peripheral("ctrl1"), property="doorbells") == "trap"
            assert qmp.execute("qom-get", path=peripheral("ctrl1"), property="mdts") == 6

            qmp.execute("device_add", driver="x-nvme-ctrl", id="ctrl2", subsys="subsys0")
            qmp.execute("device_add", driver="x-nvme-ctrl", id="ctrl3", subsys="subsys0", doorbells="trap")
            assert qmp.hmp("device_add x-nvme-ctrl,id=ctrl4,subsys=subsys0") == ""
            assert qmp.hmp("device_add x-nvme-ctrl,id=ctrl5,subsys=subsys0,mdts=3") == ""
            got = {c: (qmp.execute("qom-get", path=peripheral(c), property="doorbells"),
                       qmp.execute("qom-get", path=peripheral(c), property="mdts"))
                   for c in ("ctrl2", "ctrl3", "ctrl4", "ctrl5")}
            assert got == {"ctrl2": ("mmap", 5), "ctrl3": ("trap", 5), "ctrl4": ("mmap", 5), "ctrl5": ("mmap", 3)}
            # info config (-readconfig JSON) carries the values in effect
            config = qmp.execute("x-nvme-query-config")
            devices = {d["id"]: d for d in config["devices"]}
            assert devices["ctrl4"]["doorbells"] == "mmap" and devices["ctrl3"]["doorbells"] == "trap"

            # a host sees what the properties say: the doorbell page offered for mmap, Identify MDTS
            assert host_view(nv.socket("ctrl0")) == (True, 5)
            assert host_view(nv.socket("ctrl1")) == (False, 6)
            assert host_view(nv.socket("ctrl4")) == (True, 5)
            assert host_view(nv.socket("ctrl3")) == (False, 5)
        finally:
            qmp.close()


def test_global_applies_to_the_default_topology(tmp_path: Path) -> None:
    with NvshellProcess(tmp_path / "run", "-global", "x-nvme-ctrl.doorbells=mmap") as nv:
        qmp = QmpConnection(nv.qmp_path)
        try:
            assert qmp.execute("qom-get", path=peripheral("ctrl0"), property="doorbells") == "mmap"
        finally:
            qmp.close()
        assert host_view(nv.socket("ctrl0"))[0] is True


def test_device_add_reports_a_global_it_cannot_use(tmp_path: Path) -> None:
    """A link global is resolved per device: a dangling one fails each device_add that uses it,
    naming the -global, and not one that gives the property itself."""
    with NvshellProcess(tmp_path / "run", "-global", "x-nvme-ctrl.subsys=nosuch") as nv:
        qmp = QmpConnection(nv.qmp_path)
        try:
            with pytest.raises(ExecuteError) as err:
                qmp.execute("device_add", driver="x-nvme-ctrl", id="c1")
            assert err.value.error_class == "GenericError"
            assert str(err.value) == ("-global x-nvme-ctrl.subsys=nosuch: "
                                                 "Property 'subsys': object 'nosuch' not found")
            assert qmp.hmp("device_add x-nvme-ctrl,id=c2").startswith("Error: -global x-nvme-ctrl.subsys=nosuch")
            qmp.execute("device_add", driver="x-nvme-ctrl", id="c3", subsys="subsys0")
            assert qmp.execute("qom-get", path=peripheral("c3"), property="subsys") == "/objects/subsys0"
            with pytest.raises(ExecuteError, match="Parameter 'doorbells' expects trap or mmap"):
                qmp.execute("device_add", driver="x-nvme-ctrl", id="c4", subsys="subsys0", doorbells="x")
        finally:
            qmp.close()


@pytest.mark.parametrize("option, message", [
    ("x-nvme-ctrl.doorbells=bogus", "-global x-nvme-ctrl.doorbells=bogus: Parameter 'doorbells' expects trap or mmap"),
    ("x-nvme-ctrl.bogus=1", "-global x-nvme-ctrl.bogus=1: Property 'x-nvme-ctrl.bogus' not found"),
    ("nosuch.doorbells=mmap", "-global nosuch.doorbells=mmap: 'nosuch' is not a valid device model name"),
    ("x-nvme-ns-nvm.size=1G", "-global x-nvme-ns-nvm.size=1G: 'x-nvme-ns-nvm' is not a valid device model name"),
    ("x-nvme-ctrl.connected=on", "-global x-nvme-ctrl.connected=on: Property 'x-nvme-ctrl.connected' is read-only"),
    ("x-nvme-ctrl.mdts=99", "-global x-nvme-ctrl.mdts=99: Parameter 'mdts' expects a value between 0 and 31"),
    ("x-nvme-ctrl.doorbells", "-global x-nvme-ctrl.doorbells: expected DRIVER.PROPERTY=VALUE or "
                              "driver=DRIVER,property=PROPERTY,value=VALUE"),
    ("driver=x-nvme-ctrl,property=mdts", "-global driver=x-nvme-ctrl,property=mdts: options 'driver', "
                                         "'property', and 'value' are required"),
    ("driver=x-nvme-ctrl,property=mdts,value=3,size=1",
     "-global driver=x-nvme-ctrl,property=mdts,value=3,size=1: Invalid parameter 'size'"),
])
def test_bad_global_is_a_startup_error(tmp_path: Path, option: str, message: str) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "nvshell", "--run-dir", str(run_dir), "--no-shell",
                           "-global", option], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          cwd=str(REPO), env={**_env(), "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 1, done
    assert done.stderr.startswith(f"nvshell: error: {message}"), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (run_dir / "qmp.sock").exists() and not (run_dir / "ctrl0.sock").exists()


def _env() -> dict[str, str]:
    import os
    return {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}


def test_global_link_orders_creation_and_names_a_dangling_reference(tmp_path: Path) -> None:
    """A -global naming an object counts as a reference of every device it applies to: the
    object is created first wherever it is given; one defined nowhere is refused up front."""
    specs = cmdline.parse(devices=["x-nvme-ctrl,id=c0"], objects=["x-nvme-subsystem,id=s1"],
                          globals=["x-nvme-ctrl.subsys=s1"])
    specs.items.reverse()                                   # the device before the subsystem it needs
    m = Machine(str(tmp_path))
    try:
        cmdline.apply(m, specs)
        assert m.qom_get(peripheral("c0"), "subsys") == "/objects/s1"
    finally:
        m.shutdown()
    specs = cmdline.parse(devices=["x-nvme-ctrl,id=c0"], globals=["x-nvme-ctrl.subsys=s9"])
    with pytest.raises(CmdlineError, match=r"^-global x-nvme-ctrl.subsys=s9: Parameter 'subsys' refers to 's9', "
                                           r"which is not defined$"):
        cmdline.apply(Machine(str(tmp_path)), specs)


def test_global_value_keeps_commas_and_readconfig_devices_take_globals(tmp_path: Path) -> None:
    """QEMU reads DRIVER.PROP=VALUE's value verbatim (commas included); devices of -readconfig
    are built like any other and take the globals too."""
    assert cmdline.parse_global("x-nvme-ctrl.model=a,b").value == "a,b"
    assert cmdline.parse_global("driver=x-nvme-ctrl,property=model,value=a,,b").value == "a,b"
    config = tmp_path / "c.json"
    config.write_text('{"objects": [{"qom-type": "x-nvme-subsystem", "id": "s"}],'
                      ' "devices": [{"driver": "x-nvme-ctrl", "id": "c0", "subsys": "s"},'
                      '             {"driver": "x-nvme-ctrl", "id": "c1", "subsys": "s", "model": "own"}]}')
    m = Machine(str(tmp_path))
    try:
        cmdline.apply(m, cmdline.parse(readconfig=str(config), globals=["x-nvme-ctrl.model=a,b"]))
        assert m.qom_get(peripheral("c0"), "model") == "a,b"
        assert m.qom_get(peripheral("c1"), "model") == "own"
    finally:
        m.shutdown()


PROBE = '''
from nvshell.testing import NvshellProcess, QmpConnection


def test_probe(nvshell, qmp, tmp_path):
    assert qmp.execute("qom-get", path="/machine/peripheral/ctrl0", property="mdts") == 3
    own = NvshellProcess(tmp_path / "own", "-device", "x-nvme-ctrl,id=ctrl0,mdts=6,doorbells=mmap")
    with own:
        conn = QmpConnection(own.qmp_path)
        try:
            assert conn.execute("qom-get", path="/machine/peripheral/ctrl0", property="mdts") == 6
            assert conn.execute("qom-get", path="/machine/peripheral/ctrl0", property="doorbells") == "mmap"
        finally:
            conn.close()
'''


def test_suite_option_reaches_every_nvshell_a_test_starts(tmp_path: Path) -> None:
    """``pytest --nvshell-global``: the suite's conftest hands it to every NvshellProcess (here
    the plugin's ``nvshell`` fixture and one a test starts itself); a test's own device property
    wins; a bad one is a usage error before any test runs."""
    (tmp_path / "test_probe.py").write_text(PROBE)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
           "-p", "nvshell.pytest_plugin", "test_probe.py"]
    env = {**_env(), "PYTHONPATH": str(REPO)}
    done = subprocess.run([*cmd, "--nvshell-global", "x-nvme-ctrl.mdts=3", "--nvshell-global",
                           "x-nvme-ctrl.doorbells=trap"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1 and "assert 7 == 3" in done.stdout, done.stdout + done.stderr  # default MDTS 7
    done = subprocess.run([*cmd, "--nvshell-global", "x-nvme-ctrl.mdts=32"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 4, done.stdout + done.stderr
    assert ("--nvshell-global: -global x-nvme-ctrl.mdts=32: Parameter 'mdts' expects a value between 0 and 31"
            in done.stderr), done.stderr


def test_startup_options_are_refused_with_connect(tmp_path: Path) -> None:
    """``--connect`` runs a shell on an nvshell already running: a -global (or -device...) there
    would be ignored, so it is a usage error naming the options, before any connection."""
    done = subprocess.run([sys.executable, "-m", "nvshell", "--connect", f"unix:{tmp_path}/none.sock",
                           "-global", "x-nvme-ctrl.mdts=3", "-device", "x-nvme-ctrl,id=c1"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=str(REPO),
                          env={**_env(), "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[-1].startswith(
        "nvshell: error: -device, -global: only when starting nvshell, not with --connect"), done.stderr
