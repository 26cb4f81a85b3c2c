"""Unit tests of the monitor's pieces: addresses, framing, registry, events, server sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading

import pytest

from nvshell.monitor.context import MonitorContext
from nvshell.monitor.errors import AddressError, QMPError
from nvshell.monitor.events import EventBus
from nvshell.monitor.qmp.address import QMPAddress, parse_qmp_address
from nvshell.monitor.qmp.parser import JSONStreamParser, Message, ParseError
from nvshell.monitor.qmp.server import QMPServer
from nvshell.monitor.registry import Arg, Enum, Registry, Struct


@pytest.mark.parametrize("text, expected", [
    ("unix:/run/qmp.sock,server=on,wait=off", QMPAddress("unix", path="/run/qmp.sock")),
    ("unix:/a,,b,server,nowait", QMPAddress("unix", path="/a,b")),
    ("tcp:127.0.0.1:4444,server=on,wait=off", QMPAddress("tcp", host="127.0.0.1", port=4444)),
    ("tcp:[::1]:0,server=on", QMPAddress("tcp", host="::1", port=0)),
    ("tcp::5555,server=on,wait=off", QMPAddress("tcp", host=None, port=5555)),
])
def test_parse_qmp_address(text, expected):
    assert parse_qmp_address(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty address"), ("stdio", "expected unix:PATH"), ("unix:", "missing socket path"),
    ("tcp:host", "expected tcp:HOST:PORT"), ("tcp:h:99999", "out of range"), ("tcp:h:x", "not a number"),
    ("unix:/x,server=off", "server=off"), ("unix:/x,wait=on", "wait=on"), ("unix:/x,foo=1", "unknown option"),
    ("udp:h:1", "unsupported backend"),
])
def test_parse_qmp_address_errors(text, message):
    with pytest.raises(AddressError, match=message):
        parse_qmp_address(text)


def test_parser_every_split_point():
    data = b'{"execute": "a\\\\\\"b", "arguments": {"x": [1, {"y": "}]"}]}} [2] "s" 3 '
    expected = [{"execute": 'a\\"b', "arguments": {"x": [1, {"y": "}]"}]}}, [2], "s", 3]
    for cut in range(len(data) + 1):
        p = JSONStreamParser()
        items = p.feed(data[:cut]) + p.feed(data[cut:])
        assert [i.value for i in items if isinstance(i, Message)] == expected, cut
        assert not [i for i in items if isinstance(i, ParseError)]


def test_parser_limits():
    p = JSONStreamParser(max_size=100)
    assert p.feed(b'{"a": "' + b"x" * 50) == []
    items = p.feed(b"x" * 60)
    assert len(items) == 1 and items[0].fatal
    assert p.feed(b'"}{"a": 1}') == []  # nothing after a fatal error
    p = JSONStreamParser(max_depth=4)
    items = p.feed(b'[[[[[[1]]]]]] {"ok": true}')
    assert isinstance(items[0], ParseError) and "nesting" in items[0].desc
    assert items[1] == Message({"ok": True})


def test_registry_declarations_and_errors():
    reg = Registry()
    color = Enum("Color", ("red", "blue"))

    @reg.command("x-paint", args=[Arg("color", color), Arg("sizes", ["size"], optional=True),
                                  Arg("opts", Struct("Opts", (Arg("n", "int"),)), optional=True),
                                  Arg("blob", "dict", optional=True), Arg("ratio", "number", optional=True)],
                 returns=["str"])
    def paint(ctx, args):
        return [args["color"]]

    assert reg.execute_sync("x-paint", {"color": "red", "ratio": 1.5, "opts": {"n": 1}}, None) == ["red"]
    cases = [
        ({"color": "green"}, "Parameter 'color' does not accept value 'green'"),
        ({"color": "red", "sizes": [1, -1]}, "Invalid parameter type for 'sizes[1]', expected: size"),
        ({"color": "red", "opts": {}}, "Parameter 'opts.n' is missing"),
        ({"color": "red", "opts": {"n": 1, "m": 2}}, "Parameter 'opts.m' is unexpected"),
        ({"color": "red", "opts": {"n": True}}, "Invalid parameter type for 'opts.n', expected: integer"),
        ({"color": "red", "blob": []}, "Invalid parameter type for 'blob', expected: object"),
        ({"color": "red", "ratio": "1"}, "Invalid parameter type for 'ratio', expected: number"),
    ]
    for args, desc in cases:
        with pytest.raises(QMPError) as info:
            reg.execute_sync("x-paint", args, None)
        assert info.value.desc == desc and info.value.error_class == "GenericError"
    with pytest.raises(ValueError):
        reg.command("x-bad", args=[Arg("a", "float")])(paint)
    with pytest.raises(ValueError):
        reg.command("x-paint")(lambda ctx, args: None)  # a different handler under the same name
    schema = {e["name"]: e for e in reg.schema()}
    arg_type = schema[schema["x-paint"]["arg-type"]]
    assert [m["name"] for m in arg_type["members"]] == ["color", "sizes", "opts", "blob", "ratio"]
    assert schema[arg_type["members"][0]["type"]]["values"] == ["red", "blue"]
    assert schema["x-paint"]["ret-type"] == "[str]"


def test_flattened_commands_take_scalars_for_strings():
    reg = Registry()
    seen = {}

    @reg.command("x-add", args=[Arg("id", "str", optional=True)], flatten=True)
    def add(ctx, args):
        seen.update(args)

    reg.execute_sync("x-add", {"id": 7, "flag": True, "size": 4096}, None)
    assert seen == {"id": "7", "flag": True, "size": 4096}


def test_handler_exceptions_become_errors():
    from nvshell.device.errors import ObjectNotFound
    reg = Registry()

    @reg.command("x-boom")
    def boom(ctx, args):
        raise ZeroDivisionError("x")

    @reg.command("x-missing")
    def missing(ctx, args):
        raise ObjectNotFound("Device 'q' not found")

    with pytest.raises(QMPError, match="internal error: ZeroDivisionError"):
        reg.execute_sync("x-boom", {}, None)
    with pytest.raises(QMPError) as info:
        reg.execute_sync("x-missing", {}, None)
    assert info.value.error_class == "DeviceNotFound"


def test_event_bus_marshals_to_loop_thread():
    async def main() -> None:
        bus = EventBus()
        bus.attach_loop(asyncio.get_running_loop())
        got: list = []
        threads: list = []
        done = asyncio.Event()

        def cb(event):
            got.append(event)
            threads.append(threading.current_thread())
            if len(got) == 2:
                done.set()
        unsubscribe = bus.subscribe(cb)
        bus.subscribe(lambda e: 1 / 0)  # a broken subscriber harms nobody
        t = threading.Thread(target=lambda: (bus.emit("A", {"x": 1}), bus.emit("B")))
        t.start()
        t.join()
        await asyncio.wait_for(done.wait(), 5)
        assert [e["event"] for e in got] == ["A", "B"] and got[1]["data"] == {}
        assert threads == [threading.current_thread()] * 2
        unsubscribe()
        marks = asyncio.Event()
        bus.subscribe(lambda e: marks.set() if e["event"] == "D" else None)
        bus.emit("C")
        bus.emit("D")                   # delivered in order: once D is here, C was too
        await asyncio.wait_for(marks.wait(), 5)
        assert len(got) == 2
    asyncio.run(main())


def test_unix_socket_permissions_stale_socket_and_close(tmp_path):
    path = str(tmp_path / "qmp.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()

    async def main() -> None:
        server = QMPServer(MonitorContext(trace=None))
        await server.listen(parse_qmp_address(f"unix:{path},server=on,wait=off"))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert server.describe() == f"unix:{path}"
        reader, writer = await asyncio.open_unix_connection(path)
        assert b'"QMP"' in await reader.readline()
        await server.close()
        assert await reader.read() == b""
        writer.close()
        assert not os.path.exists(path)
        assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    asyncio.run(main())


def test_refuses_to_replace_a_regular_file(tmp_path):
    path = tmp_path / "qmp.sock"
    path.write_text("precious")

    async def main() -> None:
        server = QMPServer(MonitorContext(trace=None))
        with pytest.raises(Exception, match="not a socket"):
            await server.listen_unix(str(path))
        await server.close()
    asyncio.run(main())
    assert path.read_text() == "precious"
