"""Hostile QMP clients: regression tests for issue 13's monitor findings, raw bytes
over the real socket."""

from __future__ import annotations

import gc
import logging
import time

import pytest

from nvshell.monitor.qmp import session as S
from nvshell.device.machine import Machine
from nvshell.testing import wait_until
from tests.qmp_helpers import MonitorThread, RawClient


@pytest.fixture
def mon(tmp_path):
    m = MonitorThread(tmp_path, Machine(str(tmp_path)), max_message=1024 * 1024)
    yield m
    m.stop()


def alive(mon) -> None:
    c = RawClient(mon.unix_path)
    assert c.cmd("query-status")["return"]["running"] is True
    c.close()


def test_an_infinite_id_is_a_parse_error_not_a_dead_session(mon, caplog):
    caplog.set_level(logging.INFO)
    c = RawClient(mon.unix_path)
    for number in (b"1e400", b"-1e400", b"1E999"):
        c.send(b'{"execute": "query-status", "id": ' + number + b'}')
        reply = c.recv()
        assert set(reply) == {"error"} and "out of range" in reply["error"]["desc"], reply
    c.send(b'{"execute": "query-status", "id": 1e300}')
    assert c.recv()["id"] == 1e300
    assert c.cmd("query-status")["return"]["running"] is True
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_an_arrow_key_resets_the_lexer(mon):
    c = RawClient(mon.unix_path)
    c.send(b'\x1b[A\n{"execute": "query-status", "id": 1}\n')
    replies = [c.recv() for _ in range(3)]
    assert [set(r) for r in replies[:2]] == [{"error"}, {"error"}]
    assert replies[2]["id"] == 1 and replies[2]["return"]["running"] is True
    # inside a string too: a control character ends the broken message (QEMU's lexer)
    c.send(b'{"execute": "query-st\x1b[D\x1b[Datus"}\n{"execute": "query-status", "id": 2}\n')
    while True:
        reply = c.recv()
        if "id" in reply:
            break
        assert set(reply) == {"error"}
    assert reply["id"] == 2 and reply["return"]["running"] is True
    # even right after a backslash (found by the QMP fuzzer: the escape swallowed the reset)
    c.send(b'{"execute": "query-status", "id": "\\\x01{"execute": "query-status", "id": 3}')
    reply = c.recv()
    assert set(reply) == {"error"}, reply
    assert c.recv()["id"] == 3
    # exponents still parse (upper-case E after a digit)
    c.send(b'{"execute": "query-status", "id": [1E2, 2.5E-1]}')
    assert c.recv()["id"] == [100.0, 0.25]


def test_closed_sessions_free_their_partial_messages_without_a_gc_pass(mon):
    gc.collect()
    gc.disable()
    try:
        clients = [RawClient(mon.unix_path) for _ in range(5)]
        for c in clients:
            c.send(b'{"execute": "query-status", "arguments": {"x": "' + b"a" * 900_000)
        deadline = time.monotonic() + 5
        while mon.run(lambda: sum(s.parser.pending for s in mon.server.sessions)) < 5 * 900_000:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for c in clients:
            c.close()
        while mon.run(lambda: len(mon.server.sessions)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        held = mon.run(lambda: [o.parser.pending for o in gc.get_objects() if isinstance(o, S.QMPSession)])
        assert sum(held) == 0, held
        assert mon.run(lambda: S.QMPSession.input_total) == 0
    finally:
        gc.enable()
    alive(mon)


def test_unfinished_input_is_bounded_over_all_sessions(mon, monkeypatch, caplog):
    monkeypatch.setattr(S, "MAX_TOTAL_INPUT", 3 * 1024 * 1024)
    clients = [RawClient(mon.unix_path) for _ in range(4)]
    for i, c in enumerate(clients[:3]):
        c.send(b'{"x": "' + b"a" * 900_000)
        deadline = time.monotonic() + 5
        while mon.run(lambda: S.QMPSession.input_total) < (i + 1) * 900_000:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    try:
        clients[3].send(b'{"x": "' + b"a" * 900_000)
        reply = clients[3].recv()  # may be lost to a reset: the server closed with input unread
        assert "unfinished input" in reply["error"]["desc"], reply
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass
    assert clients[3].closed_by_peer()
    assert "unfinished input of all clients exceeds" in caplog.text
    for c in clients[:3]:
        c.send(b'"}')
        assert set(c.recv()) == {"error"}  # the finished message is answered (no 'execute')
        assert c.cmd("query-status")["return"]["running"] is True
    assert mon.run(lambda: S.QMPSession.input_total) == 0
    alive(mon)


def test_replies_to_a_client_that_does_not_read_are_flow_controlled(mon):
    c = RawClient(mon.unix_path)
    command = b'{"execute": "query-commands"}'
    chunk = command * (65536 // len(command))
    count = 65536 // len(command)
    c.sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and sent < 4 * len(chunk):
        try:
            sent += c.sock.send(chunk[sent % len(chunk):])
        except BlockingIOError:
            time.sleep(0.05)
    # The loop thread only sees the session where it waits: for input, or (flow control) for the
    # client to read.  The first time its queued output reaches the mark it must be waiting there,
    # one reply past it; without flow control a whole read's worth of replies would be queued.
    def at_the_mark() -> int:
        queued = mon.run(lambda: max(s._output_queued() for s in mon.server.sessions))
        return queued if queued >= S.OUTPUT_HIGH_WATER else 0
    queued = wait_until(at_the_mark, 5, "the session's output reached the high-water mark")
    assert queued <= S.OUTPUT_HIGH_WATER + 256 * 1024, queued
    c.sock.setblocking(True)
    c.sock.settimeout(10)
    got = 0
    total = sent // len(command)
    while got < total:
        assert "return" in c.recv()
        got += 1
    assert got >= count
    alive(mon)


def test_a_stuck_iothread_costs_a_clear_error_not_a_silent_monitor(tmp_path, monkeypatch):
    import threading

    from nvshell.cmdline import default_topology
    from nvshell.device import iothread as IOT
    from nvshell.device.machine import Machine

    machine = Machine(str(tmp_path))
    default_topology(machine)
    mon = MonitorThread(tmp_path, machine)
    release = threading.Event()
    try:
        c = RawClient(mon.unix_path)
        assert c.cmd("x-nvme-query-queues")["return"][0]["device"] == "ctrl0"
        monkeypatch.setattr(IOT, "CALL_TIMEOUT", 0.5)
        machine.lookup_device("ctrl0").iothread.call_soon(lambda: release.wait(10))  # wedge it
        t0 = time.monotonic()
        reply = c.cmd("x-nvme-query-queues")
        assert time.monotonic() - t0 < 3
        assert reply["error"]["class"] == "GenericError"
        assert "did not answer within 0.5 s" in reply["error"]["desc"], reply
        assert c.cmd("query-status")["return"]["running"] is True  # the monitor goes on
        release.set()
        monkeypatch.setattr(IOT, "CALL_TIMEOUT", 10.0)
        assert c.cmd("x-nvme-query-queues")["return"][0]["device"] == "ctrl0"
        c.close()
    finally:
        release.set()
        mon.stop()


def test_a_number_argument_beyond_a_double_is_a_type_error(tmp_path):
    """Found by the QMP fuzzer: x-nvme-query-iostat interval=10**300 raised OverflowError inside."""
    from nvshell.device.machine import Machine, default_topology
    machine = Machine(str(tmp_path))
    default_topology(machine)
    mon = MonitorThread(tmp_path, machine)
    try:
        c = RawClient(mon.unix_path)
        c.send(b'{"execute": "x-nvme-query-iostat", "arguments": {"interval": 1' + b"0" * 400 + b'}}')
        reply = c.recv()
        assert reply["error"]["class"] == "GenericError" and "'interval'" in reply["error"]["desc"], reply
        assert c.cmd("query-status")["return"]["running"] is True
        c.close()
    finally:
        mon.stop()
