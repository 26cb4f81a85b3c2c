"""The shell: completion, script mode exit codes, the prompt_toolkit loop in-process."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from nvshell.device import trace as T
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.hmp import HMPResult
from nvshell.completion import HMPCompleter, tokenize
from nvshell.shell import format_toolbar, run_script, script_loop, shell_loop
from tests.qmp_helpers import trace_registry

# -- a canned QMP world for the completer ----------------------------------------------

QOM = {
    "/": [{"name": "type", "type": "string"}, {"name": "objects", "type": "child<container>"},
          {"name": "machine", "type": "child<container>"}],
    "/objects": [{"name": "subsys0", "type": "child<x-nvme-subsystem>"}, {"name": "ns1", "type": "child<x-nvme-ns-nvm>"}],
    "/objects/ns1": [{"name": "type", "type": "string"}, {"name": "lba-size", "type": "uint32"},
                     {"name": "ready", "type": "bool"}, {"name": "subsys", "type": "link<x-nvme-subsystem>"}],
    "/machine": [{"name": "peripheral", "type": "child<container>"}],
    "/machine/peripheral": [{"name": "ctrl0", "type": "child<x-nvme-ctrl>"}],
}
TYPES = {"device": [{"name": "x-nvme-ctrl"}],
         "user-creatable": [{"name": "x-nvme-subsystem"}, {"name": "x-nvme-ns-nvm"}, {"name": "x-nvme-ns-zoned"}]}
PROPS = {"x-nvme-ns-nvm": [{"name": "size", "type": "size"}, {"name": "lba-size", "type": "uint32"},
                           {"name": "subsys", "type": "link<x-nvme-subsystem>"}, {"name": "shared", "type": "bool"}],
         "x-nvme-ctrl": [{"name": "serial", "type": "str"}, {"name": "subsys", "type": "link<x-nvme-subsystem>"},
                         {"name": "doorbells", "type": "str", "enum": ["mmap", "trap"]}]}


async def fake_query(name: str, args: dict[str, Any]) -> Any:
    if name == "qom-list":
        return QOM[args["path"]]
    if name == "qom-list-types":
        return TYPES.get(args.get("implements"), [])
    if name in ("qom-list-properties", "device-list-properties"):
        return PROPS[args["typename"]]
    if name == "trace-event-get-state":
        return [{"name": T.NVME_CMD_COMPLETE.name, "state": "disabled"}, {"name": T.NVME_CMD_SUBMIT.name, "state": "enabled"}]
    raise KeyError(name)


async def complete(text: str) -> list[str]:
    return [c.text for c in await HMPCompleter(fake_query).completions(text)]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_tokenize() -> None:
    assert tokenize("") == ([], "")
    assert tokenize("info q") == (["info"], "q")
    assert tokenize("info ") == (["info"], "")
    assert tokenize('qom-get "/a b" x') == (["qom-get", "/a b"], "x")


@pytest.mark.parametrize("text, expected", [
    ("in", ["info"]),
    ("qom-", ["qom-list", "qom-get", "qom-set"]),
    ("info q", ["qtree", "qom-tree", "queues"]),
    ("help dev", ["device_add", "device_del"]),
    ("object_add x-nvme-ns", ["x-nvme-ns-nvm", "x-nvme-ns-zoned"]),
    ("object_add h", ["help"]),
    ("device_add x", ["x-nvme-ctrl"]),
    ("object_add x-nvme-ns-nvm,id=ns2,lba", ["lba-size="]),
    ("object_add x-nvme-ns-nvm,id=ns2,s", ["size=", "subsys=", "shared="]),
    ("object_add x-nvme-ns-nvm,size=1G,s", ["subsys=", "shared="]),
    ("object_add x-nvme-ns-nvm,id=ns2,subsys=", ["ns1", "subsys0", "ctrl0"]),
    ("object_add x-nvme-ns-nvm,id=ns2,shared=o", ["on", "off"]),
    ("device_add x-nvme-ctrl,doorbells=", ["mmap", "trap"]),
    ("object_del ", ["ns1", "subsys0"]),
    ("device_del c", ["ctrl0"]),
    ("info queues ", ["ctrl0"]),
    ("qom-list /ob", ["/objects"]),
    ("qom-list /objects/n", ["/objects/ns1"]),
    ("qom-get /objects/ns1 lb", ["lba-size"]),
    ("qom-set /objects/ns1 ready ", ["on", "off"]),
    ("trace-event nvme_cmd_c", ["nvme_cmd_complete"]),
    ("trace-event nvme_cmd_submit o", ["on", "off"]),
    ("info trace-events nvme_cmd_s", ["nvme_cmd_submit"]),
    ("nosuch x", []),
    ("quit ", []),
])
def test_completion(text: str, expected: list[str]) -> None:
    assert run(complete(text)) == expected


def test_completion_never_raises_on_query_errors() -> None:
    async def broken(name: str, args: dict[str, Any]) -> Any:
        raise RuntimeError("monitor gone")

    assert run(HMPCompleter(broken).completions("object_del ")) == []
    assert [c.text for c in run(HMPCompleter(broken).completions("qu"))] == ["quit"]


def test_completion_meta_shows_help() -> None:
    (c,) = run(HMPCompleter(fake_query).completions("qui"))
    assert "quit" in c.display_meta_text


# -- script mode -----------------------------------------------------------------------


def ctx() -> MonitorContext:
    return MonitorContext(trace=trace_registry(T.NVME_CMD_SUBMIT, T.NVME_CMD_COMPLETE))


def script(text: str, **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    async def go() -> int:
        return await run_script(ctx(), io.StringIO(text), out=out, err=err, **kw)

    rc = run(go())
    return rc, out.getvalue(), err.getvalue()


def test_script_ok() -> None:
    rc, out, err = script("# a comment\n\ninfo status\n  trace-event nvme_cmd_submit on\ninfo trace-events nvme_cmd_s*\n")
    assert (rc, err) == (0, "")
    assert out == "VM status: running\nnvme_cmd_submit : state 1\n"


def test_script_stops_at_first_error() -> None:
    rc, out, err = script("info status\nbogus\ninfo status\n")
    assert rc == 1
    assert out == "VM status: running\n"
    assert err == "Error: unknown command: 'bogus'\n"


def test_script_keep_going_runs_everything_but_fails() -> None:
    rc, out, err = script("bogus\ninfo status\n", keep_going=True)
    assert rc == 1
    assert out == "VM status: running\n"
    assert err == "Error: unknown command: 'bogus'\n"


def test_script_quit_ends_early() -> None:
    rc, out, _ = script("quit\ninfo status\n")
    assert (rc, out) == (0, "")


# -- the interactive loop, in-process ---------------------------------------------------


class RecordingBackend:
    """Counts lines and lets the test inject events."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.callback: Any = None

    async def execute(self, line: str) -> HMPResult:
        self.lines.append(line)
        if line == "quit":
            return HMPResult("", True, True)
        if line == "fail":
            return HMPResult("Error: nope\n", False)
        return HMPResult(f"ran {line}\n")

    async def query(self, name: str, args: dict[str, Any]) -> Any:
        if name == "x-nvme-query-controllers":
            return [{"id": "ctrl0", "connected": True, "io-commands": 10}]
        if name == "x-nvme-query-namespaces":
            return [{"id": "ns1"}]
        return await fake_query(name, args)

    def subscribe(self, callback: Any) -> Any:
        self.callback = callback
        return lambda: None


def drive(keys: str | list[str], tmp_path: Any) -> tuple[int, RecordingBackend, str]:
    """Type ``keys`` (a list: chunks typed 0.2 s apart, e.g. to let a completion land)."""
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    backend = RecordingBackend()
    out = io.StringIO()

    async def go() -> int:
        with create_pipe_input() as inp:
            chunks = [keys] if isinstance(keys, str) else keys

            async def typist() -> None:
                for chunk in chunks:
                    inp.send_text(chunk)
                    await asyncio.sleep(0.2)

            task = asyncio.ensure_future(typist())
            rc = await shell_loop(backend, history_file=tmp_path / "hist", input=inp, output=DummyOutput(), out=out)
            await task
            return rc

    return run(go()), backend, out.getvalue()


def test_shell_runs_lines_in_order_and_quits(tmp_path: Any) -> None:
    rc, backend, out = drive("info status\rfail\rhelp\rquit\rnever\r", tmp_path)
    assert rc == 0
    assert backend.lines == ["info status", "fail", "help", "quit"]
    assert out == "ran info status\nError: nope\nran help\n"
    assert (tmp_path / "hist").read_text().count("+info status") == 1


def test_shell_ctrl_c_cancels_line_ctrl_d_exits(tmp_path: Any) -> None:
    rc, backend, out = drive("half typed\x03info status\r\x04", tmp_path)
    assert rc == 0
    assert backend.lines == ["info status"]


def test_shell_tab_completes_command(tmp_path: Any) -> None:
    rc, backend, _ = drive(["info qt\t", "\r", "\x04"], tmp_path)
    assert backend.lines == ["info qtree"]


def test_toolbar_text() -> None:
    assert format_toolbar([{"id": "ctrl0", "connected": True}, {"id": "c1"}], 2, 1520.4) == \
        " ctrl0: connected | c1: waiting | 2 namespaces | 1520 IOPS"
    assert format_toolbar([], 1, 0) == " no controllers | 1 namespace | 0 IOPS"
