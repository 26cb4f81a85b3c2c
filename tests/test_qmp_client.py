"""The QMP monitor against the real ``qemu.qmp`` library (QMPClient), over UNIX and TCP.

Runs the real Machine with a temporary run_dir; its events that arrive from foreign
threads (a controller's IOThread) are the real ones a vfio-user client causes.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
from typing import Any


import pytest
from qemu.qmp import ExecuteError, QMPClient

from nvshell.device.machine import Machine
from nvshell.device.vfio_user.client import VfioUserClient
from tests.qmp_helpers import MonitorThread, RawClient




@pytest.fixture
def mon(tmp_path):
    m = MonitorThread(tmp_path, Machine(str(tmp_path)))
    yield m
    m.stop()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def connect(address: Any) -> QMPClient:
    client = QMPClient("test")
    await client.connect(address)
    return client


async def expect_error(client: QMPClient, cmd: str, args: dict | None, error_class: str, desc: str) -> None:
    with pytest.raises(ExecuteError) as info:
        await client.execute(cmd, args)
    assert info.value.error_class == error_class
    assert info.value.error.error.desc == desc


def test_greeting_shape_and_socket_mode(mon):
    assert stat.S_IMODE(os.stat(mon.unix_path).st_mode) == 0o600
    raw = RawClient(mon.unix_path, negotiate=False)
    greeting = raw.greeting
    assert greeting["QMP"]["capabilities"] == []
    assert set(greeting["QMP"]["version"]["qemu"]) == {"major", "minor", "micro"}
    assert greeting["QMP"]["version"]["package"].startswith("nvshell ")
    raw.close()


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_connect_and_core_commands(mon, transport):
    async def main() -> None:
        client = await connect(mon.unix_path if transport == "unix" else mon.tcp)
        version = await client.execute("query-version")
        assert version == mon.ctx.version_info()
        assert set(version["qemu"]) == {"major", "minor", "micro"}
        assert await client.execute("query-status") == {"running": True, "status": "running"}
        names = {c["name"] for c in await client.execute("query-commands")}
        assert {"qmp_capabilities", "query-qmp-schema", "object-add", "device_del", "qom-list-types",
                "trace-event-set-state", "human-monitor-command", "quit"} <= names
        await expect_error(client, "qmp_capabilities", None, "CommandNotFound",
                           "Capabilities negotiation is already complete, command ignored")
        await expect_error(client, "no-such-cmd", None, "CommandNotFound", "The command no-such-cmd has not been found")
        await client.disconnect()
    run(main())


def test_argument_errors(mon):
    async def main() -> None:
        c = await connect(mon.unix_path)
        await expect_error(c, "object-del", {}, "GenericError", "Parameter 'id' is missing")
        await expect_error(c, "object-del", {"id": 5}, "GenericError",
                           "Invalid parameter type for 'id', expected: string")
        await expect_error(c, "object-del", {"id": "x", "foo": 1}, "GenericError", "Parameter 'foo' is unexpected")
        await expect_error(c, "query-status", {"foo": 1}, "GenericError", "Parameter 'foo' is unexpected")
        await expect_error(c, "qom-list-types", {"abstract": "yes"}, "GenericError",
                           "Invalid parameter type for 'abstract', expected: boolean")
        await expect_error(c, "human-monitor-command", {"command-line": "help", "cpu-index": "0"}, "GenericError",
                           "Invalid parameter type for 'cpu-index', expected: integer")
        await expect_error(c, "object-add", {"id": "x"}, "GenericError", "Parameter 'qom-type' is missing")
        await c.disconnect()
    run(main())


def test_schema_is_consistent(mon):
    async def main() -> list:
        c = await connect(mon.unix_path)
        schema = await c.execute("query-qmp-schema")
        await c.disconnect()
        return schema
    schema = run(main())
    by_name = {e["name"]: e for e in schema}
    assert len(by_name) == len(schema)
    for entity in schema:
        meta = entity["meta-type"]
        assert meta in ("command", "event", "object", "builtin", "array", "enum")
        if meta == "event":
            assert by_name[entity["arg-type"]]["meta-type"] == "object"
        elif meta == "command":
            assert by_name[entity["arg-type"]]["meta-type"] == "object"
            assert entity["ret-type"] in by_name
        elif meta == "object":
            for member in entity["members"]:
                assert member["type"] in by_name
        elif meta == "array":
            assert entity["element-type"] in by_name
        elif meta == "enum":
            assert entity["values"] == [m["name"] for m in entity["members"]]
        else:
            assert entity["json-type"] in ("string", "int", "number", "boolean", "null", "object", "array", "value")
    registry = mon.ctx.registry
    for name in registry.names():
        members = by_name[by_name[name]["arg-type"]]["members"]
        declared = registry.get(name).args
        assert [(m["name"], "default" in m) for m in members] == [(a.name, a.optional) for a in declared]
    events = {e["name"] for e in schema if e["meta-type"] == "event"}
    assert {"DEVICE_DELETED", "SHUTDOWN", "X_NVME_CLIENT_CONNECTED", "X_NVME_CLIENT_DISCONNECTED",
            "X_NVME_FAULT_INJECTED", "X_TRACE_RECORD", "X_TRACE_DROPPED"} <= events
    deleted = by_name[by_name["DEVICE_DELETED"]["arg-type"]]["members"]
    assert [(m["name"], "default" in m) for m in deleted] == [("device", True), ("path", False)]


def test_namespace_lifecycle(mon):
    async def main() -> None:
        c = await connect(mon.unix_path)
        await c.execute("object-add", {"qom-type": "x-nvme-subsystem", "id": "sub9"})
        # qmp-shell sends size=1048576 as an int: accepted, converted by the property layer
        await c.execute("object-add", {"qom-type": "x-nvme-ns-nvm", "id": "ns9", "subsys": "sub9",
                                       "size": 1048576})
        props = {p["name"]: p["type"] for p in await c.execute("qom-list", {"path": "/objects/ns9"})}
        assert "size" in props
        assert await c.execute("qom-get", {"path": "/objects/ns9", "property": "size"}) == 1048576
        for prop in props:  # every listed property is readable or fails cleanly
            try:
                await c.execute("qom-get", {"path": "/objects/ns9", "property": prop})
            except ExecuteError as exc:
                assert exc.error_class in ("GenericError", "DeviceNotFound")
        with pytest.raises(ExecuteError) as info:
            await c.execute("qom-get", {"path": "/objects/nope", "property": "size"})
        assert info.value.error_class == "DeviceNotFound"
        with pytest.raises(ExecuteError) as info:
            await c.execute("object-add", {"qom-type": "x-nvme-ns-nvm", "id": "ns9", "subsys": "sub9", "size": 4096})
        assert info.value.error_class == "GenericError"
        await c.execute("object-del", {"id": "ns9"})
        with pytest.raises(ExecuteError):
            await c.execute("qom-list", {"path": "/objects/ns9"})
        with pytest.raises(ExecuteError):
            await c.execute("object-del", {"id": "ns9"})
        await expect_error(c, "device_del", {"id": "nope"}, "DeviceNotFound", "Device 'nope' not found")
        await c.disconnect()
    run(main())


def test_device_lifecycle_and_device_deleted(mon, tmp_path):
    sock = str(tmp_path / "ctrl9.sock")

    async def main() -> None:
        c = await connect(mon.unix_path)
        other = await connect(mon.tcp)
        await c.execute("object-add", {"qom-type": "x-nvme-subsystem", "id": "sub9"})
        await c.execute("device_add", {"driver": "x-nvme-ctrl", "id": "ctrl9", "subsys": "sub9", "socket": sock})
        assert os.path.exists(sock)
        await c.execute("device_del", {"id": "ctrl9"})
        for client in (c, other):  # every negotiated client gets the event
            event = await asyncio.wait_for(client.events.get(), 5)
            while event["event"] != "DEVICE_DELETED":
                event = await asyncio.wait_for(client.events.get(), 5)
            assert event["data"] == {"device": "ctrl9", "path": "/machine/peripheral/ctrl9"}
            assert set(event["timestamp"]) == {"seconds", "microseconds"}
        await expect_error(c, "device_del", {"id": "ctrl9"}, "DeviceNotFound", "Device 'ctrl9' not found")
        await c.disconnect()
        await other.disconnect()
    run(main())


async def _error_desc(client: QMPClient, cmd: str, args: dict) -> str:
    try:
        await client.execute(cmd, args)
    except ExecuteError as exc:
        return exc.error.error.desc
    raise AssertionError("no error")


def test_type_introspection(mon):
    async def main() -> None:
        c = await connect(mon.unix_path)
        types = await c.execute("qom-list-types")
        names = {t["name"] for t in types}
        assert {"x-nvme-ctrl", "x-nvme-ns-nvm", "x-nvme-subsystem"} <= names
        # descriptions travel with the types: a remote shell's -device help needs them
        assert {t["name"]: t.get("description") for t in types}["x-nvme-ctrl"] == "NVMe controller served over vfio-user"
        devices = {t["name"] for t in await c.execute("qom-list-types", {"implements": "device", "abstract": True})}
        assert "x-nvme-ctrl" in devices
        props = {p["name"] for p in await c.execute("qom-list-properties", {"typename": "x-nvme-ns-nvm"})}
        assert "size" in props
        props = {p["name"] for p in await c.execute("device-list-properties", {"typename": "x-nvme-ctrl"})}
        assert "subsys" in props
        with pytest.raises(ExecuteError):
            await c.execute("device-list-properties", {"typename": "no-such-type"})
        await c.disconnect()
    run(main())


def test_trace_events(mon):
    async def main() -> None:
        c = await connect(mon.unix_path)
        states = await c.execute("trace-event-get-state", {"name": "nvme_*"})
        assert [(s["name"], s["state"]) for s in states] == [("nvme_cmd_complete", "disabled"),
                                                                    ("nvme_cmd_submit", "disabled")]
        await c.execute("trace-event-set-state", {"name": "nvme_cmd_s*", "enable": True})
        states = await c.execute("trace-event-get-state", {"name": "nvme_cmd_submit"})
        assert states[0]["state"] == "enabled"
        assert await c.execute("trace-event-get-state", {"name": "zz*"}) == []
        await expect_error(c, "trace-event-get-state", {"name": "zz"}, "GenericError", 'unknown event "zz"')
        await expect_error(c, "trace-event-set-state", {"name": "zz*", "enable": True}, "GenericError",
                           "No trace events found")
        await c.disconnect()
    run(main())
    mon.ctx.trace = None  # nothing wired: as QEMU with no events
    async def unwired() -> None:
        c = await connect(mon.unix_path)
        assert await c.execute("trace-event-get-state", {"name": "*"}) == []
        await c.disconnect()
    run(unwired())


def test_human_monitor_command(mon):
    async def main() -> None:
        c = await connect(mon.unix_path)
        out = await c.execute("human-monitor-command", {"command-line": "help", "cpu-index": 0})
        assert isinstance(out, str) and out
        assert "\n" not in out.replace("\r\n", "")
        await c.execute("object-add", {"qom-type": "x-nvme-subsystem", "id": "s1"})
        out = await c.execute("human-monitor-command", {"command-line": "info qom-tree"})
        assert "s1" in out and out.endswith("\r\n")
        await c.execute("device_add", {"driver": "x-nvme-ctrl", "id": "c1",
                                       "socket": os.path.join(mon.tmp_path, "c1.sock")})
        out = await c.execute("human-monitor-command", {"command-line": "info qtree"})
        assert 'id "c1"' in out and out.endswith("\r\n")
        out = await c.execute("human-monitor-command", {"command-line": "nosuchcmd"})
        assert "unknown command" in out
        await c.disconnect()
    run(main())


def test_quit_replies_then_shutdown_event(mon):
    async def main() -> None:
        c = await connect(mon.unix_path)
        watcher = await connect(mon.tcp)
        assert await c.execute("quit") == {}
        event = await asyncio.wait_for(watcher.events.get(), 5)
        assert event["event"] == "SHUTDOWN"
        assert event["data"] == {"guest": False, "reason": "host-qmp-quit"}
        await c.disconnect()
        await watcher.disconnect()
    run(main())
    mon.run(lambda: None)   # the shutdown request is queued on the loop behind the event
    assert mon.shutdown_requests == 1


def test_machine_events_from_other_threads(mon):
    """A vfio-user client coming and going is published from the controller's IOThread;
    every QMP session gets each event, in order, then DEVICE_DELETED."""
    seen: list = []
    mon.run(lambda: mon.ctx.events.subscribe(lambda e: seen.append((e["event"], threading.current_thread()))))

    async def main() -> None:
        clients = [await connect(mon.unix_path) for _ in range(3)]
        await clients[0].execute("object-add", {"qom-type": "x-nvme-subsystem", "id": "s1"})
        await clients[0].execute("device_add", {"driver": "x-nvme-ctrl", "id": "d1", "subsys": "s1"})
        assert await clients[1].execute("qom-get", {"path": "/machine/peripheral/d1", "property": "serial"}) == "d1"
        path = await clients[2].execute("qom-get", {"path": "/machine/peripheral/d1", "property": "socket"})

        def vm_comes_and_goes() -> None:
            with VfioUserClient(timeout=5).connect(path) as vm:
                vm.negotiate()
        await asyncio.get_running_loop().run_in_executor(None, vm_comes_and_goes)
        vm = {"device": "d1", "socket": path, "pid": os.getpid()}
        for c in clients:
            for name, data in (("X_NVME_CLIENT_CONNECTED", vm),
                               ("X_NVME_CLIENT_DISCONNECTED", {**vm, "reason": "client closed the connection"})):
                event = await asyncio.wait_for(c.events.get(), 5)
                assert (event["event"], event["data"]) == (name, data)
        assert await clients[0].execute("device_del", {"id": "d1"}) == {}
        for c in clients:
            event = await asyncio.wait_for(c.events.get(), 5)
            assert event["event"] == "DEVICE_DELETED" and event["data"]["device"] == "d1"
        for c in clients:
            await c.disconnect()
    run(main())
    # Subscribers run on the monitor's loop thread, whichever thread published.
    assert seen == [(name, mon.thread) for name in
                    ("X_NVME_CLIENT_CONNECTED", "X_NVME_CLIENT_DISCONNECTED", "DEVICE_DELETED")]
