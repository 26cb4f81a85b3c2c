"""HMP commands against a real Machine (temp run_dir), through the same entry points the
shell (``execute_line``) and QMP ``human-monitor-command`` (``run_hmp``) use."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from nvshell.device import trace as T
from nvshell.device.machine import Machine
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.hmp import HMPError, HMPResult, execute_line, run_hmp, split_word
from tests.qmp_helpers import trace_registry


SUBSYS = "object_add x-nvme-subsystem,id=subsys0,subnqn=nqn.2024-01.io.nvshell:s0," \
         "uuid=11111111-2222-3333-4444-555555555555"
NS1 = "object_add x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1M,attached-to=all," \
      "uuid=11111111-2222-3333-4444-000000000001"
NS2 = "object_add x-nvme-ns-nvm,id=ns2,subsys=subsys0,size=64K,lba-size=4096," \
      "uuid=11111111-2222-3333-4444-000000000002"
CTRL = "device_add x-nvme-ctrl,id=ctrl0,subsys=subsys0"


@pytest.fixture
def ctx(tmp_path: Any) -> Iterator[MonitorContext]:
    machine = Machine(str(tmp_path))
    c = MonitorContext(machine=machine, trace=trace_registry(T.NVME_CMD_SUBMIT, T.NVME_CMD_COMPLETE))
    yield c
    machine.shutdown()


def hmp(ctx: MonitorContext, *lines: str) -> HMPResult:
    """Run lines in order; every line but the last must succeed."""
    async def go() -> HMPResult:
        result = HMPResult("")
        for i, line in enumerate(lines):
            result = await execute_line(line, ctx)
            if i < len(lines) - 1:
                assert result.ok, (line, result.text)
        return result
    return asyncio.run(go())


def out(ctx: MonitorContext, *lines: str) -> str:
    r = hmp(ctx, *lines)
    assert r.ok, r.text
    return r.text


def err(ctx: MonitorContext, *lines: str) -> str:
    r = hmp(ctx, *lines)
    assert not r.ok, r.text
    assert r.text.startswith("Error: ") and r.text.count("\n") == 1, r.text
    return r.text.rstrip("\n")


# -- parsing ---------------------------------------------------------------------------


def test_split_word_quotes() -> None:
    assert split_word('"a b\\" c" rest') == ('a b" c', "rest")
    with pytest.raises(HMPError):
        split_word('"open')


# -- help, info, errors ----------------------------------------------------------------


def test_help_lists_every_command(ctx: MonitorContext) -> None:
    text = out(ctx, "help")
    for name in ("info", "object_add", "object_del", "device_add", "device_del", "qom-list", "qom-get",
                 "qom-set", "trace-event", "quit"):
        assert any(line.split()[0].split("|")[0] == name and " -- " in line for line in text.splitlines()), name
    assert out(ctx, "help qom-get") == "qom-get path property -- print QOM property\n"
    assert out(ctx, "help info").startswith("info version -- ")


def test_info_lines_have_two_words(ctx: MonitorContext) -> None:
    lines = out(ctx, "info").splitlines()
    assert {"info qtree [-b] -- show the device tree (-b: brief, no properties)"} <= set(lines)
    assert all(len(line.split()) >= 2 for line in lines)


@pytest.mark.parametrize("line, message", [
    ("foo", "Error: unknown command: 'foo'"),
    ("info foo", "Error: unknown command: 'info foo'"),
    ("help foo", "Error: unknown command: 'foo'"),
    ("qom-get /objects", "Error: qom-get: missing argument 'property' (usage: qom-get path property)"),
    ("object_del a b", "Error: object_del: too many arguments: 'b' (usage: object_del id)"),
    ("object_add x-nvme-subsystem", "Error: Parameter 'id' is missing"),
    ("object_add nosuch,id=a", "Error: invalid object type: nosuch"),
    ("object_add x-nvme-subsystem,id=a,bogus=1", None),
    ("object_del nope", "Error: object 'nope' not found"),
    ("device_del nope", "Error: Device 'nope' not found"),
    ("qom-list /nope", None),
    ("qom-get /objects nope", None),
    ("trace-event nvme_cmd_submit maybe", "Error: Parameter 'option' expects 'on' or 'off'"),
    ('qom-get "/objects', "Error: unterminated string literal"),
    ("info queues nope", "Error: Device 'nope' not found"),
])
def test_bad_input_is_one_error_line(ctx: MonitorContext, line: str, message: str | None) -> None:
    text = err(ctx, line)
    if message is not None:
        assert text == message


def test_info_version_status(ctx: MonitorContext) -> None:
    assert out(ctx, "info version") == "0.1.0 nvshell 0.1.0\n" or out(ctx, "info version")[0].isdigit()
    assert out(ctx, "info status") == "VM status: running\n"


# -- objects, QOM ------------------------------------------------------------------------

QTREE_NO_CTRL = """\
bus: main-system-bus
  type System
  dev: x-nvme-subsystem, id "subsys0"
    bus: subsys0
      type x-nvme-subsys-bus
      dev: x-nvme-ns-nvm, id "ns1"
      dev: x-nvme-ns-nvm, id "ns2"
"""


def test_object_add_and_qtree_brief(ctx: MonitorContext) -> None:
    assert out(ctx, SUBSYS, NS1, NS2, "info qtree -b") == QTREE_NO_CTRL


def test_qtree_properties(ctx: MonitorContext) -> None:
    text = out(ctx, SUBSYS, NS1, NS2, "info qtree")
    lines = text.splitlines()
    i = lines.index('      dev: x-nvme-ns-nvm, id "ns2"')
    assert '        nsid = 2' in lines[i:]
    assert '        lba-size = 4096' in lines[i:]
    assert '    subnqn = "nqn.2024-01.io.nvshell:s0"' in lines


GOLDEN_QTREE_CTRL = """\
bus: main-system-bus
  type System
  dev: x-nvme-subsystem, id "subsys0"
    bus: subsys0
      type x-nvme-subsys-bus
      dev: x-nvme-ns-nvm, id "ns1"
      dev: x-nvme-ns-nvm, id "ns2"
      dev: x-nvme-ctrl, id "ctrl0"
        bus: ctrl0
          type nvme-bus
          attached: x-nvme-ns-nvm, id "ns1", nsid 1
"""


def test_golden_qtree_with_controller(ctx: MonitorContext) -> None:
    assert out(ctx, SUBSYS, NS1, NS2, CTRL, "info qtree -b") == GOLDEN_QTREE_CTRL
    full = out(ctx, "info qtree")
    assert '      dev: x-nvme-ctrl, id "ctrl0"' in full
    assert '        doorbells = "trap"' in full
    assert '          attached: x-nvme-ns-nvm, id "ns1", nsid 1' in full
    ns = out(ctx, "info namespaces").splitlines()
    assert ns[1].split()[-1] == "ctrl0" and ns[2].split()[-1] == "-"
    assert out(ctx, "info controllers").splitlines()[1].split()[:4] == ["ctrl0", "subsys0", "1", "waiting"]
    assert out(ctx, "info queues ctrl0").startswith("ctrl0: waiting\n")
    assert out(ctx, "device_del ctrl0") == ""


def test_info_qom_tree(ctx: MonitorContext) -> None:
    assert out(ctx, SUBSYS, NS1, "info qom-tree") == """\
/ (container)
  /machine (container)
    /peripheral (container)
    /peripheral-anon (container)
  /objects (container)
    /ns1 (x-nvme-ns-nvm)
    /subsys0 (x-nvme-subsystem)
"""
    assert out(ctx, "info qom-tree /objects/ns1") == "/ns1 (x-nvme-ns-nvm)\n"


def test_info_namespaces(ctx: MonitorContext) -> None:
    assert out(ctx, "info namespaces") == "no namespaces\n"
    assert out(ctx, SUBSYS, NS1, NS2, "info namespaces") == """\
id   subsystem  nsid  type           size    lba   shared  attached
ns1  subsys0    1     x-nvme-ns-nvm  1 MiB   512   yes     -
ns2  subsys0    2     x-nvme-ns-nvm  64 KiB  4096  yes     -
"""


def test_qom_list_get_set(ctx: MonitorContext) -> None:
    listing = out(ctx, SUBSYS, NS1, "qom-list /objects/ns1").splitlines()
    assert "lba-size (uint32)" in listing and "subsys (link<x-nvme-subsystem>)" in listing
    assert "objects (child<container>)" in out(ctx, "qom-list")
    assert out(ctx, "qom-get /objects/ns1 nsid") == "1\n"
    assert out(ctx, "qom-get /objects/subsys0 subnqn") == '"nqn.2024-01.io.nvshell:s0"\n'
    assert out(ctx, "qom-set /objects/ns1 attached-to all") == ""
    assert err(ctx, "qom-set /objects/ns1 nsid 7").startswith("Error: ")


def test_object_del(ctx: MonitorContext) -> None:
    out(ctx, SUBSYS, NS1, "object_del ns1")
    assert "ns1" not in out(ctx, "info qom-tree /objects")


def test_type_help(ctx: MonitorContext) -> None:
    """The type lists carry each type's registered description (QEMU's ``name "x", desc "..."``),
    and ``-device help`` / ``-object help`` are these very texts (one help path)."""
    from nvshell import cmdline
    from nvshell.device.qom.types import TYPES
    desc = {n: TYPES.get(n).description for n in ("x-nvme-ctrl", "x-nvme-ns-nvm", "x-nvme-ns-zoned",
                                                   "x-nvme-subsystem")}
    assert all(desc.values())
    devices = out(ctx, "device_add help")
    assert devices == f'Storage devices:\nname "x-nvme-ctrl", desc "{desc["x-nvme-ctrl"]}"\n'
    objects = out(ctx, "object_add help").splitlines()
    assert objects[0] == "List of user creatable object types:" and len(objects) == 4
    for line, name in zip(objects[1:], ("x-nvme-ns-nvm", "x-nvme-ns-zoned", "x-nvme-subsystem")):
        assert line.split() == [name, "-", *desc[name].split()], line
    assert cmdline.help_request([], ["help"]) == devices
    assert cmdline.help_request(["help"], []) == out(ctx, "object_add help")
    props = out(ctx, "device_add x-nvme-ctrl,help").splitlines()
    assert props[0] == "x-nvme-ctrl options:"
    assert any(p.startswith("  doorbells=<str>") and "(default: \"trap\")" in p for p in props)
    assert "  x-nvme-subsystem  - NVM subsystem\n" in out(ctx, "object_add help")
    assert out(ctx, "object_add x-nvme-ns-nvm,help").startswith("x-nvme-ns-nvm options:\n")


def test_trace_events(ctx: MonitorContext) -> None:
    assert out(ctx, "info trace-events") == "nvme_cmd_complete : state 0\nnvme_cmd_submit : state 0\n"
    assert out(ctx, "trace-event nvme_cmd_s* on", "info trace-events nvme_cmd_s*") == \
        "nvme_cmd_submit : state 1\n"


def test_quit_and_run_hmp(ctx: MonitorContext) -> None:
    assert hmp(ctx, "quit").quit
    stopped: list[bool] = []
    ctx.request_shutdown = lambda: stopped.append(True)

    async def go() -> tuple[str, str]:
        text = await run_hmp("info status", ctx)
        bad = await run_hmp("nosuch", ctx)
        await run_hmp("quit", ctx)
        await asyncio.sleep(0)
        return text, bad

    assert asyncio.run(go()) == ("VM status: running\n", "Error: unknown command: 'nosuch'\n")
    assert stopped == [True]


def test_human_monitor_command_via_registry(ctx: MonitorContext) -> None:
    text = asyncio.run(ctx.registry.execute("human-monitor-command", {"command-line": "info status"}, ctx))
    assert text == "VM status: running\r\n"


def test_extension_commands_register(ctx: MonitorContext) -> None:
    """Other modules add commands with the decorator; help and execution pick them up."""
    from nvshell.monitor.hmp import COMMANDS, hmp_command

    @hmp_command("x-echo", "text*", help="echo text")
    def echo(ctx: Any, args: dict[str, Any]) -> str:
        return args["text"]

    try:
        assert out(ctx, "x-echo hello  world") == "hello  world\n"
        assert "x-echo text... -- echo text" in out(ctx, "help")
    finally:
        COMMANDS.commands.pop("x-echo")


def test_toolbar_refresh_from_machine(ctx: MonitorContext) -> None:
    from nvshell.shell import LocalBackend, Toolbar

    out(ctx, SUBSYS, NS1, NS2)
    bar = Toolbar(LocalBackend(ctx))
    asyncio.run(bar.refresh())
    assert bar() == " no controllers | 2 namespaces | 0 IOPS"
