"""Introspection shows what the device really does: every x-nvme-* property, over QMP, against
what a connected NVMe host reads from the device.

A real nvshell process runs a topology that covers every type (defaults and explicit values,
memory/null/file backends, mmap and trapped doorbells); an ``NvmeTestHost`` (nvshell/testing.py,
enabled with namespace notices: ``notified_host``)
connects to every controller over vfio-user as QEMU would and reads Identify, registers and
features.  The test then walks, *from the type registry* (``qom-list-types``,
``qom-list-properties``), every property of every instance and checks that

* ``qom-get`` returns what the host sees (the ``CHECKS`` table below, one entry per property),
* ``qom-list`` lists exactly the type's properties, ``info qtree`` prints the same value and
  the ``-readconfig`` dump (``x-nvme-query-config``) holds the same value,
* a property that cannot change at run time refuses ``qom-set`` with an error naming it, and a
  mutable one (``MUTABLE_CHECKS``) takes effect at once, with the notice the host expects,

before and after a host-side Format NVM and a Namespace Management create + attach.

**Adding a property?** Add its check to ``CHECKS`` (and to ``MUTABLE_CHECKS`` if it is
mutable): a property without one fails this test, by design, so nothing new goes unchecked.
A new type needs an instance in ``CONFIG`` (or ``ns_create``) for the same reason.
"""

from __future__ import annotations

import json
import struct
import uuid as uuid_mod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from qemu.qmp import ExecuteError

from nvshell.device.pci.config import CAP_ID_MSIX
from nvshell.monitor.format import format_value
from nvshell.testing import NvshellProcess, QmpConnection
from nvshell.testing import NvmeTestHost

# ------------------------------------------------------------------------------ topology
SUBSYS0_UUID = "5ab5ab5a-0000-4000-8000-00000000000a"
SUB2_NQN = "nqn.2026-12.io.nvshell:introspection-sub2"
NS2_EUI64 = "0011223344556677"
NS2_NGUID = "00112233445566778899aabbccddeeff"

#: Asynchronous Event Configuration: Namespace Attribute Notices.
AEC_NS_ATTRIBUTE = 1 << 8


def config(file_path: Path) -> dict[str, Any]:
    """Every type; defaults on one instance, explicit non-default values on another."""
    return {
        "objects": [
            {"qom-type": "x-nvme-subsystem", "id": "subsys0", "uuid": SUBSYS0_UUID},
            {"qom-type": "x-nvme-subsystem", "id": "sub2", "subnqn": SUB2_NQN},
            {"qom-type": "x-nvme-ns-nvm", "id": "ns1", "subsys": "subsys0", "size": "8M",
             "attached-to": ["all"]},
            {"qom-type": "x-nvme-ns-nvm", "id": "ns2", "subsys": "subsys0", "size": "4M", "backend": "null",
             "lba-size": 4096, "eui64": NS2_EUI64, "nguid": NS2_NGUID, "mssrl": "16K", "mcl": "64K",
             "msrc": 8, "ms": 16, "pi": 3, "pif": 2, "attached-to": ["ctrl0"]},
            {"qom-type": "x-nvme-ns-nvm", "id": "ns3", "subsys": "sub2", "file": str(file_path), "nsid": 5,
             "direct": True, "attached-to": ["ctrl1"]},
            {"qom-type": "x-nvme-ns-zoned", "id": "nsz", "subsys": "subsys0", "nsid": 9, "size": "8M", "zone-size": "1M",
             "zone-capacity": "768K", "zone-max-open": 2, "zone-max-active": 3,
             "zone-descriptor-extension-size": 128, "zone-cross-read": True, "attached-to": ["ctrl0"]},
        ],
        "devices": [
            {"driver": "x-nvme-ctrl", "id": "ctrl0", "subsys": "subsys0"},
            {"driver": "x-nvme-ctrl", "id": "ctrl1", "subsys": "sub2", "serial": "SER-1", "model": "Model One",
             "firmware": "2.5", "cntlid": 7, "max-ioqpairs": 8, "max-intr-vectors": 9, "mqes": 255,
             "max-aer-retention": 10, "aerl": 1, "mdts": 5, "doorbells": "mmap", "ocp": True,
             "poll-max-ns": 0},
        ],
    }


#: Types that cannot be instantiated yet, with the error object-add gives.  The test checks
#: the error is still that; once the type works it fails until the type is in CONFIG.
NOT_CREATABLE_YET: dict[str, str] = {}


# ------------------------------------------------------------------------------ QMP
class Qmp(QmpConnection):
    """``QmpConnection`` called as ``qmp(command, arguments)``, plus the error of a refused command."""

    def __call__(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        return self.execute(cmd, args)

    def error(self, cmd: str, args: dict[str, Any]) -> str:
        try:
            self.execute(cmd, args)
        except ExecuteError as e:
            return str(e)
        raise AssertionError(f"{cmd} {args} succeeded")


# ------------------------------------------------------------------------------ what the host sees
def notified_host(socket: str | Path) -> NvmeTestHost:
    """A host on ``socket``, enabled, with Namespace Attribute Notices on (as Linux after its scan)."""
    host = NvmeTestHost(socket, ram_size=2 << 20)
    try:
        host.enable()
        host.enable_notices(AEC_NS_ATTRIBUTE)
    except BaseException:
        host.close()
        raise
    return host


def _text(data: bytes, start: int, end: int) -> str:
    return data[start:end].decode("ascii").rstrip(" \0")


def _u32_list(data: bytes) -> list[int]:
    out = []
    for (v,) in struct.iter_unpack("<I", data):
        if v == 0:
            break
        out.append(v)
    return out


@dataclass
class NsView:
    """Identify Namespace (CNS 00) and the descriptor list (CNS 03) of one active namespace."""

    nsid: int
    idns: bytes
    descriptors: dict[int, bytes]
    #: I/O Command Set specific Identify Namespace for the NVM command set (CNS 05h, CSI 00h).
    idns_nvm: bytes
    #: The same for the Zoned Namespace command set (CSI 02h), of a zoned namespace.
    idns_zoned: bytes = b""

    @property
    def lbafe(self) -> tuple[int, int]:
        """The zoned LBA Format Extension in use: (ZSZE in blocks, ZDES in 64-byte units)."""
        return struct.unpack_from("<QB", self.idns_zoned, 2816 + 16 * self.format_index)

    @property
    def format_index(self) -> int:
        flbas = self.idns[26]
        return (flbas & 0xF) | (((flbas >> 5) & 0x3) << 4)

    @property
    def lbaf(self) -> int:
        """The LBA Format entry in use: MS (15:0), LBADS (23:16)."""
        return struct.unpack_from("<I", self.idns, 128 + 4 * self.format_index)[0]

    @property
    def elbaf(self) -> int:
        """The Extended LBA Format entry in use: STS (6:0), PIF (8:7)."""
        return struct.unpack_from("<I", self.idns_nvm, 12 + 4 * self.format_index)[0]

    @property
    def lbads(self) -> int:
        return (self.lbaf >> 16) & 0xFF

    @property
    def nsze(self) -> int:
        return struct.unpack_from("<Q", self.idns, 0)[0]


@dataclass
class CtrlView:
    """Everything one host read from its controller (registers, Identify, features, regions)."""

    id: str
    socket: str
    host: NvmeTestHost
    idctrl: bytes = b""
    cap: int = 0
    nq: int = 0
    active: list[int] = field(default_factory=list)
    allocated: list[int] = field(default_factory=list)
    ns: dict[int, NsView] = field(default_factory=dict)

    def refresh(self) -> None:
        h = self.host
        self.idctrl = h.identify(0x01)
        self.cap = h.reg64(0x00)
        self.nq = h.check(h.get_feature(0x07)).dw0
        self.active = _u32_list(h.identify(0x02))
        self.allocated = _u32_list(h.identify(0x10))
        self.ns = {}
        for nsid in self.active:
            desc, raw, pos = {}, h.identify(0x03, nsid=nsid), 0
            while pos + 4 <= len(raw) and raw[pos]:
                nidt, nidl = raw[pos], raw[pos + 1]
                desc[nidt] = raw[pos + 4:pos + 4 + nidl]
                pos += 4 + nidl
            zoned = h.identify(0x05, nsid=nsid, csi=2) if desc.get(4) == b"\x02" else b""
            self.ns[nsid] = NsView(nsid, h.identify(0x00, nsid=nsid), desc, h.identify(0x05, nsid=nsid, csi=0),
                                   zoned)

    @property
    def subnqn(self) -> str:
        return _text(self.idctrl, 768, 1024)

    @property
    def cntlid(self) -> int:
        return struct.unpack_from("<H", self.idctrl, 78)[0]


@dataclass
class Inst:
    """One object or device: its QOM path, id, type and every property's qom-get value."""

    path: str
    id: str
    type: str
    values: dict[str, Any]


class World:
    """The QMP view (instances) next to the host view (controllers), re-read by ``refresh``."""

    def __init__(self, qmp: Qmp, ctrls: dict[str, CtrlView], cfg: dict[str, Any]):
        self.qmp, self.ctrls = qmp, ctrls
        self.configured = {e["id"]: e for e in cfg["objects"] + cfg["devices"]}
        self.insts: dict[str, Inst] = {}

    def refresh(self) -> None:
        for c in self.ctrls.values():
            c.refresh()

    def get(self, path: str, prop: str) -> Any:
        return self.qmp("qom-get", {"path": path, "property": prop})

    def subsystem_ctrls(self, subsys_path: str) -> list[CtrlView]:
        """The connected controllers that report the subsystem's NQN in Identify."""
        nqn = self.get(subsys_path, "subnqn")
        return [c for c in self.ctrls.values() if c.subnqn == nqn]

    def ns_seen(self, inst: Inst) -> list[tuple[CtrlView, NsView]]:
        """Every (controller, active namespace) whose UUID descriptor is this namespace's uuid."""
        want = uuid_mod.UUID(inst.values["uuid"]).bytes
        found = [(c, c.ns[n]) for c in self.ctrls.values() for n in c.active if c.ns[n].descriptors.get(3) == want]
        assert found, f"{inst.id}: no connected controller shows a namespace with uuid {inst.values['uuid']}"
        return found

    def ns_view(self, inst: Inst) -> NsView:
        return self.ns_seen(inst)[0][1]

    def ctrl(self, inst: Inst) -> CtrlView:
        return self.ctrls[inst.id]

    def expected(self, inst: Inst, prop: str, default: Any) -> Any:
        """What the user configured (or ``default``) for properties no host can observe."""
        return self.configured.get(inst.id, {}).get(prop, default)


Check = Callable[[World, Inst, Any], None]


def eq(got: Any, want: Any, what: str) -> None:
    assert got == want, f"{what}: QOM says {got!r}, the host sees {want!r}"


# ------------------------------------------------------------------------------ checks
def _subsys_nqn(w: World, inst: Inst, v: Any) -> None:
    ctrls = [c for c in w.ctrls.values() if c.id in inst.values["controllers"]]
    assert ctrls, f"{inst.id}: no controller of this subsystem is connected"
    for c in ctrls:
        eq(v, c.subnqn, f"{inst.id}.subnqn vs Identify Controller SUBNQN of {c.id}")


def _subsys_uuid(w: World, inst: Inst, v: Any) -> None:
    uuid_mod.UUID(v)
    if "subnqn" in w.configured.get(inst.id, {}):
        return  # not guest-visible when the NQN is given: valid is all there is to check
    eq(inst.values["subnqn"], f"nqn.2014-08.org.nvmexpress:uuid:{v}", f"{inst.id}: SUBNQN derived from uuid")
    eq(v, w.expected(inst, "uuid", v), f"{inst.id}.uuid as configured")


def _subsys_controllers(w: World, inst: Inst, v: Any) -> None:
    eq(sorted(v), sorted(c.id for c in w.subsystem_ctrls(inst.path)), f"{inst.id}.controllers")


def _subsys_namespaces(w: World, inst: Inst, v: Any) -> None:
    nsids = sorted(w.insts[n].values["nsid"] for n in v)
    for c in w.subsystem_ctrls(inst.path):
        eq(nsids, c.allocated, f"{inst.id}.namespaces' nsids vs the Allocated Namespace List of {c.id}")


def _capacities(c: CtrlView) -> tuple[int, int]:
    """Identify Controller TNVMCAP and UNVMCAP."""
    return int.from_bytes(c.idctrl[280:296], "little"), int.from_bytes(c.idctrl[296:312], "little")


def _configured_bytes(w: World, inst: Inst) -> int:
    """Sizes of the subsystem's namespaces that the configuration made (not the host)."""
    return sum(w.get(f"/objects/{n}", "size") for n in inst.values["namespaces"] if n in w.configured)


def _subsys_ns_mgmt_capacity(w: World, inst: Inst, v: Any) -> None:
    """TNVMCAP = configured namespaces + the capacity for host-created ones."""
    for c in w.subsystem_ctrls(inst.path):
        eq(v, _capacities(c)[0] - _configured_bytes(w, inst), f"{inst.id}.ns-mgmt-capacity vs TNVMCAP of {c.id}"
           " minus the configured namespaces")


def _mutate_ns_mgmt_capacity(w: World, inst: Inst) -> None:
    """Grow the capacity by 64 MiB and restore it: UNVMCAP follows at once."""
    old = inst.values["ns-mgmt-capacity"]
    ctrls = w.subsystem_ctrls(inst.path)
    assert ctrls, f"{inst.id}: no controller to observe"
    before = {c.id: _capacities(c)[1] for c in ctrls}
    for new, delta in ((old + (64 << 20), 64 << 20), (old, 0)):
        w.qmp("qom-set", {"path": inst.path, "property": "ns-mgmt-capacity", "value": new})
        eq(w.get(inst.path, "ns-mgmt-capacity"), new, f"{inst.id}.ns-mgmt-capacity after qom-set")
        for c in ctrls:
            c.idctrl = c.host.identify(0x01)
            eq(_capacities(c)[1], before[c.id] + delta, f"{c.id}: UNVMCAP after qom-set ns-mgmt-capacity={new}")


def _ns_subsys(w: World, inst: Inst, v: Any) -> None:
    nqn = w.get(v, "subnqn")
    for c, _ in w.ns_seen(inst):
        eq(nqn, c.subnqn, f"{inst.id}.subsys's NQN vs {c.id}, which shows the namespace")


def _ns_nsid(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ns_view(inst).nsid, f"{inst.id}.nsid")


def _ns_uuid(w: World, inst: Inst, v: Any) -> None:
    w.ns_view(inst)  # found by its UUID descriptor
    eq(v, w.expected(inst, "uuid", v), f"{inst.id}.uuid as configured")


def _ns_eui64(w: World, inst: Inst, v: Any) -> None:
    view = w.ns_view(inst)
    eq(v, view.idns[120:128].hex(), f"{inst.id}.eui64 vs Identify Namespace EUI64")
    eq(v, view.descriptors[1].hex(), f"{inst.id}.eui64 vs the EUI-64 descriptor")
    assert v != "0" * 16, f"{inst.id}: an all-zero EUI-64 is 'not reported'"


def _ns_nguid(w: World, inst: Inst, v: Any) -> None:
    view = w.ns_view(inst)
    eq(v, view.idns[104:120].hex(), f"{inst.id}.nguid vs Identify Namespace NGUID")
    eq(v, view.descriptors[2].hex(), f"{inst.id}.nguid vs the NGUID descriptor")


def _ns_attached(w: World, inst: Inst, v: Any) -> None:
    nsid = inst.values["nsid"]
    for c in w.subsystem_ctrls(inst.values["subsys"]):
        eq(c.id in v, nsid in c.active, f"{inst.id}.attached lists {c.id} vs nsid {nsid} in its Active NS List")


def _ns_attached_to(w: World, inst: Inst, v: Any) -> None:
    nsid = inst.values["nsid"]
    showing = sorted(c.id for c in w.subsystem_ctrls(inst.values["subsys"]) if nsid in c.active)
    if "all" in v:
        eq(showing, sorted(c.id for c in w.subsystem_ctrls(inst.values["subsys"])), f"{inst.id}.attached-to all")
    else:
        eq(sorted(v), showing, f"{inst.id}.attached-to vs the controllers showing nsid {nsid}")


def _ns_size(w: World, inst: Inst, v: Any) -> None:
    view = w.ns_view(inst)
    eq(v, view.nsze << view.lbads, f"{inst.id}.size vs NSZE x LBA data size")
    eq(v, int.from_bytes(view.idns[48:64], "little"), f"{inst.id}.size vs NVMCAP")


def _ns_file(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.expected(inst, "file", ""), f"{inst.id}.file as configured")


def _ns_direct(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.expected(inst, "direct", False), f"{inst.id}.direct as configured (O_DIRECT on the file)")


def _ns_backend(w: World, inst: Inst, v: Any) -> None:
    conf = w.configured.get(inst.id, {})
    eq(v, conf.get("backend", "file" if conf.get("file") else "memory"), f"{inst.id}.backend (default resolved)")


def _ns_lba_size(w: World, inst: Inst, v: Any) -> None:
    eq(v, 1 << w.ns_view(inst).lbads, f"{inst.id}.lba-size vs the LBA format in use (FLBAS)")


def _ns_blocks(offset: int, fmt: str) -> Check:
    def check(w: World, inst: Inst, v: Any) -> None:
        view = w.ns_view(inst)
        (blocks,) = struct.unpack_from(fmt, view.idns, offset)
        eq(v, blocks << view.lbads, f"{inst.id}: Identify Namespace field at {offset} in bytes")
    return check


def _ns_msrc(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ns_view(inst).idns[80] + 1, f"{inst.id}.msrc vs MSRC (0's based)")


def _ns_ms(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ns_view(inst).lbaf & 0xFFFF, f"{inst.id}.ms vs the LBA format's MS")


def _ns_mset(w: World, inst: Inst, v: Any) -> None:
    eq(v, (w.ns_view(inst).idns[26] >> 4) & 1, f"{inst.id}.mset vs FLBAS bit 4 (extended LBA)")


def _ns_pi(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ns_view(inst).idns[29] & 0x7, f"{inst.id}.pi vs DPS bits 2:0")


def _ns_pil(w: World, inst: Inst, v: Any) -> None:
    eq(v, (w.ns_view(inst).idns[29] >> 3) & 1, f"{inst.id}.pil vs DPS bit 3")


def _ns_pif(w: World, inst: Inst, v: Any) -> None:
    eq(v, (w.ns_view(inst).elbaf >> 7) & 0x3, f"{inst.id}.pif vs the Extended LBA format's PIF")


def _ns_nlbas(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ns_view(inst).nsze, f"{inst.id}.nlbas vs NSZE")


def _zone_size(w: World, inst: Inst, v: Any) -> None:
    view = w.ns_view(inst)
    eq(v, view.lbafe[0] << view.lbads, f"{inst.id}.zone-size vs LBAFE ZSZE x LBA data size")


def _zone_capacity(w: World, inst: Inst, v: Any) -> None:
    # ZCAP is in the zone descriptors (an I/O command; tests/test_guest_zns.py compares them
    # with 'info zones'): here, against the zone report the monitor gives.
    report = w.qmp("x-nvme-query-zones", {"namespace": inst.id, "count": 1})
    eq(v, report["zones"][0]["zcap"] * report["lba-size"], f"{inst.id}.zone-capacity vs ZCAP x LBA data size")


def _zone_limit(offset: int) -> Check:
    def check(w: World, inst: Inst, v: Any) -> None:
        (raw,) = struct.unpack_from("<I", w.ns_view(inst).idns_zoned, offset)
        eq(v, 0 if raw == 0xFFFFFFFF else raw + 1, f"{inst.id}: zoned Identify Namespace field at {offset} + 1")
    return check


def _zone_zdes(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ns_view(inst).lbafe[1] * 64, f"{inst.id}.zone-descriptor-extension-size vs LBAFE ZDES x 64")


def _zone_cross_read(w: World, inst: Inst, v: Any) -> None:
    eq(v, bool(w.ns_view(inst).idns_zoned[2] & 1), f"{inst.id}.zone-cross-read vs OZCS.RAZB")


def _ctrl_subsys(w: World, inst: Inst, v: Any) -> None:
    eq(w.get(v, "subnqn"), w.ctrl(inst).subnqn, f"{inst.id}.subsys's NQN vs Identify Controller SUBNQN")


def _ctrl_socket(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ctrl(inst).socket, f"{inst.id}.socket vs the socket the host connected to")


def _ctrl_text(start: int, end: int) -> Check:
    def check(w: World, inst: Inst, v: Any) -> None:
        eq(v, _text(w.ctrl(inst).idctrl, start, end), f"{inst.id}: Identify Controller bytes {start}..{end - 1}")
    return check


def _ctrl_byte(offset: int) -> Check:
    def check(w: World, inst: Inst, v: Any) -> None:
        eq(v, w.ctrl(inst).idctrl[offset], f"{inst.id}: Identify Controller byte {offset}")
    return check


def _ctrl_cntlid(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ctrl(inst).cntlid, f"{inst.id}.cntlid vs Identify Controller CNTLID")


def _ctrl_ioqpairs(w: World, inst: Inst, v: Any) -> None:
    nq = w.ctrl(inst).nq
    eq(v, (nq & 0xFFFF) + 1, f"{inst.id}.max-ioqpairs vs Get Features Number of Queues NSQA")
    eq(v, (nq >> 16) + 1, f"{inst.id}.max-ioqpairs vs Get Features Number of Queues NCQA")


def _ctrl_vectors(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ctrl(inst).host.msix_vectors, f"{inst.id}.max-intr-vectors vs the MSI-X IRQ count")


def _ctrl_mqes(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.ctrl(inst).cap & 0xFFFF, f"{inst.id}.mqes vs CAP.MQES")


def _ctrl_retention(w: World, inst: Inst, v: Any) -> None:
    eq(v, w.expected(inst, "max-aer-retention", 100), f"{inst.id}.max-aer-retention as configured")


def _ctrl_doorbells(w: World, inst: Inst, v: Any) -> None:
    eq(v, "mmap" if w.ctrl(inst).host.doorbell_mmap else "trap", f"{inst.id}.doorbells vs BAR0's mmap area")


def _ctrl_ocp(w: World, inst: Inst, v: Any) -> None:
    supported = struct.unpack_from("<256I", w.ctrl(inst).host.log(0x00, 1024))
    eq(v, bool(supported[0xC0] & 1), f"{inst.id}.ocp vs Supported Log Pages entry C0h")


def _ctrl_msix(w: World, inst: Inst, v: Any) -> None:
    host = w.ctrl(inst).host
    present = host.client.capability(CAP_ID_MSIX) is not None
    eq(v, present and host.msix_vectors > 0, f"{inst.id}.msix vs the MSI-X capability and IRQ count")


def _ctrl_poll_max_ns(w: World, inst: Inst, v: Any) -> None:
    row, = w.qmp("x-nvme-query-dataplane", {"device": inst.id})
    assert row["spin-window-us"] * 1000 <= v, f"{inst.id}.poll-max-ns {v} vs its IOThread's spin window {row}"


def _ctrl_connected(w: World, inst: Inst, v: Any) -> None:
    eq(v, True, f"{inst.id}.connected while the host is connected")


#: (type that declares it, property) -> check.  Inherited properties use their declaring type.
CHECKS: dict[tuple[str, str], Check] = {
    ("x-nvme-subsystem", "subnqn"): _subsys_nqn,
    ("x-nvme-subsystem", "uuid"): _subsys_uuid,
    ("x-nvme-subsystem", "controllers"): _subsys_controllers,
    ("x-nvme-subsystem", "namespaces"): _subsys_namespaces,
    ("x-nvme-subsystem", "ns-mgmt-capacity"): _subsys_ns_mgmt_capacity,
    ("x-nvme-ns", "subsys"): _ns_subsys,
    ("x-nvme-ns", "nsid"): _ns_nsid,
    ("x-nvme-ns", "uuid"): _ns_uuid,
    ("x-nvme-ns", "eui64"): _ns_eui64,
    ("x-nvme-ns", "nguid"): _ns_nguid,
    ("x-nvme-ns", "attached-to"): _ns_attached_to,
    ("x-nvme-ns", "attached"): _ns_attached,
    ("x-nvme-ns-nvm", "size"): _ns_size,
    ("x-nvme-ns-nvm", "file"): _ns_file,
    ("x-nvme-ns-nvm", "backend"): _ns_backend,
    ("x-nvme-ns-nvm", "direct"): _ns_direct,
    ("x-nvme-ns-nvm", "lba-size"): _ns_lba_size,
    ("x-nvme-ns-nvm", "ms"): _ns_ms,
    ("x-nvme-ns-nvm", "mset"): _ns_mset,
    ("x-nvme-ns-nvm", "pi"): _ns_pi,
    ("x-nvme-ns-nvm", "pil"): _ns_pil,
    ("x-nvme-ns-nvm", "pif"): _ns_pif,
    ("x-nvme-ns-nvm", "mssrl"): _ns_blocks(74, "<H"),
    ("x-nvme-ns-nvm", "mcl"): _ns_blocks(76, "<I"),
    ("x-nvme-ns-nvm", "msrc"): _ns_msrc,
    ("x-nvme-ns-nvm", "nlbas"): _ns_nlbas,
    ("x-nvme-ns-zoned", "zone-size"): _zone_size,
    ("x-nvme-ns-zoned", "zone-capacity"): _zone_capacity,
    ("x-nvme-ns-zoned", "zone-max-open"): _zone_limit(8),
    ("x-nvme-ns-zoned", "zone-max-active"): _zone_limit(4),
    ("x-nvme-ns-zoned", "zone-descriptor-extension-size"): _zone_zdes,
    ("x-nvme-ns-zoned", "zone-cross-read"): _zone_cross_read,
    ("x-nvme-ctrl", "subsys"): _ctrl_subsys,
    ("x-nvme-ctrl", "socket"): _ctrl_socket,
    ("x-nvme-ctrl", "cntlid"): _ctrl_cntlid,
    ("x-nvme-ctrl", "serial"): _ctrl_text(4, 24),
    ("x-nvme-ctrl", "model"): _ctrl_text(24, 64),
    ("x-nvme-ctrl", "firmware"): _ctrl_text(64, 72),
    ("x-nvme-ctrl", "max-ioqpairs"): _ctrl_ioqpairs,
    ("x-nvme-ctrl", "max-intr-vectors"): _ctrl_vectors,
    ("x-nvme-ctrl", "mqes"): _ctrl_mqes,
    ("x-nvme-ctrl", "max-aer-retention"): _ctrl_retention,
    ("x-nvme-ctrl", "aerl"): _ctrl_byte(259),
    ("x-nvme-ctrl", "mdts"): _ctrl_byte(77),
    ("x-nvme-ctrl", "doorbells"): _ctrl_doorbells,
    ("x-nvme-ctrl", "ocp"): _ctrl_ocp,
    ("x-nvme-ctrl", "msix"): _ctrl_msix,
    ("x-nvme-ctrl", "poll-max-ns"): _ctrl_poll_max_ns,
    ("x-nvme-ctrl", "connected"): _ctrl_connected,
}


# ------------------------------------------------------------------------------ mutable properties
AEN_NS_CHANGED = 0x02 | (0x00 << 8) | (0x04 << 16)   # notice, namespace attribute changed, log 04h


def _changed_ns_list(c: CtrlView) -> list[int]:
    return _u32_list(c.host.log(0x04, 4096))


def _mutate_attached_to(w: World, inst: Inst) -> None:
    """Detach from every controller, then restore: each change reaches the host at once
    (Namespace Attribute Changed AEN, Changed Namespace List, Active Namespace List)."""
    old = inst.values["attached-to"]
    nsid = inst.values["nsid"]
    ctrls = [c for c in w.subsystem_ctrls(inst.values["subsys"]) if nsid in c.active]
    assert ctrls, f"{inst.id}: attached nowhere, nothing to observe"
    for c in ctrls:           # nothing stale may answer the request made for this change
        c.host.request_aen()
        if c.host.aens(timeout=0.2):
            _changed_ns_list(c)
            c.host.request_aen()
    for new, present in (([], False), (old, True)):
        w.qmp("qom-set", {"path": inst.path, "property": "attached-to", "value": new})
        eq(w.get(inst.path, "attached-to"), new, f"{inst.id}.attached-to after qom-set")
        for c in ctrls:
            assert AEN_NS_CHANGED in c.host.aens(timeout=3.0), f"{c.id}: no AEN for {inst.id} attached-to={new}"
            assert nsid in _changed_ns_list(c), f"{c.id}: nsid {nsid} not in the Changed Namespace List"
            c.host.request_aen()
            eq(nsid in _u32_list(c.host.identify(0x02)), present, f"{c.id}: nsid {nsid} active after qom-set")
            eq(c.id in w.get(inst.path, "attached"), present, f"{inst.id}.attached after qom-set")


#: Properties ``qom-set`` may change at run time -> how the test changes one and checks the host saw it.
MUTABLE_CHECKS: dict[tuple[str, str], Callable[[World, Inst], None]] = {
    ("x-nvme-ns", "attached-to"): _mutate_attached_to,
    ("x-nvme-subsystem", "ns-mgmt-capacity"): _mutate_ns_mgmt_capacity,
}


# ------------------------------------------------------------------------------ the walk
def _declaring_type(types: dict[str, dict[str, Any]], qmp: Qmp, typename: str, prop: str) -> str:
    """The highest ancestor that declares ``prop`` (inherited properties share one check)."""
    owner, t = typename, types[typename].get("parent")
    while t in types:
        if any(p["name"] == prop for p in qmp("qom-list-properties", {"typename": t})):
            owner = t
        t = types[t].get("parent")
    return owner


def _qtree_values(text: str) -> dict[str, dict[str, str]]:
    """``info qtree`` -> {id: {property: printed value}}."""
    out: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("dev: "):
            current = out.setdefault(s.split('id "', 1)[1].rstrip('"'), {})
        elif s.startswith("bus: ") or s.startswith("attached: "):
            current = None
        elif current is not None and " = " in s:
            name, value = s.split(" = ", 1)
            current[name] = value
    return out


class Walk:
    """One pass over every property of every instance; failures are collected, then reported."""

    def __init__(self, w: World):
        self.w = w
        self.failures: list[str] = []
        self.types = {t["name"]: t for t in w.qmp("qom-list-types", {"abstract": True})
                      if t["name"].startswith("x-nvme-")}
        self.declared = {name: [p["name"] for p in w.qmp("qom-list-properties", {"typename": name})]
                         for name in self.types}
        self.owner = {(t, p): _declaring_type(self.types, w.qmp, t, p) for t, ps in self.declared.items() for p in ps}

    def fail(self, text: str) -> None:
        self.failures.append(text)

    def instances(self) -> dict[str, Inst]:
        out = {}
        for container in ("/objects", "/machine/peripheral"):
            for p in self.w.qmp("qom-list", {"path": container}):
                if not p["type"].startswith("child<x-nvme-"):
                    continue
                path = f"{container}/{p['name']}"
                typename = self.w.get(path, "type")
                out[p["name"]] = Inst(path, p["name"], typename, {})
        return out

    def run(self, phase: str) -> None:
        w = self.w
        w.refresh()
        w.insts = self.instances()
        qtree = _qtree_values(w.qmp("human-monitor-command", {"command-line": "info qtree"}))
        dump = {e["id"]: e for e in (lambda d: d["objects"] + d["devices"])(w.qmp("x-nvme-query-config"))}
        concrete = {t for t, info in self.types.items() if not info.get("abstract")}
        missing_types = concrete - {i.type for i in w.insts.values()} - set(NOT_CREATABLE_YET)
        for t in sorted(missing_types):
            self.fail(f"{phase}: no instance of {t} in the test topology (add one to CONFIG)")
        for inst in w.insts.values():
            listed = [p for p in w.qmp("qom-list", {"path": inst.path}) if not p["type"].startswith("child<")]
            names = [p["name"] for p in listed]
            if names != ["type", *self.declared[inst.type]]:
                self.fail(f"{phase}: qom-list {inst.path} lists {names}, the type declares {self.declared[inst.type]}")
            for name in names:
                inst.values[name] = w.get(inst.path, name)
        for inst in w.insts.values():
            settable = {k for k in dump.get(inst.id, {}) if k not in ("qom-type", "driver", "id")}
            for name, value in inst.values.items():
                if name == "type":
                    continue
                where = f"{phase}: {inst.id}.{name}"
                check = CHECKS.get((self.owner[(inst.type, name)], name))
                if check is None:
                    self.fail(f"{where}: no check in CHECKS for ({self.owner[(inst.type, name)]!r}, {name!r})")
                else:
                    try:
                        check(w, inst, value)
                    except AssertionError as e:
                        self.fail(f"{where}: {e}")
                printed = qtree.get(inst.id, {}).get(name)
                if printed != format_value(value):
                    self.fail(f"{where}: info qtree prints {printed!r}, qom-get says {value!r}")
                if name in settable:
                    dumped = dump[inst.id][name]
                    if (dumped if name != "subsys" else f"/objects/{dumped}") != value:
                        self.fail(f"{where}: the -readconfig dump holds {dumped!r}, qom-get says {value!r}")

    def check_qom_set(self, phase: str) -> None:
        """Every property that cannot change refuses with its name; mutable ones take effect."""
        w = self.w
        for inst in w.insts.values():
            mutable = set()
            for name, value in inst.values.items():
                try:
                    w.qmp("qom-set", {"path": inst.path, "property": name, "value": value})
                    mutable.add(name)
                except ExecuteError as e:
                    if f"'{inst.type}.{name}'" not in str(e):
                        self.fail(f"{phase}: qom-set {inst.id}.{name} refused without naming it: {e}")
                    continue
            for name in sorted(mutable):
                key = (self.owner[(inst.type, name)], name)
                if key not in MUTABLE_CHECKS:
                    self.fail(f"{phase}: {inst.id}.{name} accepts qom-set but MUTABLE_CHECKS has no {key}")
                else:
                    MUTABLE_CHECKS[key](w, inst)

    def report(self) -> None:
        assert not self.failures, "\n".join(self.failures)


def format_index(idns: bytes, lba_size: int, ms: int) -> int:
    """The index of the LBA format with this data and metadata size in an Identify Namespace."""
    for i in range(idns[25] + 1):   # NLBAF is 0's based
        (entry,) = struct.unpack_from("<I", idns, 128 + 4 * i)
        if 1 << ((entry >> 16) & 0xFF) == lba_size and entry & 0xFFFF == ms:
            return i
    raise AssertionError(f"no LBA format {lba_size}+{ms} in Identify Namespace")


@pytest.fixture
def running(tmp_path: Path):
    backing = tmp_path / "ns3.img"
    backing.write_bytes(bytes(2 << 20))
    cfg = config(backing)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    run_dir = tmp_path / "run"
    with NvshellProcess(run_dir, "-readconfig", str(tmp_path / "config.json")) as nv:
        nv.wait_socket(run_dir / "ctrl1.sock")
        qmp = Qmp(run_dir / "qmp.sock")
        hosts: dict[str, CtrlView] = {}
        try:
            for cid in ("ctrl0", "ctrl1"):
                sock = str(run_dir / f"{cid}.sock")
                hosts[cid] = CtrlView(cid, sock, notified_host(sock))
            yield World(qmp, hosts, cfg)
        finally:
            for c in hosts.values():
                c.host.close()
            qmp.close()


def test_every_property_reads_back_what_the_host_sees(running: World) -> None:
    w = running
    walk = Walk(w)
    for typename, message in NOT_CREATABLE_YET.items():
        desc = w.qmp.error("object-add", {"qom-type": typename, "id": "probe", "subsys": "subsys0", "size": 1 << 20})
        assert message in desc, f"{typename} can be created now ({desc!r}): add it to CONFIG and CHECKS"
    walk.run("as configured")
    walk.check_qom_set("as configured")
    walk.report()

    # The host formats ns1 to 4 KiB blocks with 8 bytes of interleaved metadata carrying type 1
    # protection information in its first bytes, and creates (then attaches) a namespace of
    # its own with 4 KiB blocks; LBA format indexes are looked up as a host does.
    host = w.ctrls["ctrl0"]
    view = w.ns_view(w.insts["ns1"])
    ns1_nsid = view.nsid
    fmt_pi = format_index(view.idns, 4096, 8)
    host.host.format_nvm(ns1_nsid, lbaf=fmt_pi, mset=1, pi=1, pil=1)
    fmt_plain = format_index(view.idns, 4096, 0)
    nsid = host.host.ns_create(nsze=1024, flbas=(fmt_plain & 0xF) | ((fmt_plain >> 4) << 5))
    host.host.ns_attach(nsid, [host.cntlid])
    walk.run("after Format NVM and Namespace Management")
    walk.report()
    created = [i for i in w.insts.values() if i.type.startswith("x-nvme-ns") and i.values.get("nsid") == nsid
               and i.values["subsys"] == "/objects/subsys0"]
    assert len(created) == 1, f"the host-created namespace {nsid} has no object: {sorted(w.insts)}"
    ns1 = w.insts["ns1"].values
    assert (ns1["lba-size"], ns1["ms"], ns1["mset"], ns1["pi"], ns1["pil"]) == (4096, 8, 1, 1, 1), ns1
    assert created[0].values["lba-size"] == 4096 and created[0].values["ms"] == 0
    assert created[0].values["size"] == 4 << 20 and created[0].values["attached"] == ["ctrl0"]
    walk.check_qom_set("after Format NVM and Namespace Management")
    walk.run("after qom-set")
    walk.report()


def test_config_dump_rebuilds_what_the_host_saw(tmp_path: Path) -> None:
    """``info config`` after a host's Format NVM and Namespace Management, fed back with
    ``-readconfig``, gives a device that identifies the same to the host (LBA formats,
    identifiers, namespaces) and dumps the same configuration."""
    run_dir = tmp_path / "run"

    def identify_all(h: NvmeTestHost) -> dict[int, tuple[bytes, bytes]]:
        return {n: (h.identify(0x00, nsid=n), h.identify(0x03, nsid=n)) for n in _u32_list(h.identify(0x02))}

    with NvshellProcess(run_dir) as nv:
        qmp = Qmp(run_dir / "qmp.sock")
        try:
            with notified_host(run_dir / "ctrl0.sock") as h:
                idns = h.identify(0x00, nsid=1)
                plain4k = format_index(idns, 4096, 0)
                h.format_nvm(1, lbaf=plain4k)
                nsid = h.ns_create(nsze=512, flbas=(plain4k & 0xF) | ((plain4k >> 4) << 5))
                h.ns_attach(nsid, [struct.unpack_from("<H", h.identify(0x01), 78)[0]])
                seen = identify_all(h)
            dump = qmp.hmp("info config")
        finally:
            qmp.close()
    assert sorted(seen) == [1, nsid], seen
    (tmp_path / "dump.json").write_text(dump)
    with NvshellProcess(run_dir, "-readconfig", str(tmp_path / "dump.json")) as nv:
        qmp = Qmp(run_dir / "qmp.sock")
        try:
            with notified_host(run_dir / "ctrl0.sock") as h:
                assert identify_all(h) == seen
            assert json.loads(qmp.hmp("info config")) == json.loads(dump)
        finally:
            qmp.close()
