"""Malformed input over raw sockets: every bad input gets QEMU's error or a clean close,
and other clients never notice."""

from __future__ import annotations

import socket
import threading

import pytest

from nvshell.device.machine import Machine
from tests.qmp_helpers import MonitorThread, RawClient

GENERIC = "GenericError"


@pytest.fixture
def mon(tmp_path):
    m = MonitorThread(tmp_path, Machine(str(tmp_path)), max_message=1024 * 1024)
    yield m
    m.stop()


def err(desc: str, cls: str = GENERIC, **extra) -> dict:
    return {"error": {"class": cls, "desc": desc}, **extra}


def assert_alive(mon) -> None:
    c = RawClient(mon.unix_path)
    assert c.cmd("query-status") == {"return": {"running": True, "status": "running"}}
    c.close()


def test_negotiation_rules(mon):
    c = RawClient(mon.unix_path, negotiate=False)
    c.send(b'{"execute": "query-status", "id": "a"}')
    assert c.recv() == err("Expecting capabilities negotiation with 'qmp_capabilities'", "CommandNotFound", id="a")
    c.send(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["bogus"]}}')
    assert c.recv() == err("Parameter 'enable[0]' does not accept value 'bogus'")
    c.send(b'{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}')
    assert c.recv() == err("Capability 'oob' not available")
    c.send(b'{"execute": "qmp_capabilities", "id": {"x": [1]}}')
    assert c.recv() == {"return": {}, "id": {"x": [1]}}
    c.send(b'{"execute": "qmp_capabilities"}')
    assert c.recv() == err("Capabilities negotiation is already complete, command ignored", "CommandNotFound")


def test_no_events_before_negotiation(mon):
    early = RawClient(mon.unix_path, negotiate=False)
    ready = RawClient(mon.unix_path)
    mon.run(lambda: mon.ctx.events.emit("X_TEST", {"n": 1}))
    event = ready.recv()
    assert event["event"] == "X_TEST" and event["data"] == {"n": 1}
    early.send(b'{"execute": "qmp_capabilities"}')
    assert early.recv() == {"return": {}}  # not the event


def test_ids_echoed_exactly(mon):
    c = RawClient(mon.unix_path)
    for ident in (0, "s", [1, {"a": None}], None, 1.5, True):
        c.send({"execute": "query-status", "id": ident})
        assert c.recv() == {"return": {"running": True, "status": "running"}, "id": ident}
    c.send(b'{"execute": "query-status"}')
    assert "id" not in c.recv()


@pytest.mark.parametrize("data, reply", [
    (b'[1, 2]', err("QMP input must be a JSON object")),
    (b'"str" ', err("QMP input must be a JSON object")),
    (b'42 ', err("QMP input must be a JSON object")),
    (b'{"arguments": {}}', err("QMP input lacks member 'execute'")),
    (b'{"id": 7}', err("QMP input lacks member 'execute'", id=7)),
    (b'{"execute": 1, "id": 1}', err("QMP input member 'execute' must be a string", id=1)),
    (b'{"execute": "query-status", "foo": 1}', err("QMP input member 'foo' is unexpected")),
    (b'{"execute": "query-status", "arguments": [], "id": "x"}',
     err("QMP input member 'arguments' must be an object", id="x")),
    (b'{"execute": "object-del", "arguments": {"id": []}}', err("Invalid parameter type for 'id', expected: string")),
    (b'{"execute": "nope"}', err("The command nope has not been found", "CommandNotFound")),
])
def test_bad_requests(mon, data, reply):
    c = RawClient(mon.unix_path)
    c.send(data)
    assert c.recv() == reply
    assert c.cmd("query-status")["return"]["running"] is True


@pytest.mark.parametrize("data", [
    b'{"execute": }',
    b'{"execute": "query-status",}',
    b'{"a": NaN}',
    b'{"a": 1, "a": 2}',
    b'}',
    b'{"execute": "\xff\xfe"}',
    b'{"execute": "a\x01b"}',
])
def test_json_parse_errors(mon, data):
    c = RawClient(mon.unix_path)
    c.send(data + b"\n")
    reply = c.recv()
    assert set(reply) == {"error"}
    assert reply["error"]["class"] == GENERIC and reply["error"]["desc"].startswith("JSON parse error, ")
    assert c.cmd("query-status")["return"]["running"] is True


def test_streaming_without_newlines_and_split_messages(mon):
    c = RawClient(mon.unix_path)
    c.send(b'{"execute": "query-status", "id": 1}{"execute": "query-version", "id": "}\\"{"}')
    assert c.recv()["id"] == 1
    assert c.recv()["id"] == '}"{'
    msg = b'{"execute": "query-status", "id": "split", "arguments": {}}'
    for i in range(len(msg)):  # one byte at a time
        c.send(msg[i:i + 1])
    assert c.recv()["id"] == "split"
    c.send(b'\r\n  {"execute":\n"query-status"}\n')  # nc/socat style
    assert c.recv()["return"]["status"] == "running"


def test_binary_garbage_resyncs(mon):
    c = RawClient(mon.unix_path)
    c.send(bytes(range(256)) * 4 + b'\xff\x00 {"execute": "query-status", "id": "after"}')
    replies = []
    while True:
        reply = c.recv()
        replies.append(reply)
        if reply.get("id") == "after":
            break
    assert replies[-1]["return"]["running"] is True
    for reply in replies[:-1]:
        assert reply["error"]["desc"].startswith("JSON parse error, ") and "id" not in reply
    assert_alive(mon)


def test_deep_nesting(mon):
    c = RawClient(mon.unix_path)
    c.send(b"[" * 5000 + b"]" * 5000 + b'{"execute": "query-status", "id": 2}')
    reply = c.recv()
    assert reply["error"]["desc"].startswith("JSON parse error, ")
    assert c.recv()["id"] == 2


def test_huge_message_closes_only_that_client(mon):
    bystander = RawClient(mon.unix_path)
    c = RawClient(mon.unix_path)
    chunk = b"x" * 65536
    c.send(b'{"execute": "query-status", "arguments": {"a": "')
    try:
        for _ in range(20):  # 1.25 MiB > the 1 MiB limit of this server
            c.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = c.recv()
    assert reply["error"]["class"] == GENERIC and "exceeds" in reply["error"]["desc"]
    assert c.closed_by_peer()
    assert bystander.cmd("query-status")["return"]["running"] is True
    assert_alive(mon)


def test_disconnect_mid_command_harms_nobody(mon):
    gate = threading.Event()

    async def slow(ctx, args):
        import asyncio
        gate.set()
        await asyncio.sleep(0.2)
        return {"done": True}
    mon.ctx.registry.command("x-test-slow")(slow)
    try:
        other = RawClient(mon.unix_path)
        c = RawClient(mon.unix_path)
        c.send(b'{"execute": "x-test-slow"}')
        assert gate.wait(5)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()  # RST while the command runs
        assert other.cmd("x-test-slow") == {"return": {"done": True}}
        assert_alive(mon)
    finally:
        mon.ctx.registry.unregister("x-test-slow")


def test_tcp_client_garbage_and_many_clients(mon):
    clients = [RawClient(mon.tcp) for _ in range(8)] + [RawClient(mon.unix_path) for _ in range(8)]
    clients[0].send(b"\x00\x01garbage{{{")
    clients[0].close()
    for i, c in enumerate(clients[1:]):
        c.send({"execute": "query-status", "id": i})
    for i, c in enumerate(clients[1:]):
        assert c.recv()["id"] == i
    mon.run(lambda: mon.ctx.events.emit("X_TEST"))
    for c in clients[1:]:
        assert c.recv()["event"] == "X_TEST"
