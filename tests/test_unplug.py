"""device_del of a controller a host uses: the control plane keeps answering, DEVICE_DELETED follows.

A real Machine with a QMP server (qemu.qmp clients) and a real vfio-user client
connected to the controller (the "host"), which never reads the Changed
Namespace List: the removal waits out its grace period on its own thread while a
second QMP client is answered at once.
"""

from __future__ import annotations

import asyncio
import time

from qemu.qmp import ExecuteError, QMPClient

from nvshell.device import machine as machine_mod
from nvshell.device.machine import Machine, default_topology
from nvshell.device.vfio_user.client import VfioUserClient
from tests.qmp_helpers import MonitorThread


def test_device_del_of_a_used_controller_never_blocks_qmp(tmp_path) -> None:
    machine = Machine(str(tmp_path))
    default_topology(machine)
    mon = MonitorThread(tmp_path, machine)
    host = VfioUserClient(timeout=3.0).connect(str(tmp_path / "ctrl0.sock"))
    host.negotiate()
    deadline = time.monotonic() + 5
    while not machine.devices()[0].connected() and time.monotonic() < deadline:
        time.sleep(0.01)

    async def main() -> None:
        a, b = QMPClient("a"), QMPClient("b")
        await a.connect(mon.unix_path)
        await b.connect(mon.tcp)
        t0 = time.monotonic()
        assert await a.execute("device_del", {"id": "ctrl0"}) == {}
        returned = time.monotonic() - t0
        assert machine.pending_unplug() == ["ctrl0"]
        worst = 0.0
        for _ in range(10):                    # the removal is under way all along
            t = time.monotonic()
            assert (await b.execute("query-status"))["status"] == "running"
            worst = max(worst, time.monotonic() - t)
            await asyncio.sleep(0.05)
        assert machine.pending_unplug() == ["ctrl0"]
        try:
            await b.execute("device_del", {"id": "ctrl0"})
            raise AssertionError("a second device_del was accepted")
        except ExecuteError as exc:
            assert exc.error.error.desc == "Device ctrl0 is already in the process of unplug"
        event = await asyncio.wait_for(a.events.get(), machine_mod.REMOVAL_GRACE + 5)
        while event["event"] != "DEVICE_DELETED":
            event = await asyncio.wait_for(a.events.get(), 5)
        deleted_after = time.monotonic() - t0
        assert event["data"] == {"device": "ctrl0", "path": "/machine/peripheral/ctrl0"}
        assert returned < 0.1 and worst < 0.1, (returned, worst)
        assert deleted_after >= 0.5        # after the answers above, not before device_del returned
        assert machine.pending_unplug() == [] and machine.devices() == []
        await a.disconnect()
        await b.disconnect()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        host.close()
        mon.stop()
