"""Subsystem: NSID/CNTLID allocation, attach/detach/delete semantics, AENs, threads.

Also hosts the small fake controller and namespace the admin-command tests
share (tests/test_identify.py, test_logs.py, test_ns_admin.py): they model only
the controller API those handlers use (docs/internals.md), so the handlers can
be tested without a VM or a vfio-user client. The fake controller's state
objects (config, SMART counters, error log, features) are the real ones.
"""

from __future__ import annotations

import struct
import threading
from typing import Any
from uuid import UUID

import pytest

from nvshell.device.iothread import IOThread
from nvshell.device.nvme.commands import ADMIN, NVM, Command
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import ErrorLog, Features, SmartStats
from nvshell.device.nvme.spec import AsyncEventType, CSI, LogPage, NoticeInfo
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.nvme.subsystem import Subsystem, SubsystemError

NOTICE = (AsyncEventType.NOTICE, NoticeInfo.NS_ATTRIBUTE_CHANGED, LogPage.CHANGED_NS_LIST)


# ------------------------------------------------------------------ fakes
class FakeNamespace:
    commands = NVM

    def __init__(self, nlbas: int = 1024, lba_size: int = 512, csi: int = CSI.NVM, shared: bool = True):
        self.nsid = 0
        self.nlbas = nlbas
        self.lba_size = lba_size
        self.csi = csi
        self.shared = shared
        self.ready = True
        self.closed = 0

    @property
    def size(self) -> int:
        return self.nlbas * self.lba_size

    def identify_ns(self) -> bytes:
        data = bytearray(4096)
        struct.pack_into("<QQQ", data, 0, self.nlbas, self.nlbas, 0)
        data[30] = 1 if self.shared else 0
        data[100:102] = b"\x07\x00"  # nvmsetid, checked by CNS 08
        return bytes(data)

    def identify_ns_csi(self) -> bytes:
        return b"\xcc" * 16

    def id_descriptors(self) -> bytes:
        return bytes([3, 16, 0, 0]) + bytes(range(16))

    def close(self) -> None:
        self.closed += 1


class FakeTransfer:
    def __init__(self, ctrl: "FakeController", length: int):
        self.ctrl = ctrl
        self.length = length

    def to_guest(self, data: bytes, offset: int = 0) -> None:
        assert len(data) <= self.length
        self.ctrl.out = bytes(data)

    def from_guest(self) -> bytes:
        return self.ctrl.host_data[:self.length].ljust(self.length, b"\0")


class FakeController:
    def __init__(self, subsystem: Subsystem | None = None, iothread: IOThread | None = None,
                 cntlid: int = 0):
        self.config = ControllerConfig(serial="SER123", oui=0x525400)
        self.subsystem = subsystem
        self.iothread = iothread
        self.cntlid = 0
        self.namespaces: dict[int, Any] = {}
        self.changed_namespaces: set[int] = set()
        self.events: list[tuple[int, int, int]] = []
        self.logs_read: list[int] = []
        self.stats = SmartStats()
        self.error_log = ErrorLog()
        self.features = Features()
        self.out = b""
        self.host_data = b""
        self.threads: list[threading.Thread] = []
        if subsystem is not None:
            subsystem.add_controller(self, cntlid)

    def _check_thread(self) -> None:
        self.threads.append(threading.current_thread())
        if self.iothread is not None and self.iothread.running:
            assert self.iothread.in_thread(), "controller state changed off its IOThread"

    def attach_namespace(self, ns: Any) -> None:
        self._check_thread()
        self.namespaces[ns.nsid] = ns

    def detach_namespace(self, nsid: int) -> None:
        self._check_thread()
        del self.namespaces[nsid]

    def note_changed_namespace(self, nsid: int) -> None:
        self._check_thread()
        self.changed_namespaces.add(nsid)

    def post_async_event(self, event_type: int, info: int, log_page: int) -> None:
        self._check_thread()
        self.events.append((event_type, info, log_page))

    def take_changed_namespaces(self, clear: bool = True) -> list[int]:
        changed = sorted(self.changed_namespaces)
        if clear:
            self.changed_namespaces.clear()
        return changed

    def log_page_read(self, log_id: int, rae: bool = False, cleared: bool = False) -> None:
        if not rae:
            self.logs_read.append(log_id)

    def transfer(self, cmd: Command, length: int, *, allow_sgl: bool = True) -> FakeTransfer:
        assert not allow_sgl, "admin data must use PRPs"
        return FakeTransfer(self, length)


def make_cmd(opcode: int, nsid: int = 0, **cdw: int) -> Command:
    fields = {f"cdw{i}": 0 for i in range(10, 16)}
    fields.update(cdw)
    return Command(sqid=0, cid=1, opcode=opcode, flags=0, nsid=nsid, mptr=0, dptr1=0x1000,
                   dptr2=0, **fields)


def run_admin(ctrl: FakeController, opcode: int, nsid: int = 0, data: bytes = b"",
              **cdw: int) -> tuple[Command, bytes]:
    """Run an admin handler as the dispatcher would; NvmeError propagates."""
    import nvshell.device.nvme.admin_identify  # noqa: F401  (register handlers)
    import nvshell.device.nvme.admin_log  # noqa: F401
    import nvshell.device.nvme.admin_ns  # noqa: F401
    info = ADMIN.get(opcode)
    assert info is not None
    cmd = make_cmd(opcode, nsid, **cdw)
    ctrl.out = b""
    ctrl.host_data = data
    info.handler(ctrl, cmd)
    return cmd, ctrl.out


def status_of(exc: pytest.ExceptionInfo[NvmeError]) -> int:
    return exc.value.status


# ------------------------------------------------------------------ tests
def test_default_subnqn_from_uuid() -> None:
    u = UUID("12345678-1234-5678-1234-567812345678")
    s = Subsystem(uuid=u)
    assert s.subnqn == f"nqn.2014-08.org.nvmexpress:uuid:{u}"
    assert Subsystem("nqn.2024-01.io.example:x").subnqn == "nqn.2024-01.io.example:x"
    assert Subsystem().subnqn != Subsystem().subnqn


def test_cntlid_allocation() -> None:
    s = Subsystem()
    a, b = FakeController(s), FakeController(s)
    assert (a.cntlid, b.cntlid) == (1, 2)
    c = FakeController(s, cntlid=7)
    assert c.cntlid == 7 and s.controllers[7] is c
    with pytest.raises(SubsystemError, match="already in use"):
        FakeController(s, cntlid=7)
    with pytest.raises(SubsystemError):
        s.add_controller(FakeController(), 0xFFF0)
    with pytest.raises(SubsystemError):
        s.add_controller(a)
    s.remove_controller(a)
    assert FakeController(s).cntlid == 1  # lowest free again


def test_nsid_allocation() -> None:
    s = Subsystem(max_nsid=4)
    n1, n2 = FakeNamespace(), FakeNamespace()
    assert s.add_namespace(n1) == 1 and n1.nsid == 1
    assert s.add_namespace(n2, 3) == 3 and n2.nsid == 3
    assert s.add_namespace(FakeNamespace()) == 2
    with pytest.raises(SubsystemError) as e:
        s.add_namespace(FakeNamespace(), 3)
    assert e.value.status == Status.NSID_UNAVAILABLE
    with pytest.raises(SubsystemError) as e:
        s.add_namespace(FakeNamespace(), 5)
    assert e.value.status == Status.INVALID_NSID
    assert s.add_namespace(FakeNamespace()) == 4
    with pytest.raises(SubsystemError, match="no free nsid"):
        s.add_namespace(FakeNamespace())
    assert s.free_nsid() == 0


def test_attach_detach_sends_aen_and_changed_list() -> None:
    s = Subsystem()
    a, b = FakeController(s), FakeController(s)
    ns = FakeNamespace()
    nsid = s.add_namespace(ns)
    assert a.namespaces == {} and s.attached_controllers(nsid) == []
    s.attach(nsid, a)
    assert a.namespaces == {nsid: ns} and b.namespaces == {}
    assert a.events == [NOTICE] and a.changed_namespaces == {nsid}
    assert b.events == []
    with pytest.raises(SubsystemError) as e:
        s.attach(nsid, a)
    assert e.value.status == Status.NS_ALREADY_ATTACHED
    s.attach(nsid, b)
    assert s.attached_controllers(nsid) == [1, 2] and s.is_attached(nsid, b)
    s.detach(nsid, a)
    assert a.namespaces == {} and len(a.events) == 2
    with pytest.raises(SubsystemError) as e:
        s.detach(nsid, a)
    assert e.value.status == Status.NS_NOT_ATTACHED
    with pytest.raises(SubsystemError):
        s.attach(99, a)
    with pytest.raises(SubsystemError):
        s.attach(nsid, FakeController())  # not in this subsystem
    s.attach(nsid, a, notify=False)
    assert len(a.events) == 2


def test_attach_all_covers_later_controllers() -> None:
    s = Subsystem()
    a = FakeController(s)
    ns = FakeNamespace()
    nsid = s.add_namespace(ns)
    s.attach_all(nsid)
    assert nsid in s.attach_policy_all and a.namespaces == {nsid: ns}
    b = FakeController(s)
    assert b.namespaces == {nsid: ns}
    assert b.events == []  # a new controller's host has not scanned yet: no AEN
    assert s.attached_controllers(nsid) == [1, 2]


def test_remove_controller_keeps_namespaces() -> None:
    s = Subsystem()
    a, b = FakeController(s), FakeController(s)
    ns = FakeNamespace()
    nsid = s.add_namespace(ns)
    s.attach_all(nsid)
    s.remove_controller(a)
    assert a.namespaces == {} and s.namespaces == {nsid: ns} and ns.closed == 0
    assert s.attached_controllers(nsid) == [b.cntlid]
    with pytest.raises(SubsystemError):
        s.remove_controller(a)


def test_remove_namespace_detaches_everywhere() -> None:
    s = Subsystem()
    a, b, c = FakeController(s), FakeController(s), FakeController(s)
    ns = FakeNamespace()
    nsid = s.add_namespace(ns)
    s.attach(nsid, a, notify=False)
    s.attach(nsid, b, notify=False)
    s.attach_all(nsid, notify=False)
    assert s.remove_namespace(nsid) is ns
    for ctrl in (a, b, c):
        assert ctrl.namespaces == {} and ctrl.events == [NOTICE] and ctrl.changed_namespaces == {nsid}
    assert nsid not in s.namespaces and nsid not in s.attach_policy_all
    assert ns.closed == 0
    with pytest.raises(SubsystemError):
        s.remove_namespace(nsid)
    d = FakeController(s)
    assert d.namespaces == {}
    ns2 = FakeNamespace()
    s.add_namespace(ns2)
    s.remove_namespace(ns2.nsid, close=True)
    assert ns2.closed == 1


def test_capacity_accounting() -> None:
    s = Subsystem(capacity=10 << 20)
    s.add_namespace(FakeNamespace(nlbas=2048, lba_size=512))
    assert s.allocated_bytes() == 1 << 20
    assert s.unallocated_bytes() == 9 << 20


def test_changes_happen_on_controller_iothread() -> None:
    """From the control plane: run (wait) on the controller's IOThread."""
    s = Subsystem()
    t1, t2 = IOThread("c1"), IOThread("c2")
    t1.start()
    t2.start()
    try:
        a, b = FakeController(s, t1), FakeController(s, t2)
        ns = FakeNamespace()
        nsid = s.add_namespace(ns)
        s.attach_all(nsid)
        assert a.namespaces == {nsid: ns} and b.namespaces == {nsid: ns}  # done when it returns
        assert all(th is t1._thread for th in a.threads)
        assert all(th is t2._thread for th in b.threads)

        # From controller a's IOThread (its admin command): a directly, b submitted
        # without blocking t1 on t2.
        def from_a() -> None:
            s.detach(nsid, a)
            s.detach(nsid, b)
            assert nsid not in a.namespaces  # synchronous for its own controller
        t1.run(from_a)
        t2.run(lambda: None)  # b's work queued before this has run
        assert a.namespaces == {} and b.namespaces == {}
        assert all(th is t2._thread for th in b.threads)

        # remove_namespace(close=True) closes only after the other IOThread detached.
        s.attach_all(nsid)
        t1.run(lambda: s.remove_namespace(nsid, close=True))
        t2.run(lambda: None)
        assert ns.closed == 1 and b.namespaces == {}
    finally:
        t1.stop()
        t2.stop()


def test_listener_errors_do_not_propagate() -> None:
    s = Subsystem()
    seen = []
    s.listeners.append(lambda *a: seen.append(a))
    s.listeners.append(lambda *a: 1 / 0)
    s.notify("attached", 1, None, None)
    assert seen == [("attached", 1, None, None)]
