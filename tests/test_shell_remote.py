"""The remote shell (``--connect``) against a real QMP server in the same loop."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from nvshell.device import trace as T
from nvshell.device.machine import Machine
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.qmp.server import QMPServer
from nvshell.completion import HMPCompleter
from nvshell.remote import RemoteBackend, connect, parse_address, run_remote
from tests.qmp_helpers import trace_registry


def test_parse_address() -> None:
    assert parse_address("unix:/run/q.sock") == "/run/q.sock"
    assert parse_address("unix:/run/q.sock,server=on") == "/run/q.sock"
    assert parse_address("tcp:localhost:4444") == ("localhost", 4444)
    assert parse_address("/tmp/x.sock") == "/tmp/x.sock"
    for bad in ("tcp:host", "foo", "unix:"):
        with pytest.raises(ValueError):
            parse_address(bad)


async def serving(tmp_path: Any, body: Any) -> Any:
    machine = Machine(str(tmp_path))
    ctx = MonitorContext(machine=machine, trace=trace_registry(T.NVME_CMD_SUBMIT))
    server = QMPServer(ctx)
    path = str(tmp_path / "qmp.sock")
    await server.listen_unix(path)
    try:
        return await body(f"unix:{path}")
    finally:
        await server.close()
        machine.shutdown()


def test_remote_script_and_errors(tmp_path: Any) -> None:
    out = io.StringIO()
    script = io.StringIO("object_add x-nvme-subsystem,id=subsys0\n"
                         "object_add x-nvme-ns-nvm,id=ns1,size=1M\n"
                         "info qom-tree /objects\n"
                         "nosuch\n"
                         "info status\n")

    async def body(address: str) -> int:
        return await run_remote(address, stream=script, out=out, keep_going=True)

    assert asyncio.run(serving(tmp_path, body)) == 1
    assert out.getvalue() == "/objects (container)\n  /ns1 (x-nvme-ns-nvm)\n  /subsys0 (x-nvme-subsystem)\n" \
                             "VM status: running\n"


def test_remote_backend_completion_and_quit(tmp_path: Any) -> None:
    async def body(address: str) -> tuple[list[str], list[str], list[str], bool]:
        client = await connect(address)
        try:
            backend = RemoteBackend(client)
            assert (await backend.execute("object_add x-nvme-subsystem,id=subsys0")).ok
            completer = HMPCompleter(backend.query)
            names = [c.text for c in await completer.completions("object_add x-nvme-ns-nvm,id=n,lba")]
            ids = [c.text for c in await completer.completions("object_del s")]
            enum = [c.text for c in await completer.completions("object_add x-nvme-ns-nvm,backend=")]
            quit_ = await backend.execute("quit")
            still = (await backend.execute("info status")).text
            assert still == "VM status: running\n"
            return names, ids, enum, quit_.quit
        finally:
            await client.disconnect()

    names, ids, enum, quit_ = asyncio.run(serving(tmp_path, body))
    assert names == ["lba-size="]
    assert ids == ["subsys0"]
    assert enum == ["memory", "file", "null"]
    assert quit_


def test_remote_connect_failure(tmp_path: Any, capsys: Any) -> None:
    assert asyncio.run(run_remote(f"unix:{tmp_path}/none.sock", stream=io.StringIO(""))) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_remote_interactive_shell(tmp_path: Any) -> None:
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    out = io.StringIO()

    async def body(address: str) -> int:
        with create_pipe_input() as inp:
            inp.send_text("info status\rbogus\rquit\r")
            return await run_remote(address, interactive=True, input=inp, output=DummyOutput(), out=out,
                                    history_file=tmp_path / "hist")

    assert asyncio.run(serving(tmp_path, body)) == 0
    assert out.getvalue() == "VM status: running\nError: unknown command: 'bogus'\n"
