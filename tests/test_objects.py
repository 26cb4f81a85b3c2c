"""x-nvme-* types on a Machine: the real controllers (each on its IOThread) and vfio-user
servers (listening on sockets in the test's directory; no client connects)."""

from __future__ import annotations

import os

import pytest

from nvshell.device.errors import NvshellError, ObjectError, ObjectNotFound, PropertyError
from nvshell.device.machine import Machine
from nvshell.device.nvme.spec import LBA_FORMATS


@pytest.fixture
def m(tmp_path):
    machine = Machine(str(tmp_path))
    yield machine
    machine.shutdown()


def ctrl_model(m, id):
    return m.find_device(id).model


def changed(ctrl, clear=False):
    """The controller's Changed Namespace List (read on its IOThread, as a host's Get Log Page)."""
    return ctrl.iothread.run(ctrl.take_changed_namespaces, clear)


def test_subsystem_props(m):
    s = m.object_add("x-nvme-subsystem", "s0", {"uuid": "12345678-9abc-def0-1234-56789abcdef0"})
    assert m.qom_get("/objects/s0", "subnqn") == "nqn.2014-08.org.nvmexpress:uuid:12345678-9abc-def0-1234-56789abcdef0"
    m.object_add("x-nvme-subsystem", "s1", {"subnqn": "nqn.2024-01.io.test:x"})
    assert m.qom_get("/objects/s1", "subnqn") == "nqn.2024-01.io.test:x"
    with pytest.raises(PropertyError, match="expects a UUID"):
        m.object_add("x-nvme-subsystem", "s2", {"uuid": "zz"})
    with pytest.raises(PropertyError, match="cannot be changed"):
        m.qom_set("/objects/s0", "subnqn", "nqn.x")
    assert s.model.subnqn.endswith("abcdef0")


def test_namespace_creation_and_tree(m):
    m.object_add("x-nvme-subsystem", "subsys0", {})
    m.object_add("x-nvme-ns-nvm", "ns1", {"subsys": "subsys0", "size": "1M", "lba-size": 4096,
                                          "eui64": "00:11:22:33:44:55:66:77"})
    assert m.qom_get("/objects/ns1", "nsid") == 1
    assert m.qom_get("/objects/ns1", "eui64") == "0011223344556677"
    assert m.qom_get("/objects/ns1", "nlbas") == 256
    lst = {p["name"]: p["type"] for p in m.qom_list("/objects/ns1")}
    assert lst["subsys"] == "link<x-nvme-subsystem>" and lst["nsid"] == "uint32" and lst["size"] == "size"
    assert lst["attached-to"] == "strList"
    for p in lst:
        m.qom_get("/objects/ns1", p)
    with pytest.raises(PropertyError, match="cannot be changed"):
        m.qom_set("/objects/ns1", "size", "2M")
    with pytest.raises(PropertyError, match="Parameter 'nsid'.*already in use"):
        m.object_add("x-nvme-ns-nvm", "ns2", {"subsys": "subsys0", "size": "1M", "nsid": 1})
    m.object_add("x-nvme-ns-nvm", "ns2", {"subsys": "subsys0", "size": "1M", "nsid": "auto"})
    assert m.qom_get("/objects/ns2", "nsid") == 2
    with pytest.raises(PropertyError, match="multiple of the lba-size"):
        m.object_add("x-nvme-ns-nvm", "ns3", {"subsys": "subsys0", "size": 1000})
    with pytest.raises(PropertyError, match="Parameter 'size' is missing"):
        m.object_add("x-nvme-ns-nvm", "ns3", {"subsys": "subsys0"})
    with pytest.raises(ObjectError, match="still has members"):
        m.object_del("subsys0")
    m.object_del("ns1")
    m.object_del("ns2")
    m.object_del("subsys0")


def test_namespace_reads_back_effective_values(m):
    """Defaults resolved at creation and guest-made changes (Format NVM) read back."""
    m.object_add("x-nvme-subsystem", "subsys0", {})
    ns = m.object_add("x-nvme-ns-nvm", "ns1", {"subsys": "subsys0", "size": "1M", "mssrl": 1000})
    model = ns.model
    assert m.qom_get("/objects/ns1", "backend") == "memory"
    assert m.qom_get("/objects/ns1", "eui64") == model.eui64.hex() != ""
    assert m.qom_get("/objects/ns1", "nguid") == model.nguid.hex() != ""
    assert m.qom_get("/objects/ns1", "uuid") == str(model.uuid)
    assert m.qom_get("/objects/ns1", "mssrl") == 512          # whole blocks: 1000 bytes is one block
    assert [m.qom_get("/objects/ns1", p) for p in ("ms", "mset", "pi", "pil", "pif")] == [0, 0, 0, 0, 0]
    model.format(5, pi=1, pil=1)                                # the guest's Format NVM to 4 KiB + 8, PI 1
    assert m.qom_get("/objects/ns1", "lba-size") == 4096
    assert [m.qom_get("/objects/ns1", p) for p in ("ms", "mset", "pi", "pil", "pif")] == [8, 0, 1, 1, 0]
    assert m.qom_get("/objects/ns1", "nlbas") == 256
    assert m.qom_get("/objects/ns1", "mssrl") == 4096 and m.qom_get("/objects/ns1", "mcl") == 128 * 1024
    assert m.qom_get("/objects/ns1", "size") == 1 << 20


def test_controller_reads_back_effective_values(m):
    m.object_add("x-nvme-subsystem", "subsys0", {})
    m.device_add("x-nvme-ctrl", "ctrl7", {"subsys": "subsys0"})
    assert m.qom_get("/machine/peripheral/ctrl7", "serial") == "ctrl7"
    assert ctrl_model(m, "ctrl7").config.serial == "ctrl7"
    with pytest.raises(PropertyError, match="Property 'x-nvme-ctrl.serial' cannot be changed"):
        m.qom_set("/machine/peripheral/ctrl7", "serial", "x")


def test_zoned_inherits_nvm():
    from nvshell.device.qom import TYPES
    nvm = set(TYPES.properties("x-nvme-ns-nvm"))
    zoned = set(TYPES.properties("x-nvme-ns-zoned"))
    assert nvm < zoned and {"zone-size", "zone-capacity", "zone-max-open", "zone-max-active"} <= zoned


def test_controller_attach_detach(m):
    m.object_add("x-nvme-subsystem", "subsys0", {})
    m.object_add("x-nvme-ns-nvm", "ns1", {"subsys": "subsys0", "size": "1M", "attached-to": ["ctrl0"]})
    m.object_add("x-nvme-ns-nvm", "nsall", {"subsys": "subsys0", "size": "1M", "attached-to": "all"})
    m.device_add("x-nvme-ctrl", "ctrl0", {"subsys": "subsys0"})
    m.device_add("x-nvme-ctrl", "ctrl1", {"subsys": "subsys0", "cntlid": 7, "doorbells": "trap"})
    c0, c1 = ctrl_model(m, "ctrl0"), ctrl_model(m, "ctrl1")
    assert sorted(c0.namespaces) == [1, 2] and sorted(c1.namespaces) == [2]
    assert m.qom_get("/machine/peripheral/ctrl1", "cntlid") == 7
    assert m.qom_get("/machine/peripheral/ctrl0", "socket").endswith("/ctrl0.sock")
    assert m.qom_get("/machine/peripheral/ctrl0", "subsys") == "/objects/subsys0"
    assert m.qom_get("/objects/subsys0", "controllers") == ["ctrl0", "ctrl1"]
    assert c1.config.doorbells == "trap"
    lst = {p["name"]: p["type"] for p in m.qom_list("/machine/peripheral")}
    assert lst["ctrl0"] == "child<x-nvme-ctrl>"
    for p in m.qom_list("/machine/peripheral/ctrl0"):
        m.qom_get("/machine/peripheral/ctrl0", p["name"])
    # qom-set attached-to
    m.qom_set("/objects/ns1", "attached-to", ["ctrl0", "ctrl1"])
    assert 1 in c1.namespaces and 1 in changed(c1)
    assert m.qom_get("/objects/ns1", "attached") == ["ctrl0", "ctrl1"]
    m.detach("ns1", "ctrl0")
    assert 1 not in c0.namespaces and m.qom_get("/objects/ns1", "attached-to") == ["ctrl1"]
    m.attach("ns1", "ctrl0")
    assert 1 in c0.namespaces
    with pytest.raises(ObjectError, match="already attached"):
        m.attach("ns1", "ctrl0")
    m.detach("nsall", "ctrl1")
    assert 2 not in c1.namespaces and 2 in c0.namespaces
    # a controller in another subsystem is refused
    m.object_add("x-nvme-subsystem", "other", {})
    m.device_add("x-nvme-ctrl", "ctrlx", {"subsys": "other"})
    with pytest.raises(PropertyError, match="not in x-nvme-subsystem"):
        m.qom_set("/objects/ns1", "attached-to", ["ctrlx"])
    assert m.qom_get("/objects/ns1", "attached-to") == ["ctrl1", "ctrl0"]
    # duplicate cntlid, duplicate socket
    with pytest.raises(PropertyError, match="cntlid"):
        m.device_add("x-nvme-ctrl", "ctrl2", {"subsys": "subsys0", "cntlid": 7})
    with pytest.raises(PropertyError, match="already used"):
        m.device_add("x-nvme-ctrl", "ctrl3", {"subsys": "subsys0", "socket": m.find_device("ctrl0").socket_path})
    assert m.find_device("ctrl2") is None
    # removing a controller keeps namespaces; DEVICE_DELETED is published
    events = []
    m.subscribe(lambda n, d: events.append((n, d)))
    m.device_del("ctrl0")
    subsys0 = m.find_object("subsys0").model
    assert c0 not in subsys0.controllers.values() and not c0.iothread.running   # shut down
    assert m.find_object("ns1") is not None and 1 in c1.namespaces
    assert events == [("DEVICE_DELETED", {"device": "ctrl0", "path": "/machine/peripheral/ctrl0"})]
    with pytest.raises(ObjectNotFound, match="Device 'ctrl0' not found"):
        m.device_del("ctrl0")
    # deleting a namespace detaches it with an AEN
    changed(c1, clear=True)
    m.object_del("ns1")
    assert 1 not in c1.namespaces and changed(c1) == [1]


def test_private_subsystem(m):
    m.device_add("x-nvme-ctrl", "c0", {})
    assert m.qom_get("/machine/peripheral/c0", "subsys") == "/objects/c0-subsys"
    m.object_add("x-nvme-ns-nvm", "n", {"size": "1M", "attached-to": "c0"})
    assert m.qom_get("/objects/n", "subsys") == "/objects/c0-subsys"
    assert 1 in ctrl_model(m, "c0").namespaces
    with pytest.raises(ObjectError, match="still has members"):
        m.object_del("c0-subsys")
    m.device_del("c0")
    assert m.find_object("c0-subsys") is not None  # kept: it still has a namespace
    m.object_del("n")
    m.object_del("c0-subsys")
    m.device_add("x-nvme-ctrl", "c1", {})
    m.device_del("c1")
    assert m.find_object("c1-subsys") is None


def test_guest_created_namespace_is_mirrored(m):
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.namespace import NvmNamespace
    m.object_add("x-nvme-subsystem", "s", {})
    sub = m.find_object("s").model
    ns = NvmNamespace(MemoryBackend(1 << 20))
    nsid = sub.add_namespace(ns)
    sub.notify("namespace-created", nsid, ns, None)
    assert m.qom_get(f"/objects/ns-auto-{nsid}", "nsid") == nsid
    assert m.qom_get("/objects/s", "namespaces") == [f"ns-auto-{nsid}"]
    sub.remove_namespace(nsid)
    sub.notify("namespace-deleted", nsid, ns, None)
    m.sync()                       # no control-plane loop here: apply the queued guest change
    assert m.find_object(f"ns-auto-{nsid}") is None


def test_events_from_server(m):
    events = []
    m.subscribe(lambda n, d: events.append((n, d)))
    m.device_add("x-nvme-ctrl", "c0", {})
    srv = m.find_device("c0").server
    srv.on_event("connected", {})
    srv.on_event("disconnected", {})
    assert [e[0] for e in events] == ["X_NVME_CLIENT_CONNECTED", "X_NVME_CLIENT_DISCONNECTED"]
    assert events[0][1] == {"device": "c0", "socket": srv.path}


def test_shutdown_closes_everything(m):
    m.object_add("x-nvme-subsystem", "s", {})
    m.device_add("x-nvme-ctrl", "c0", {"subsys": "s"})
    m.object_add("x-nvme-ns-nvm", "n", {"subsys": "s", "size": "1M", "attached-to": "all"})
    srv = m.find_device("c0").server
    m.shutdown()
    assert not os.path.exists(srv.path) and m.objects() == [] and m.devices() == []   # server closed
    with pytest.raises(ObjectError, match="shutting down"):
        m.object_add("x-nvme-subsystem", "s2", {})


def test_zoned_and_qmp_style_values(m):
    m.object_add("x-nvme-subsystem", "s", {})
    z = m.object_add("x-nvme-ns-zoned", "z0", {"subsys": "s", "size": "1G", "zone-size": "64M",
                                               "zone-capacity": "48M", "zone-max-open": 4})
    assert (z.model.zones.nr_zones, z.model.zones.zone_cap, z.model.max_open) == (16, 48 << 11, 4)
    with pytest.raises(NvshellError, match="Parameter 'zone-capacity'"):
        m.object_add("x-nvme-ns-zoned", "z1", {"subsys": "s", "size": "1G", "zone-size": "64M",
                                               "zone-capacity": "65M"})
    assert m.find_object("z1") is None
    with pytest.raises(PropertyError, match="Parameter 'zone-size' expects a size"):
        m.object_add("x-nvme-ns-zoned", "z", {"subsys": "s", "size": "1G", "zone-size": "big"})
    # qmp-shell sends ints/bools where strings are expected; sizes may be ints or suffixed strings
    m.object_add("x-nvme-ns-nvm", "n", {"subsys": "s", "size": 1048576, "eui64": 1, "attached-to": []})
    assert m.qom_get("/objects/n", "eui64") == "0000000000000001"
    with pytest.raises(PropertyError, match="controller ids or 'all'"):
        m.qom_set("/objects/n", "attached-to", ["bad id"])
    with pytest.raises(PropertyError, match="Invalid parameter type for 'size', expected: size"):
        m.object_add("x-nvme-ns-nvm", "n2", {"subsys": "s", "size": {"x": 1}})


def test_config_dump_reads_back_as_the_same_device(m, tmp_path):
    """dump_config is -readconfig JSON with effective values: reading it back rebuilds the device."""
    import json

    from nvshell import cmdline
    m.object_add("x-nvme-subsystem", "subsys0", {})
    m.device_add("x-nvme-ctrl", "ctrl0", {"subsys": "subsys0"})
    ns = m.object_add("x-nvme-ns-nvm", "ns1", {"size": "1M", "attached-to": ["all"]})
    m.object_add("x-nvme-ns-nvm", "ns2", {"subsys": "subsys0", "size": "1M", "backend": "null",
                                          "attached-to": "ctrl0"})
    ns.model.format(LBA_FORMATS.index((12, 0)))                                   # the guest's Format NVM
    dump = m.dump_config()
    nss = {o["id"]: o for o in dump["objects"]}
    assert nss["ns1"]["lba-size"] == 4096 and nss["ns1"]["backend"] == "memory"
    assert nss["ns1"]["subsys"] == "subsys0" and nss["ns1"]["eui64"] == ns.model.eui64.hex()
    assert dump["devices"][0]["serial"] == "ctrl0" and dump["devices"][0]["driver"] == "x-nvme-ctrl"
    for o in dump["objects"] + dump["devices"]:
        path = f"/objects/{o['id']}" if "qom-type" in o else f"/machine/peripheral/{o['id']}"
        for k, v in o.items():
            if k not in ("qom-type", "driver", "id"):
                got = m.qom_get(path, k)
                assert (got.rsplit("/", 1)[-1] if k == "subsys" else got) == v, (path, k)
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(dump))
    m.shutdown()   # the dump names the same sockets: the first machine lets go of them
    m2 = Machine(str(tmp_path / "again"))
    try:
        cmdline.apply(m2, cmdline.parse(readconfig=str(path)))
        assert m2.dump_config() == dump
    finally:
        m2.shutdown()


def test_guest_changes_run_on_the_control_plane_not_the_iothread(m):
    """A subsystem listener's tree change is handed to the control plane's scheduler."""
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.namespace import NvmNamespace
    scheduled = []
    m.set_control_plane(scheduled.append)
    m.object_add("x-nvme-subsystem", "s", {})
    sub = m.find_object("s").model
    ns = NvmNamespace(MemoryBackend(1 << 20))
    nsid = sub.add_namespace(ns)
    sub.notify("namespace-created", nsid, ns, None)
    assert m.find_object(f"ns-auto-{nsid}") is None and scheduled == [m.sync]   # not applied by the notifier
    scheduled[0]()                                                              # the loop runs it
    assert m.find_object(f"ns-auto-{nsid}") is not None


def test_queued_guest_changes_apply_in_order(m):
    """Creation then attach queued together: the attach lands on the created object."""
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.namespace import NvmNamespace
    m.object_add("x-nvme-subsystem", "s", {})
    m.device_add("x-nvme-ctrl", "c0", {"subsys": "s"})
    ctrl = m.find_device("c0").model
    m.set_control_plane(lambda fn: None)                  # a loop that has not run yet
    sub = m.find_object("s").model
    ns = NvmNamespace(MemoryBackend(1 << 20))
    nsid = sub.add_namespace(ns)
    sub.notify("namespace-created", nsid, ns, ctrl)
    sub.notify("attached", nsid, ns, ctrl)
    assert m.qom_get(f"/objects/ns-auto-{nsid}", "attached-to") == ["c0"]
