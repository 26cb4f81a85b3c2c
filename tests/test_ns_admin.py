"""Namespace Management (0Dh) and Namespace Attachment (15h).

The commands run on real controllers in a real subsystem, sent by ``NvmeTestHost`` over
vfio-user; the namespaces they create are the real ones (``admin_ns._default_factory``)."""

from __future__ import annotations

import struct
from typing import Any, Iterator

import pytest

from nvshell.device.nvme import admin_ns
from nvshell.device.nvme.spec import CSI
from nvshell.device.nvme.status import Status
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.testing import NvmeHostError, NvmeTestHost, status
from tests.test_subsystem import NOTICE, clear_events, notified, pending

NS_MGMT = 0x0D
NS_ATTACH = 0x15


@pytest.fixture(autouse=True)
def made(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The namespaces Namespace Management created (the real factory's), in order."""
    made: list[Any] = []

    def factory(size: int, lba_size: int, shared: bool, **fmt: int) -> Any:
        ns = admin_ns._default_factory(size, lba_size, shared, **fmt)
        made.append(ns)
        return ns
    monkeypatch.setattr(admin_ns, "namespace_factory", factory)
    return made


@pytest.fixture
def subsys(tmp_path) -> Iterator[tuple[Subsystem, NvmeTestHost, NvmeTestHost, list[tuple]]]:
    s = Subsystem(capacity=1 << 30)
    a, b = notified(tmp_path, s), notified(tmp_path, s)
    events: list[tuple] = []
    s.listeners.append(lambda kind, nsid, ns, ctrl: events.append((kind, nsid, ctrl)))
    yield s, a, b, events
    a.close()
    b.close()


def settle(*hosts: NvmeTestHost) -> None:
    """Wait until each controller's IOThread has run what was queued for it: a command on one
    controller changes the others by submitting to their IOThreads without waiting (the
    subsystem's rule against IOThreads blocking on each other)."""
    for host in hosts:
        host.run(lambda: None)


def create_data(nsze: int, ncap: int | None = None, flbas: int = 0, nmic: int = 1, dps: int = 0) -> bytes:
    data = bytearray(4096)
    struct.pack_into("<QQ", data, 0, nsze, nsze if ncap is None else ncap)
    data[26] = flbas
    data[29] = dps
    data[30] = nmic
    return bytes(data)


def create(host: NvmeTestHost, data: bytes, csi: int = CSI.NVM) -> int:
    e, _ = host.admin(NS_MGMT, data=data, cdw10=0, cdw11=csi << 24)
    return int(host.check(e, "create").dw0)


def create_error(host: NvmeTestHost, data: bytes, csi: int = CSI.NVM) -> int:
    with pytest.raises(NvmeHostError) as e:
        create(host, data, csi)
    return int(e.value.status)


def delete(host: NvmeTestHost, nsid: int) -> None:
    host.check(host.cmd(NS_MGMT, nsid=nsid, cdw10=1), "delete")


def attach(host: NvmeTestHost, nsid: int, cntlids: list[int], sel: int = 0) -> None:
    data = struct.pack(f"<H{len(cntlids)}H", len(cntlids), *cntlids)
    host.check(host.admin(NS_ATTACH, nsid=nsid, data=data, cdw10=sel)[0], "attach")


def attach_error(host: NvmeTestHost, nsid: int, cntlids: list[int], sel: int = 0) -> int:
    with pytest.raises(NvmeHostError) as e:
        attach(host, nsid, cntlids, sel)
    return int(e.value.status)


def test_create(subsys, made) -> None:
    s, a, b, events = subsys
    nsid = create(a, create_data(2048))
    assert nsid == 1
    ns = s.namespaces[1]
    assert ns is made[0] and ns.lba_size == 512 and ns.nlbas == 2048 and ns.shared
    assert a.ctrl.namespaces == {} and s.attached_controllers(1) == []   # created, not attached
    assert events == [("namespace-created", 1, a.ctrl)]
    assert create(a, create_data(16, flbas=4, nmic=0)) == 2
    assert s.namespaces[2].lba_size == 4096 and not s.namespaces[2].shared


def test_create_errors(subsys) -> None:
    s, a, b, events = subsys
    assert create_error(a, create_data(0)) == Status.INVALID_FIELD
    assert create_error(a, create_data(8, 16)) == Status.INVALID_FIELD
    assert create_error(a, create_data(8, 4)) == Status.THIN_PROVISIONING_NOT_SUPPORTED
    assert create_error(a, create_data(8, flbas=8)) == Status.INVALID_FORMAT      # no 9th format
    assert create_error(a, create_data(8, flbas=0x10)) == Status.INVALID_FORMAT   # MSET without metadata
    assert create_error(a, create_data(8, dps=1)) == Status.INVALID_FORMAT        # PI without metadata
    assert create_error(a, create_data(8, flbas=5, dps=0x10)) == Status.INVALID_FIELD  # reserved DPS bit
    assert create_error(a, create_data(8, flbas=1, dps=5)) == Status.INVALID_FIELD    # PI type 5
    assert create_error(a, create_data((1 << 30) // 512 + 1)) == Status.NS_INSUFFICIENT_CAPACITY
    assert create_error(a, create_data(8), csi=1) == Status.INVALID_IO_COMMAND_SET   # key value: not here
    assert status(a.cmd(NS_MGMT, cdw10=2)) == Status.INVALID_FIELD
    assert s.namespaces == {} and events == []


def test_create_fills_capacity_and_nsids(subsys, tmp_path) -> None:
    s, a, b, _ = subsys
    create(a, create_data((1 << 30) // 512))
    assert create_error(a, create_data(1)) == Status.NS_INSUFFICIENT_CAPACITY
    s2 = Subsystem(max_nsid=1)
    c = NvmeTestHost.serve(tmp_path, name="other", subsystem=s2).enable()
    create(c, create_data(1))
    assert create_error(c, create_data(1)) == Status.NSID_UNAVAILABLE
    c.close()


def test_delete(subsys, made) -> None:
    s, a, b, events = subsys
    n1 = create(a, create_data(8))
    n2 = create(a, create_data(8))
    attach(a, n1, [1, 2])
    settle(b)
    clear_events(a)
    clear_events(b)
    events.clear()
    delete(a, n1)
    settle(b)
    assert n1 not in s.namespaces and a.ctrl.namespaces == {} and b.ctrl.namespaces == {}
    assert pending(a) == [NOTICE] and pending(b) == [NOTICE]
    assert not made[0].ready and made[1].ready   # the deleted one closed
    assert events == [("namespace-deleted", n1, a.ctrl)]
    for nsid, expected in ((n1, Status.INVALID_FIELD), (0, Status.INVALID_NSID), (257, Status.INVALID_NSID)):
        with pytest.raises(NvmeHostError) as e:
            delete(a, nsid)
        assert e.value.status == expected
    create(a, create_data(8))
    delete(a, 0xFFFFFFFF)
    assert s.namespaces == {}
    assert [e[0] for e in events].count("namespace-deleted") == 3
    assert n2 not in s.namespaces


def test_attach_detach(subsys) -> None:
    s, a, b, events = subsys
    nsid = create(a, create_data(8))
    events.clear()
    attach(a, nsid, [1, 2])
    settle(b)
    assert nsid in a.ctrl.namespaces and nsid in b.ctrl.namespaces
    # QEMU behaviour: every controller in the list, the processing one included, gets the AEN.
    assert pending(a) == [NOTICE] and pending(b) == [NOTICE]
    assert a.ctrl.changed_namespaces == [nsid] == b.ctrl.changed_namespaces
    assert events == [("attached", nsid, a.ctrl), ("attached", nsid, b.ctrl)]
    assert attach_error(a, nsid, [2]) == Status.NS_ALREADY_ATTACHED
    clear_events(a)
    clear_events(b)
    attach(b, nsid, [1], sel=1)
    settle(a)
    assert nsid not in a.ctrl.namespaces and nsid in b.ctrl.namespaces and pending(a) == [NOTICE]
    assert pending(b) == [] and a.ctrl.changed_namespaces == [nsid] and b.ctrl.changed_namespaces == []
    assert attach_error(a, nsid, [1], sel=1) == Status.NS_NOT_ATTACHED
    assert events[-1] == ("detached", nsid, a.ctrl)


def test_attach_errors(subsys) -> None:
    s, a, b, events = subsys
    nsid = create(a, create_data(8))
    assert attach_error(a, nsid, [9]) == Status.CONTROLLER_LIST_INVALID
    assert attach_error(a, nsid, [1, 1]) == Status.CONTROLLER_LIST_INVALID
    assert attach_error(a, nsid, [1, 9]) == Status.CONTROLLER_LIST_INVALID
    assert a.ctrl.namespaces == {}   # all-or-nothing: nothing changed
    assert attach_error(a, 0, [1]) == Status.INVALID_NSID
    assert attach_error(a, 300, [1]) == Status.INVALID_NSID
    assert attach_error(a, 0xFFFFFFFF, [1]) == Status.INVALID_FIELD
    assert attach_error(a, 7, [1]) == Status.INVALID_FIELD       # not allocated
    assert attach_error(a, nsid, [1], sel=2) == Status.INVALID_FIELD
    assert attach_error(a, nsid, []) == Status.CONTROLLER_LIST_INVALID    # an empty list
    assert a.ctrl.namespaces == {}


def test_private_namespace(subsys) -> None:
    s, a, b, _ = subsys
    nsid = create(a, create_data(8, nmic=0))
    assert attach_error(a, nsid, [1, 2]) == Status.NS_IS_PRIVATE
    attach(a, nsid, [1])
    assert attach_error(a, nsid, [2]) == Status.NS_IS_PRIVATE


def test_default_factory_uses_real_namespace() -> None:
    """Namespace Management create builds a real NvmNamespace (with the requested format)."""
    ns = admin_ns._default_factory(1 << 20, 4096, False, ms=8, pi=1)
    try:
        assert ns.lba_size == 4096 and ns.nlbas == 256 and not ns.shared
        assert ns.identify_ns()[30] == 0
        assert ns.identify_ns()[26] == 5 and ns.identify_ns()[29] == 1   # FLBAS 4096+8, DPS type 1
    finally:
        ns.close()


# ------------------------------------------------- with the real controller
@pytest.fixture
def two_hosts(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Two real Controllers (own IOThreads, own guest RAM) in one Subsystem, trapped doorbells."""
    monkeypatch.setattr(admin_ns, "namespace_factory", admin_ns._default_factory)
    s = Subsystem()
    hosts = [notified(tmp_path, s, doorbells="trap") for _ in range(2)]
    yield s, hosts[0], hosts[1], status
    for h in hosts:
        h.close()


def test_end_to_end_create_attach_aen_delete(two_hosts) -> None:
    s, a, b, status = two_hosts
    assert (a.ctrl.cntlid, b.ctrl.cntlid) == (1, 2)
    buf_a, buf_b = a.alloc(4096), b.alloc(4096)

    # Identify Controller over the admin queue.
    e = a.cmd(0x06, dptr1=buf_a, cdw10=0x01)
    assert status(e) == 0
    d = a.ram.read(buf_a, 4096)
    assert struct.unpack_from("<H", d, 78)[0] == 1 and d[768:768 + len(s.subnqn)] == s.subnqn.encode()

    # Create a namespace (8 MiB, 4 KiB blocks) from A.
    a.ram.write(buf_a, create_data(2048, flbas=4))
    e = a.cmd(0x0D, dptr1=buf_a, cdw10=0)
    assert status(e) == 0 and e.dw0 == 1
    assert s.namespaces[1].lba_size == 4096 and s.namespaces[1].nlbas == 2048

    # AERs outstanding on both; attach to both from A: both get the notice.
    aer_a = a.submit(0x0C, 0)
    aer_b = b.submit(0x0C, 0)
    a.run(lambda: None)                                  # both IOThreads fetched their AER
    b.run(lambda: None)
    a.ram.write(buf_a, struct.pack("<3H", 2, 1, 2))
    cid = a.submit(0x15, 0, nsid=1, dptr1=buf_a, cdw10=0)
    notice = 2 | (0 << 8) | (4 << 16)
    got = {}
    for _ in range(2):
        e = a.reap(0)[0]
        got[e.cid] = e
    assert status(got[cid]) == 0 and got[aer_a].dw0 == notice
    e = b.reap(0)[0]
    assert e.cid == aer_b and e.dw0 == notice
    assert 1 in b.run(lambda: dict(b.ctrl.namespaces))

    # B reads the Changed NS List (clears it) and sees nsid 1 in its active list.
    e = b.cmd(0x02, nsid=0xFFFFFFFF, dptr1=buf_b, cdw10=0x04 | (1023 << 16))
    assert status(e) == 0 and struct.unpack_from("<2I", b.ram.read(buf_b, 8)) == (1, 0)
    assert b.run(b.ctrl.take_changed_namespaces, False) == []
    e = b.cmd(0x06, dptr1=buf_b, cdw10=0x02)
    assert struct.unpack_from("<2I", b.ram.read(buf_b, 8)) == (1, 0)
    e = b.cmd(0x06, nsid=1, dptr1=buf_b, cdw10=0x12)
    assert struct.unpack_from("<3H", b.ram.read(buf_b, 6)) == (2, 1, 2)

    # Errors travel as statuses.
    e = a.cmd(0x15, nsid=1, dptr1=buf_a, cdw10=0)
    assert status(e) == Status.NS_ALREADY_ATTACHED
    e = a.cmd(0x06, dptr1=buf_a, cdw10=0x09)
    assert status(e) == Status.INVALID_FIELD

    # B deletes it: B's notice type is unmasked (it read log 04), so its new AER fires.
    aer_b = b.submit(0x0C, 0)
    cid = b.submit(0x0D, 0, nsid=1, cdw10=1)
    got = {e.cid: e for e in (b.reap(0)[0], b.reap(0)[0])}   # AER completes first: same IOThread
    assert status(got[cid]) == 0 and got[aer_b].dw0 == notice
    assert s.namespaces == {}
    assert a.run(lambda: dict(a.ctrl.namespaces)) == {}
    assert a.run(a.ctrl.take_changed_namespaces, False) == [1]
