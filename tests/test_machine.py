"""Machine with the real controller and vfio-user server: a client connects, the tree drives attach/detach.

Skipped until ``device/nvme/controller.py`` exists.
"""

from __future__ import annotations

import threading
import time

import pytest


from nvshell.device.errors import ObjectError
from nvshell.device.machine import Machine, default_topology
from nvshell.device.vfio_user.client import VfioUserClient


def wait_for(pred, timeout=3.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


@pytest.fixture
def m(tmp_path):
    machine = Machine(str(tmp_path))
    yield machine
    machine.shutdown()


def active_nsids(m, ctrl_id):
    ctrl = m.find_device(ctrl_id).model
    return sorted(ctrl.iothread.run(lambda: list(ctrl.namespaces)))


def test_default_topology_and_client(m, tmp_path):
    events = []
    lock = threading.Lock()

    def on_event(name, data):
        with lock:
            events.append((name, data))
    m.subscribe(on_event)
    default_topology(m)
    sock = str(tmp_path / "ctrl0.sock")
    assert m.qom_get("/machine/peripheral/ctrl0", "socket") == sock
    assert active_nsids(m, "ctrl0") == [1]
    with VfioUserClient().connect(sock) as client:
        client.negotiate()
        assert wait_for(lambda: any(e[0] == "X_NVME_CLIENT_CONNECTED" for e in events))
        assert m.qom_get("/machine/peripheral/ctrl0", "connected") is True
        cap = client.read32(0, 0)
        assert cap & 0xFFFF == 0x7FF  # CAP.MQES default
        # run-time namespace changes through the tree
        m.object_add("x-nvme-ns-nvm", "ns2", {"subsys": "subsys0", "size": "4M", "attached-to": "ctrl0"})
        assert active_nsids(m, "ctrl0") == [1, 2]
        m.qom_set("/objects/ns2", "attached-to", [])
        assert active_nsids(m, "ctrl0") == [1]
        m.attach("ns2", "ctrl0")
        assert active_nsids(m, "ctrl0") == [1, 2]
        m.object_del("ns2")
        assert active_nsids(m, "ctrl0") == [1]
    assert wait_for(lambda: any(e[0] == "X_NVME_CLIENT_DISCONNECTED" for e in events))


def test_second_controller_and_removal(m, tmp_path):
    default_topology(m)
    m.device_add("x-nvme-ctrl", "ctrl1", {"subsys": "subsys0"})
    assert active_nsids(m, "ctrl1") == [1]  # attached-to=all covers controllers added later
    assert m.qom_get("/machine/peripheral/ctrl1", "cntlid") != m.qom_get("/machine/peripheral/ctrl0", "cntlid")
    with pytest.raises(ObjectError, match="still has members"):
        m.object_del("subsys0")
    m.device_del("ctrl0")
    assert not (tmp_path / "ctrl0.sock").exists()
    assert active_nsids(m, "ctrl1") == [1]
    assert m.qom_get("/objects/subsys0", "controllers") == ["ctrl1"]


def test_queries_read_controller_state_on_its_iothread(m, monkeypatch) -> None:
    """query_controllers / query_queues: typed results, controller state read on its IOThread."""
    from nvshell.device import machine as machine_mod
    seen: list[str] = []
    real = machine_mod._io_commands

    def recording(ctrl):
        seen.append(threading.current_thread().name)
        return real(ctrl)
    monkeypatch.setattr(machine_mod, "_io_commands", recording)
    default_topology(m)
    (row,) = m.query_controllers().result(5)
    assert isinstance(row, machine_mod.ControllerStatus)
    assert (row.id, row.subsystem, row.cntlid, row.connected, row.io_commands) == ("ctrl0", "subsys0", 1, False, 0)
    assert seen == ["iothread-ctrl0"]
    (q,) = m.query_queues("ctrl0").result(5)
    assert q.device == "ctrl0" and q.state == "waiting" and q.queues == ()
    with pytest.raises(machine_mod.ObjectNotFound, match="Device 'nope' not found"):
        m.query_queues("nope")
