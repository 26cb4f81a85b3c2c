"""The shell: completion, script mode exit codes, the prompt_toolkit loop in-process."""

from __future__ import annotations

import asyncio
import io
from typing import Any, Iterator

import pytest

from nvshell.device import trace as T
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.hmp import HMPResult
from nvshell.completion import HMPCompleter, tokenize
from nvshell.device.machine import Machine, default_topology
from nvshell.shell import LocalBackend, format_toolbar, run_script, script_loop, shell_loop
from tests.qmp_helpers import trace_registry

# -- the completer against a real machine's monitor ------------------------------------


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """The shell's own backend over the real monitor of a real Machine holding the
    default topology (subsys0, ctrl0, ns1): completion sees the real types, properties,
    objects, QOM tree and trace points."""
    machine = Machine(str(tmp_path_factory.mktemp("shell")))
    default_topology(machine)
    yield LocalBackend(MonitorContext(machine=machine))
    machine.shutdown()


async def complete(backend: LocalBackend, text: str) -> list[str]:
    return [c.text for c in await HMPCompleter(backend.query).completions(text)]


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
    ("object_add x-nvme-ns-nvm,id=ns2,s", ["subsys=", "size="]),
    ("object_add x-nvme-ns-nvm,size=1G,s", ["subsys="]),
    ("object_add x-nvme-ns-nvm,id=ns2,subsys=", ["ns1", "subsys0", "ctrl0"]),
    ("device_add x-nvme-ctrl,ocp=o", ["on", "off"]),
    ("device_add x-nvme-ctrl,doorbells=", ["trap", "mmap"]),
    ("object_del ", ["ns1", "subsys0"]),
    ("device_del c", ["ctrl0"]),
    ("info queues ", ["ctrl0"]),
    ("qom-list /ob", ["/objects"]),
    ("qom-list /objects/n", ["/objects/ns1"]),
    ("qom-get /objects/ns1 lb", ["lba-size"]),
    ("qom-set /objects/ns1 attached-to ", ["all", "ctrl0"]),
    ("qom-set /objects/ns1 ready ", []),                 # read-only at run time: nothing to offer
    ("trace-event nvme_cmd_c", ["nvme_cmd_complete"]),
    ("trace-event nvme_cmd_submit o", ["on", "off"]),
    ("info trace-events nvme_cmd_s", ["nvme_cmd_submit"]),
    ("nosuch x", []),
    ("quit ", []),
])
def test_completion(backend: LocalBackend, text: str, expected: list[str]) -> None:
    assert run(complete(backend, text)) == expected


def test_completion_never_raises_on_query_errors() -> None:
    async def broken(name: str, args: dict[str, Any]) -> Any:
        raise RuntimeError("monitor gone")

    assert run(HMPCompleter(broken).completions("object_del ")) == []
    assert [c.text for c in run(HMPCompleter(broken).completions("qu"))] == ["quit"]


def test_completion_meta_shows_help(backend: LocalBackend) -> None:
    (c,) = run(HMPCompleter(backend.query).completions("qui"))
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


class RecordingBackend(LocalBackend):
    """The real local backend (a real Machine's monitor), remembering the lines it ran."""

    def __init__(self, machine: Machine) -> None:
        super().__init__(MonitorContext(machine=machine))
        self.lines: list[str] = []

    async def execute(self, line: str) -> HMPResult:
        self.lines.append(line)
        return await super().execute(line)


#: Keys to type, and the line the prompt must show before the next keys are typed
#: (None: type on at once; the pipe keeps what the prompt has not read yet).
Keys = list[tuple[str, "str | None"]]


def drive(keys: str | Keys, tmp_path: Any) -> tuple[int, RecordingBackend, str]:
    """Type ``keys`` into the interactive loop over a real Machine's monitor."""
    from prompt_toolkit.application.current import get_app_or_none
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output import DummyOutput

    machine = Machine(str(tmp_path))
    default_topology(machine)
    backend = RecordingBackend(machine)
    out = io.StringIO()

    async def go() -> int:
        loop = asyncio.get_running_loop()
        with create_pipe_input() as inp:
            chunks: Keys = [(keys, None)] if isinstance(keys, str) else keys

            async def typist() -> None:
                for text, shown in chunks:
                    inp.send_text(text)
                    deadline = loop.time() + 5
                    while shown is not None and ((app := get_app_or_none()) is None
                                                 or app.current_buffer.text != shown):
                        assert loop.time() < deadline, f"the prompt never showed {shown!r}"
                        await asyncio.sleep(0.005)

            task = asyncio.ensure_future(typist())
            rc = await shell_loop(backend, history_file=tmp_path / "hist", input=inp, output=DummyOutput(), out=out)
            await task
            return rc

    try:
        return run(go()), backend, out.getvalue()
    finally:
        machine.shutdown()


def test_shell_runs_lines_in_order_and_quits(tmp_path: Any) -> None:
    rc, backend, out = drive("info status\robject_del nosuch\rhelp\rquit\rnever\r", tmp_path)
    assert rc == 0
    assert backend.lines == ["info status", "object_del nosuch", "help", "quit"]
    assert out.startswith("VM status: running\nError: object 'nosuch' not found\n")
    assert "device_add" in out and "never" not in out
    assert (tmp_path / "hist").read_text().count("+info status") == 1


def test_shell_ctrl_c_cancels_line_ctrl_d_exits(tmp_path: Any) -> None:
    rc, backend, out = drive("half typed\x03info status\r\x04", tmp_path)
    assert rc == 0
    assert backend.lines == ["info status"]


def test_shell_tab_completes_command(tmp_path: Any) -> None:
    rc, backend, _ = drive([("info qt\t", "info qtree"), ("\r", None), ("\x04", None)], tmp_path)
    assert backend.lines == ["info qtree"]


def test_shell_tab_completes_fault_opcodes_from_the_one_vocabulary(tmp_path: Any) -> None:
    """Tab after ``opcode=`` offers the command tables' names, for the queue kind typed
    (``queue=``, or ``qid=0``: admin); the completed line then adds that rule."""
    from nvshell.device.nvme.spec import AdminOpcode, NvmOpcode

    lines = ["fault_add id=f1,queue=admin,opcode=namespace-management", "fault_add id=f2,qid=0,opcode=identify",
             "fault_add id=f3,opcode=zone-append"]
    typed = ["fault_add id=f1,queue=admin,opcode=namespace-m\t", "fault_add id=f2,qid=0,opcode=ide\t",
             "fault_add id=f3,opcode=zone-app\t"]
    keys: Keys = [k for text, line in zip(typed, lines) for k in ((text, line), ("\r", None))] + [("\x04", None)]
    rc, backend, out = drive(keys, tmp_path)
    assert rc == 0 and backend.lines == lines, out
    rules = {r.id: (r.queue_kind, r.opcode) for r in backend.ctx.machine.faults}
    assert rules == {"f1": ("admin", AdminOpcode.NAMESPACE_MANAGEMENT), "f2": ("admin", AdminOpcode.IDENTIFY),
                     "f3": ("io", NvmOpcode.ZONE_APPEND)}, out


def test_toolbar_text() -> None:
    assert format_toolbar([{"id": "ctrl0", "connected": True}, {"id": "c1"}], 2, 1520.4) == \
        " ctrl0: connected | c1: waiting | 2 namespaces | 1520 IOPS"
    assert format_toolbar([], 1, 0) == " no controllers | 1 namespace | 0 IOPS"
