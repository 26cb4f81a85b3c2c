"""-object/-device keyval parsing, -readconfig, forward references, help."""

from __future__ import annotations

import json

import pytest

from nvshell.device.errors import PropertyError
from nvshell.device.machine import Machine
from nvshell import cmdline
from nvshell.device.keyval import parse_keyval
from nvshell.cmdline import CmdlineError


def test_keyval():
    d = parse_keyval("x-nvme-ns-nvm,id=ns1,file=/tmp/a,,b,attached-to=c0,attached-to=c1", "qom-type")
    assert d == {"qom-type": "x-nvme-ns-nvm", "id": "ns1", "file": "/tmp/a,b", "attached-to": ["c0", "c1"]}
    assert parse_keyval("t,help", "qom-type") == {"qom-type": "t", "help": True}
    assert parse_keyval("k=", None) == {"k": ""}
    with pytest.raises(PropertyError, match="Expected '=' after parameter 'oops'"):
        parse_keyval("t,oops", "qom-type")


def test_parse_options_errors():
    with pytest.raises(CmdlineError, match="Parameter 'id' is missing"):
        cmdline.parse(objects=["x-nvme-subsystem"])
    with pytest.raises(CmdlineError, match="-object x-nvme-ns-nvm,id=a,bad: Expected"):
        cmdline.parse(objects=["x-nvme-ns-nvm,id=a,bad"])


def test_forward_references_and_dangling(tmp_path):
    specs = cmdline.parse(objects=["x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=1M,attached-to=all",
                                   "x-nvme-subsystem,id=subsys0"])
    m = Machine(str(tmp_path))
    cmdline.apply(m, specs)
    assert m.qom_get("/objects/ns1", "subsys") == "/objects/subsys0"
    assert m.qom_get("/objects/subsys0", "namespaces") == ["ns1"]
    m.shutdown()

    specs = cmdline.parse(objects=["x-nvme-ns-nvm,id=ns1,subsys=subsys9,size=1M"])
    with pytest.raises(CmdlineError, match="Parameter 'subsys' refers to 'subsys9', which is not defined"):
        cmdline.order_specs(specs, Machine(str(tmp_path)))
    specs = cmdline.parse(objects=["x-nvme-subsystem,id=s", "x-nvme-ns-nvm,id=ns1,subsys=s,size=1M,attached-to=ctrl7"])
    with pytest.raises(CmdlineError, match="'ctrl7'"):
        cmdline.order_specs(specs)
    specs = cmdline.parse(objects=["x-nvme-subsystem,id=s", "x-nvme-subsystem,id=s"])
    with pytest.raises(CmdlineError, match="Duplicate ID 's'"):
        cmdline.order_specs(specs)


def test_order_puts_devices_before_namespaces_naming_them():
    specs = cmdline.parse(objects=["x-nvme-ns-nvm,id=ns1,size=1M,attached-to=ctrl0", "x-nvme-subsystem,id=s0"],
                          devices=["x-nvme-ctrl,id=ctrl0,subsys=s0"])
    order = [s.id for s in cmdline.order_specs(specs)]
    assert order.index("s0") < order.index("ctrl0") < order.index("ns1")


def test_apply_errors_name_the_option(tmp_path):
    m = Machine(str(tmp_path))
    specs = cmdline.parse(objects=["x-nvme-subsystem,id=s0", "x-nvme-ns-nvm,id=ns1,subsys=s0,size=1M,lba-size=1000"])
    with pytest.raises(CmdlineError, match=r"-object x-nvme-ns-nvm,id=ns1.*: Parameter 'lba-size' expects 512 or 4096"):
        cmdline.apply(m, specs)
    specs = cmdline.parse(objects=["x-nvme-subsystem,id=s1,uuid=a,uuid=b"])
    with pytest.raises(CmdlineError, match="given more than once"):
        cmdline.apply(m, specs)
    m.shutdown()


def test_readconfig(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({
        "objects": [{"qom-type": "x-nvme-ns-nvm", "id": "ns1", "subsys": "s0", "size": "2M", "attached-to": ["all"]},
                    {"qom-type": "x-nvme-subsystem", "id": "s0"}],
        "devices": []}))
    specs = cmdline.parse(readconfig=[str(cfg)])
    assert len(specs) == 2 and not specs.empty
    m = Machine(str(tmp_path))
    cmdline.apply(m, specs)
    assert m.qom_get("/objects/ns1", "size") == 2 << 20
    assert m.qom_get("/objects/ns1", "attached-to") == ["all"]
    m.shutdown()
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(CmdlineError, match="invalid JSON"):
        cmdline.parse(readconfig=[str(bad)])
    bad.write_text(json.dumps({"objects": [{"id": "x"}]}))
    with pytest.raises(CmdlineError, match=r"objects\[0\]: Parameter 'qom-type' is missing"):
        cmdline.parse(readconfig=[str(bad)])
    with pytest.raises(CmdlineError, match="No such file"):
        cmdline.parse(readconfig=[str(tmp_path / "missing.json")])


def test_help():
    text = cmdline.help_request(["help"], [])
    assert text.startswith("List of user creatable object types:") and "  x-nvme-ns-zoned  " in text
    assert "x-nvme-ctrl" not in text
    assert 'name "x-nvme-ctrl", desc "NVMe controller' in cmdline.help_request([], ["help"])
    t = cmdline.help_request(["x-nvme-ns-nvm,help"], [])
    assert t.startswith("x-nvme-ns-nvm options:")
    assert "lba-size=<uint32>" in t and "(default: 512)" in t and "attached-to=<strList>" in t
    z = cmdline.help_request(["x-nvme-ns-zoned,help"], [])
    assert "lba-size=<uint32>" in z and "zone-size=<size>" in z
    assert "doorbells=<str>" in cmdline.help_request([], ["x-nvme-ctrl,help"])
    assert cmdline.help_request(["x-nvme-subsystem,id=s"], []) is None
    with pytest.raises(CmdlineError, match="invalid object type: nope"):
        cmdline.help_request(["nope,help"], [])
