"""One declaration per argument set: the drifts it makes impossible.

* the same keyval text is accepted by ``-object``/``-device`` and ``object_add``/``device_add``
  (and ``-fault``/``fault_add``): one parser, ``nvshell.device.keyval.parse_keyval``;
* ``-device X,help`` and ``device_add X,help`` print the same text (the command answers both);
* fault rule arguments: one table (``device.faults.FAULT_ARGS``) drives QMP validation, the schema,
  the ``fault_add`` usage line and its completion, and ``fault_del`` completes rule ids;
* one list of boolean words for properties, fault rules, ``-qmp`` flags and HMP on/off;
* ``help object_add``/``help device_add`` usage lines come from the type declarations.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from nvshell import cmdline
from nvshell.completion import HMPCompleter
from nvshell.device import trace as T
from nvshell.device.errors import NvshellError
from nvshell.device.faults import FAULT_ARGS, FaultRule
from nvshell.device.keyval import BOOL_WORDS, parse_bool
from nvshell.device.machine import Machine
from nvshell.device.nvme.spec import ADMIN_OPCODE_NAMES, IO_OPCODE_NAMES
from nvshell.device.qom.properties import BoolType
from nvshell.monitor.commands_faults import apply_fault_options
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.hmp import execute_line
from nvshell.monitor.hmp_commands import list_types
from nvshell.monitor.qmp.address import parse_qmp_address
from tests.qmp_helpers import trace_registry

NS = "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1M,attached-to=ctrl0,attached-to=ctrl1,file=/dev/null,,x"


@pytest.fixture
def ctx(tmp_path: Any) -> Iterator[MonitorContext]:
    machine = Machine(str(tmp_path))
    yield MonitorContext(machine=machine, trace=trace_registry(T.NVME_CMD_SUBMIT, T.NVME_CMD_COMPLETE))
    machine.shutdown()


def line(ctx: MonitorContext, text: str) -> str:
    result = asyncio.run(execute_line(text, ctx))
    assert result.ok, result.text
    return result.text


def _ns_props(machine: Machine) -> tuple[Any, ...]:
    return tuple(machine.qom_get("/objects/ns1", p) for p in ("attached-to", "size", "file"))


def test_same_keyval_text_everywhere(ctx: MonitorContext, tmp_path: Any) -> None:
    setup = ["x-nvme-subsystem,id=subsys0"]
    devices = [f"x-nvme-ctrl,id=ctrl{i},subsys=subsys0,socket={tmp_path}/c{i}.sock" for i in (0, 1)]
    for text in setup:
        line(ctx, f"object_add {text}")
    for text in devices:
        line(ctx, f"device_add {text}")
    line(ctx, f"object_add {NS.replace('file=/dev/null,,x', 'backend=null')}")
    via_shell = _ns_props(ctx.machine)
    other = Machine(str(tmp_path / "cmdline"))
    try:
        specs = cmdline.parse(objects=setup + [NS.replace("file=/dev/null,,x", "backend=null")],
                              devices=[d.replace(str(tmp_path), str(tmp_path / "cmdline")) for d in devices])
        cmdline.apply(other, specs)
        assert _ns_props(other) == via_shell
    finally:
        other.shutdown()
    assert via_shell[0] == ["ctrl0", "ctrl1"]
    # ",," is a literal comma on both paths too
    assert cmdline.parse(objects=[NS]).items[0].props["file"] == "/dev/null,x"


def test_fault_keyval_same_on_command_line_and_shell(ctx: MonitorContext) -> None:
    text = "f1,opcode=namespace-management,action=status,status=invalid-field,dnr=yes"
    apply_fault_options(ctx.machine, [text])
    cli = ctx.machine.faults.get("f1").describe()
    ctx.machine.faults.remove("f1")
    line(ctx, f"fault_add id={text}")
    assert ctx.machine.faults.get("f1").describe() == cli
    assert cli["opcode"] == "namespace-management" and cli["queue"] == "admin" and cli["dnr"] is True


@pytest.mark.parametrize("kind,text", [("device", "help"), ("device", "x-nvme-ctrl,help"),
                                       ("object", "help"), ("object", "x-nvme-ns-nvm,help"),
                                       ("object", "x-nvme-subsystem,?")])
def test_help_is_one_format(ctx: MonitorContext, kind: str, text: str) -> None:
    shell = line(ctx, f"{'device_add' if kind == 'device' else 'object_add'} {text}")
    assert cmdline.help_request(*(([], [text]) if kind == "device" else ([text], []))) == shell


def complete(ctx: MonitorContext, text: str) -> list[str]:
    registry = ctx.registry

    async def query(name: str, args: dict[str, Any]) -> Any:
        return await registry.execute(name, args, ctx)

    async def go() -> list[str]:
        return [c.text for c in await HMPCompleter(query, cache_seconds=0).completions(text)]
    return asyncio.run(go())


def test_fault_commands_complete_from_their_declaration(ctx: MonitorContext) -> None:
    line(ctx, "fault_add id=slow,action=delay,delay=5")
    line(ctx, "fault_add id=stuck,action=drop")
    assert complete(ctx, "fault_del s") == ["slow", "stuck"]
    assert complete(ctx, "fault_del sl") == ["slow"]
    keys = complete(ctx, "fault_add id=x,")
    assert keys == [f"{a.name}=" for a in FAULT_ARGS if a.name != "id"]
    assert complete(ctx, "fault_add id=x,action=ns-") == ["ns-not-ready", "ns-remove"]
    assert complete(ctx, "fault_add id=x,queue=") == ["admin", "io"]
    # opcode names: the one vocabulary (spec.opcode_name), per queue kind when it is known
    assert complete(ctx, "fault_add id=x,queue=admin,opcode=namespace-") == ["namespace-management",
                                                                             "namespace-attachment"]
    assert complete(ctx, "fault_add id=x,qid=3,opcode=") == list(IO_OPCODE_NAMES.values())
    assert complete(ctx, "fault_add id=x,qid=0,opcode=") == list(ADMIN_OPCODE_NAMES.values())
    every = [*IO_OPCODE_NAMES.values(), *ADMIN_OPCODE_NAMES.values()]     # no queue kind typed: both tables
    assert complete(ctx, "fault_add id=x,opcode=f") == [n for n in every if n.startswith("f")]
    usage = line(ctx, "help fault_add")
    for a in FAULT_ARGS:
        assert f"{a.name}=" in usage


def test_fault_schema_is_the_rule_table(ctx: MonitorContext) -> None:
    schema = asyncio.run(ctx.registry.execute("query-qmp-schema", {}, ctx))
    by_name = {e["name"]: e for e in schema}
    members = by_name[by_name["x-nvme-fault-add"]["arg-type"]]["members"]
    assert [m["name"] for m in members] == list(FaultRule.ARGUMENTS)
    action = by_name[next(m["type"] for m in members if m["name"] == "action")]
    assert action["meta-type"] == "enum" and action["values"] == list(FAULT_ARGS[1].choices)


@pytest.mark.parametrize("word", sorted(BOOL_WORDS))
def test_one_list_of_boolean_words(word: str, ctx: MonitorContext) -> None:
    value = BOOL_WORDS[word]
    assert BoolType().parse("p", word) is value
    assert FaultRule.from_args({"id": "f", "dnr": word}).dnr is value
    assert parse_bool(word.upper(), "x") is value
    address = parse_qmp_address(f"tcp:127.0.0.1:4444,server={word if value else 'on'},wait={'off' if value else word},nodelay={word}")
    assert address.port == 4444
    line(ctx, f"trace-event nvme_* {word}")


def test_a_non_boolean_is_refused_alike_everywhere() -> None:
    messages = set()
    for check in (lambda: BoolType().parse("dnr", "maybe"), lambda: FaultRule.from_args({"id": "f", "dnr": "maybe"}),
                  lambda: parse_bool("maybe", "dnr")):
        with pytest.raises(NvshellError) as info:
            check()
        messages.add(str(info.value))
    assert messages == {"Parameter 'dnr' expects 'on' or 'off'"}


def test_add_usage_is_generated_from_the_type_declarations(ctx: MonitorContext,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``help object_add`` / ``help device_add`` list every type with every declared property,
    read from the same declarations as ``TYPE,help`` and completion: a property added to a
    type shows in the usage without any usage string being edited."""
    from nvshell.device.qom.properties import Property, StrType
    from nvshell.device.qom.types import TYPES, TypeInfo

    for command, query, kind in (("object_add", "qom-list-properties", "object"),
                                 ("device_add", "device-list-properties", "device")):
        usage = line(ctx, f"help {command}").splitlines()
        assert usage[0].startswith(command + " ")
        types = asyncio.run(list_types(ctx, kind))
        assert types and len(usage) == 1 + len(types)
        for t, text in zip(sorted(types, key=lambda t: t["name"]), usage[1:]):
            assert text.startswith(f"  {t['name']},") or text.startswith(f"  {t['name']}[,"), text
            for p in asyncio.run(ctx.registry.execute(query, {"typename": t["name"]}, ctx)):
                assert f"[,{p['name']}=<{p['type']}>]" in text, (p, text)
    monkeypatch.setattr(TYPES, "_types", dict(TYPES._types))
    monkeypatch.setattr(TYPES, "_prop_cache", {})
    for name in ("x-nvme-subsystem", "x-nvme-ctrl"):
        base = TYPES.get(name)
        TYPES.register(TypeInfo(name, base.parent, base.cls, base.abstract,
                                [*base.properties, Property("x-new-knob", StrType(), description="a test knob")],
                                base.description, base.interfaces), replace=True)
    assert "[,x-new-knob=<str>]" in line(ctx, "help object_add").splitlines()[-1]      # x-nvme-subsystem
    assert "[,x-new-knob=<str>]" in line(ctx, "help device_add")
    assert "x-new-knob=<str>" in line(ctx, "object_add x-nvme-subsystem,help")
