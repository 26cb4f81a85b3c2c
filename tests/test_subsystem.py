"""Subsystem: NSID/CNTLID allocation, attach/detach/delete semantics, AENs, threads.

On real controllers and namespaces: served controllers with an ``NvmeTestHost`` each where a
test reads the notices a controller queued (its host enabled them with Set Features), a bare
``Controller`` where only membership counts, and controllers on their own IOThreads for
the threading rule (observed through the real ``nvme_ns_attach``/``nvme_ns_detach`` and
``nvme_aen_queued`` trace points).
"""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID

import pytest

from nvshell.device import trace as T
from nvshell.device.backends import MemoryBackend
from nvshell.device.iothread import IOThread
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.status import Status
from nvshell.device.nvme.subsystem import Subsystem, SubsystemError
from nvshell.device.nvme.spec import AsyncEventType, LogPage, NoticeInfo
from nvshell.testing import NvmeTestHost

NS_BYTES = 1024 * 512


def ctrl(s: Subsystem | None = None, cntlid: int = 0) -> Controller:
    """A real controller in ``s`` (its constructor joins the subsystem)."""
    return Controller(ControllerConfig(cntlid=cntlid), s, None)


#: The event a namespace attach/detach/delete posts to each controller it touches.
NOTICE = (AsyncEventType.NOTICE, NoticeInfo.NS_ATTRIBUTE_CHANGED, LogPage.CHANGED_NS_LIST)


def notified(directory: Any, s: Subsystem, **config: Any) -> NvmeTestHost:
    """A served controller in ``s`` and its host: enabled, namespace notices on (as Linux after
    its first scan), no Asynchronous Event Request outstanding (events stay queued)."""
    host = NvmeTestHost.serve(directory, name=f"c{len(s.controllers) + 1}", subsystem=s, **config)
    try:
        host.enable()
        host.enable_notices()
    except BaseException:
        host.close()
        raise
    return host


def pending(host: NvmeTestHost) -> list[tuple[int, int, int]]:
    """The events the controller queued for an AER (none is outstanding)."""
    return host.run(host.ctrl.pending_events)


def clear_events(host: NvmeTestHost) -> None:
    """As a host that got its AENs and read the Changed Namespace List."""
    def clear() -> None:
        host.ctrl.events.events.clear()
        host.ctrl.take_changed_namespaces()
    host.run(clear)


def ns(nlbas: int = 1024, lba_size: int = 512) -> NvmNamespace:
    return NvmNamespace(MemoryBackend(nlbas * lba_size), lba_size=lba_size)


def test_default_subnqn_from_uuid() -> None:
    u = UUID("12345678-1234-5678-1234-567812345678")
    s = Subsystem(uuid=u)
    assert s.subnqn == f"nqn.2014-08.org.nvmexpress:uuid:{u}"
    assert Subsystem("nqn.2024-01.io.example:x").subnqn == "nqn.2024-01.io.example:x"
    assert Subsystem().subnqn != Subsystem().subnqn


def test_cntlid_allocation() -> None:
    s = Subsystem()
    a, b = ctrl(s), ctrl(s)
    assert (a.cntlid, b.cntlid) == (1, 2)
    c = ctrl(s, cntlid=7)
    assert c.cntlid == 7 and s.controllers[7] is c
    with pytest.raises(SubsystemError, match="already in use"):
        ctrl(s, cntlid=7)
    with pytest.raises(SubsystemError):
        s.add_controller(ctrl(), 0xFFF0)
    with pytest.raises(SubsystemError):
        s.add_controller(a)
    s.remove_controller(a)
    assert ctrl(s).cntlid == 1  # lowest free again


def test_nsid_allocation() -> None:
    s = Subsystem(max_nsid=4)
    n1, n2 = ns(), ns()
    assert s.add_namespace(n1) == 1 and n1.nsid == 1
    assert s.add_namespace(n2, 3) == 3 and n2.nsid == 3
    assert s.add_namespace(ns()) == 2
    with pytest.raises(SubsystemError) as e:
        s.add_namespace(ns(), 3)
    assert e.value.status == Status.NSID_UNAVAILABLE
    with pytest.raises(SubsystemError) as e:
        s.add_namespace(ns(), 5)
    assert e.value.status == Status.INVALID_NSID
    assert s.add_namespace(ns()) == 4
    with pytest.raises(SubsystemError, match="no free nsid"):
        s.add_namespace(ns())
    assert s.free_nsid() == 0


def test_attach_detach_sends_aen_and_changed_list(tmp_path) -> None:
    s = Subsystem()
    ra, rb = notified(tmp_path, s), notified(tmp_path, s)
    a, b = ra.ctrl, rb.ctrl
    n = ns()
    nsid = s.add_namespace(n)
    assert a.namespaces == {} and s.attached_controllers(nsid) == []
    s.attach(nsid, a)
    assert a.namespaces == {nsid: n} and b.namespaces == {}
    assert pending(ra) == [NOTICE] and a.changed_namespaces == [nsid]
    assert pending(rb) == []
    with pytest.raises(SubsystemError) as e:
        s.attach(nsid, a)
    assert e.value.status == Status.NS_ALREADY_ATTACHED
    s.attach(nsid, b)
    assert s.attached_controllers(nsid) == [1, 2] and s.is_attached(nsid, b)
    clear_events(ra)
    s.detach(nsid, a)
    assert a.namespaces == {} and pending(ra) == [NOTICE] and a.changed_namespaces == [nsid]
    with pytest.raises(SubsystemError) as e:
        s.detach(nsid, a)
    assert e.value.status == Status.NS_NOT_ATTACHED
    with pytest.raises(SubsystemError):
        s.attach(99, a)
    with pytest.raises(SubsystemError):
        s.attach(nsid, ctrl())  # not in this subsystem
    clear_events(ra)
    s.attach(nsid, a, notify=False)
    assert pending(ra) == [] and a.changed_namespaces == []
    ra.close()
    rb.close()


def test_attach_all_covers_later_controllers(tmp_path) -> None:
    s = Subsystem()
    ra = notified(tmp_path, s)
    n = ns()
    nsid = s.add_namespace(n)
    s.attach_all(nsid)
    assert nsid in s.attach_policy_all and ra.ctrl.namespaces == {nsid: n}
    assert pending(ra) == [NOTICE]
    rb = notified(tmp_path, s)
    assert rb.ctrl.namespaces == {nsid: n}
    assert pending(rb) == [] and rb.ctrl.changed_namespaces == []  # its host has not scanned yet: no AEN
    assert s.attached_controllers(nsid) == [1, 2]
    ra.close()
    rb.close()


def test_remove_controller_keeps_namespaces() -> None:
    s = Subsystem()
    a, b = ctrl(s), ctrl(s)
    n = ns()
    nsid = s.add_namespace(n)
    s.attach_all(nsid)
    s.remove_controller(a)
    assert a.namespaces == {} and s.namespaces == {nsid: n} and n.ready   # not closed
    assert s.attached_controllers(nsid) == [b.cntlid]
    with pytest.raises(SubsystemError):
        s.remove_controller(a)


def test_remove_namespace_detaches_everywhere(tmp_path) -> None:
    s = Subsystem()
    hosts = [notified(tmp_path, s), notified(tmp_path, s), notified(tmp_path, s)]
    a, b, c = (r.ctrl for r in hosts)
    n = ns()
    nsid = s.add_namespace(n)
    s.attach(nsid, a, notify=False)
    s.attach(nsid, b, notify=False)
    s.attach_all(nsid, notify=False)
    assert s.remove_namespace(nsid) is n
    for r in hosts:
        assert r.ctrl.namespaces == {} and pending(r) == [NOTICE] and r.ctrl.changed_namespaces == [nsid]
    assert nsid not in s.namespaces and nsid not in s.attach_policy_all
    assert n.ready   # not closed
    with pytest.raises(SubsystemError):
        s.remove_namespace(nsid)
    d = ctrl(s)
    assert d.namespaces == {}
    ns2 = ns()
    s.add_namespace(ns2)
    s.remove_namespace(ns2.nsid, close=True)
    assert not ns2.ready   # closed
    for r in hosts:
        r.close()


def test_capacity_accounting() -> None:
    s = Subsystem(capacity=10 << 20)
    s.add_namespace(ns(nlbas=2048, lba_size=512))
    assert s.allocated_bytes() == 1 << 20
    assert s.unallocated_bytes() == 9 << 20


class ThreadLog:
    """A sink for the real trace points: which thread each controller's change ran on."""

    POINTS = (T.NVME_NS_ATTACH, T.NVME_NS_DETACH, T.NVME_AEN_QUEUED)

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, threading.Thread]] = []

    def __call__(self, record: dict[str, Any]) -> None:
        self.seen.append((record["name"], record["ctrl"], threading.current_thread()))

    def threads(self, ctrl_name: str) -> set[threading.Thread]:
        return {th for _, name, th in self.seen if name == ctrl_name}

    def __enter__(self) -> "ThreadLog":
        self.before = {tp.name: tp.state for tp in self.POINTS}
        for tp in self.POINTS:
            T.TRACE.set_state(tp.name, True)
        T.TRACE.add_sink(self)
        return self

    def __exit__(self, *exc: object) -> None:
        T.TRACE.remove_sink(self)
        for name, state in self.before.items():
            T.TRACE.set_state(name, state)


def test_changes_happen_on_controller_iothread() -> None:
    """From the control plane: run (wait) on the controller's IOThread."""
    s = Subsystem()
    t1, t2 = IOThread("c1"), IOThread("c2")
    t1.start()
    t2.start()
    try:
        a = Controller(ControllerConfig(serial="a"), s, t1)
        b = Controller(ControllerConfig(serial="b"), s, t2)
        for c, t in ((a, t1), (b, t2)):     # the hosts enabled notices (Set Features AEC)
            t.run(setattr, c.features, "async_event_config", 0xF00)
        n = ns()
        nsid = s.add_namespace(n)
        with ThreadLog() as log:
            s.attach_all(nsid)
            assert a.namespaces == {nsid: n} and b.namespaces == {nsid: n}  # done when it returns
            assert log.threads("a") == {t1._thread} and log.threads("b") == {t2._thread}
            kinds = {kind for kind, name, _ in log.seen if name == "a"}
            assert kinds == {T.NVME_NS_ATTACH.name, T.NVME_AEN_QUEUED.name}

            # From controller a's IOThread (its admin command): a directly, b submitted
            # without blocking t1 on t2.
            def from_a() -> None:
                s.detach(nsid, a)
                s.detach(nsid, b)
                assert nsid not in a.namespaces  # synchronous for its own controller
            t1.run(from_a)
            t2.run(lambda: None)  # b's work queued before this has run
            assert a.namespaces == {} and b.namespaces == {}
            assert log.threads("b") == {t2._thread} and log.threads("a") == {t1._thread}
            assert (T.NVME_NS_DETACH.name, "b", t2._thread) in log.seen

            # remove_namespace(close=True) closes only after the other IOThread detached.
            s.attach_all(nsid)
            t1.run(lambda: s.remove_namespace(nsid, close=True))
            t2.run(lambda: None)
            assert not n.ready and b.namespaces == {}
            assert log.threads("b") == {t2._thread}
    finally:
        t1.run(a.shutdown)
        t2.run(b.shutdown)
        t1.stop()
        t2.stop()


def test_listener_errors_do_not_propagate() -> None:
    s = Subsystem()
    seen = []
    s.listeners.append(lambda *a: seen.append(a))
    s.listeners.append(lambda *a: 1 / 0)
    s.notify("attached", 1, None, None)
    assert seen == [("attached", 1, None, None)]
