"""Fault actions on a real controller (test host driver from test_controller), hook
lifecycle (nothing installed without rules), QMP/HMP commands and the -fault option."""

from __future__ import annotations

import asyncio
import time

import pytest

from nvshell.device import trace as T
from nvshell.device.backends import MemoryBackend
from nvshell.device.errors import PropertyError
from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.machine import Machine, default_topology
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.nvme.status import Status
from nvshell.monitor.commands_faults import apply_fault_options
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.errors import QMPError
from nvshell.monitor.hmp import execute_line
from nvshell.testing import wait_until
from tests.test_controller import Host, dnr, status

READ, WRITE = 0x02, 0x01
LBA = 512


@pytest.fixture
def rig():
    """A controller named ctrl0 with a 1 MiB namespace, one I/O queue pair, and a FaultSet."""
    h = Host("trap")
    h.ctrl.name = "ctrl0"
    ns = NvmNamespace(MemoryBackend(1 << 20), lba_size=LBA)
    ns.nsid = 1
    h.io.run(h.ctrl.attach_namespace, ns)
    h.enable()
    h.enable_notices()
    h.create_queue_pair(1, vector=1)
    published: list[tuple[str, dict]] = []
    faults = FaultSet(publish=lambda name, data: published.append((name, data)))
    injector = install(h.ctrl, faults)
    h.faults, h.ns, h.published, h.injector = faults, ns, published, injector
    h.buf = h.alloc(4096)
    yield h
    injector.uninstall()
    h.close()


def add(h, **kw):
    kw.setdefault("id", "f1")
    return h.faults.add(FaultRule.from_args(kw))


def read(h, slba, nlb=8, timeout=2.0):
    cid = h.submit(1, READ, nsid=1, dptr1=h.buf, cdw10=slba, cdw12=nlb - 1)
    e = h.reap(1, timeout=timeout)
    assert e.cid == cid
    return e


def test_hooks_only_while_rules_concern_the_controller(rig):
    hooks = rig.ctrl.hooks
    assert (hooks.on_submit, hooks.on_complete, hooks.on_interrupt) == (None, None, None)
    add(rig, id="other", ctrl="ctrl9", action="drop")
    assert hooks.on_submit is None                     # another controller's rule costs us nothing
    add(rig, action="status")
    assert hooks.on_submit is not None and hooks.on_complete is None and hooks.on_interrupt is None
    add(rig, id="c", action="corrupt")
    add(rig, id="i", action="irq-loss")
    assert hooks.on_complete is not None and hooks.on_interrupt is not None
    for rule_id in ("f1", "c", "i", "other"):
        rig.faults.remove(rule_id)
    assert (hooks.on_submit, hooks.on_complete, hooks.on_interrupt) == (None, None, None)


def test_status_on_exact_lba_range_and_event(rig):
    add(rig, ctrl="ctrl0", opcode="read", nsid=1, slba=16, nlb=8, action="status",
        status="unrecovered-read-error", dnr="on")
    e = read(rig, 16)
    assert status(e) == Status.UNRECOVERED_READ_ERROR and dnr(e)
    assert status(read(rig, 20, 1)) == Status.UNRECOVERED_READ_ERROR
    assert status(read(rig, 8)) == 0 and status(read(rig, 24)) == 0
    rule = rig.faults.get("f1")
    assert (rule.hits, rule.matched) == (2, 2)
    (name, data), _ = rig.published
    assert name == "X_NVME_FAULT_INJECTED"
    assert data["id"] == "f1" and data["device"] == "ctrl0" and data["opcode"] == "read" and data["slba"] == 16
    rig.faults.remove("f1")
    assert status(read(rig, 16)) == 0


def test_status_more_bit_and_count(rig):
    add(rig, opcode="read", action="status", status="2/0x81", more="on", count=1)
    e = read(rig, 0)
    assert status(e) == 0x281 and (e.status >> 14) & 1 and not dnr(e)
    assert status(read(rig, 0)) == 0


def test_delay(rig):
    add(rig, opcode="read", action="delay", delay=300)
    t0 = time.monotonic()
    assert status(read(rig, 0)) == 0
    assert time.monotonic() - t0 >= 0.29


def test_drop_until_abort(rig):
    rule = add(rig, opcode="read", action="drop", count=1)
    cid = rig.submit(1, READ, nsid=1, dptr1=rig.buf, cdw12=7)
    wait_until(lambda: rule.hits == 1, 3, "the rule dropped the read")
    rig.io.run(lambda: None)                            # and the IOThread is past it
    assert rig.peek(1) is None                          # never completed
    abort = rig.cmd(AdminOpcode.ABORT, cdw10=cid << 16 | 1)
    assert status(abort) == 0 and abort.dw0 & 1 == 0
    e = rig.reap(1)
    assert e.cid == cid and status(e) == Status.ABORT_REQUESTED
    assert status(read(rig, 0)) == 0                   # count=1: the retry goes through


def test_corrupt_flips_bits_in_range_only(rig):
    data = bytes(range(256)) * 16
    rig.ns.backend.write(0, data)
    add(rig, opcode="read", slba=2, nlb=1, action="corrupt", bits=3, seed=9)
    assert status(read(rig, 0)) == 0
    got = rig.read(rig.buf, 4096)
    diff = [i for i in range(4096) if got[i] != data[i]]
    assert diff and all(2 * LBA <= i < 3 * LBA for i in diff)
    flipped = sum(bin(got[i] ^ data[i]).count("1") for i in diff)
    assert flipped in (1, 3)                           # 3 bits (two may cancel on the same bit)
    stored = bytearray(4096)
    rig.ns.backend.readinto(0, stored)
    assert bytes(stored) == data                       # the medium is untouched
    again = FaultRule.from_args({"id": "x", "action": "corrupt", "seed": 9})
    first = FaultRule.from_args({"id": "y", "action": "corrupt", "seed": 9})
    assert again.bit_rng.random() == first.bit_rng.random()   # reproducible positions


def test_dma_error(rig):
    add(rig, opcode="write", action="dma-error")
    cid = rig.submit(1, WRITE, nsid=1, dptr1=rig.buf, cdw12=0)
    e = rig.reap(1)
    assert e.cid == cid and status(e) == Status.DATA_TRANSFER_ERROR and not dnr(e)


def test_fatal_sets_cfs_and_holds(rig):
    add(rig, opcode="read", action="fatal", count=1)
    rig.submit(1, READ, nsid=1, dptr1=rig.buf, cdw12=0)
    wait_until(lambda: rig.rd(0x1C) & 2, 3, "CSTS.CFS")
    assert rig.peek(1) is None
    assert "fault rule 'f1'" in rig.ctrl.fatal_reason


def test_ns_not_ready_window(rig):
    t0 = time.monotonic()
    add(rig, opcode="read", slba=0, nlb=1, action="ns-not-ready", duration=200, count=1)
    e = read(rig, 0)
    assert status(e) == Status.NS_NOT_READY and not dnr(e)
    assert status(read(rig, 100)) == Status.NS_NOT_READY   # the whole namespace, for a while
    while status(read(rig, 100)) != 0:                     # sync point: the first read that succeeds
        assert time.monotonic() - t0 < 5, "the namespace never became ready again"
        time.sleep(0.01)
    assert time.monotonic() - t0 >= 0.2                    # not before the window ended


def test_ns_remove_detaches_with_aen_then_reattaches(rig):
    aer = rig.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    add(rig, opcode="read", action="ns-remove", duration=200, count=1)
    assert status(read(rig, 0)) == Status.INVALID_NSID
    e = rig.reap(0)
    assert e.cid == aer and e.dw0 == 0x040002          # notice, NS attribute changed, log 04h
    assert 1 not in rig.ctrl.namespaces
    assert rig.io.run(rig.ctrl.take_changed_namespaces) == [1]
    wait_until(lambda: rig.io.run(lambda: 1 in rig.ctrl.namespaces), 5, "the 200 ms timer reattached it")
    assert status(read(rig, 0)) == 0


def test_aen_temperature_and_removal_restores(rig):
    aer = rig.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    add(rig, action="aen", aen="temperature", opcode="read", count=1)
    assert status(read(rig, 0)) == 0
    e = rig.reap(0)
    assert e.cid == aer and e.dw0 == 0x020101
    stats = rig.ctrl.stats
    assert stats.critical_warning == 0x02 and stats.temperature == rig.ctrl.features.temp_over + 10
    rig.faults.remove("f1")
    assert stats.critical_warning == 0 and stats.temperature == 323


def test_irq_loss(rig):
    add(rig, opcode="read", action="irq-loss", count=1)
    rig.interrupts(1)
    e = read(rig, 0)                                   # the CQE is there...
    assert status(e) == 0
    assert rig.interrupts(1) == 0                      # ...but no interrupt
    read(rig, 0)
    assert rig.interrupts(1) == 1


def test_trace_point_for_hits(rig):
    records = []
    sink = records.append
    T.TRACE.add_sink(sink)
    try:
        T.TRACE.set_state("nvme_fault_hit", True)
        add(rig, opcode="read", action="status", count=1)
        read(rig, 0)
    finally:
        T.TRACE.set_state("nvme_fault_hit", False)
        T.TRACE.remove_sink(sink)
    hits = [r for r in records if r["name"] == "nvme_fault_hit"]
    assert hits and hits[0]["rule"] == "f1" and hits[0]["opcode"] == "read" and hits[0]["qid"] == 1


# ---------------------------------------------------------------- monitor
@pytest.fixture
def machine(tmp_path):
    m = Machine(str(tmp_path))
    default_topology(m)
    yield m
    m.shutdown()


def run(coro):
    return asyncio.run(coro)


def test_qmp_add_list_del(machine):
    ctx = MonitorContext(machine=machine)
    reg = ctx.registry
    rule = reg.execute_sync("x-nvme-fault-add", {"id": "f1", "ctrl": "ctrl0", "opcode": "read", "nsid": 1,
                                                 "slba": 0, "nlb": 8, "action": "status",
                                                 "status": "unrecovered-read-error", "count": 1}, ctx)
    assert rule["status"] == "0x281" and rule["opcode"] == "read" and rule["hits"] == 0
    assert [r["id"] for r in reg.execute_sync("x-nvme-fault-list", {}, ctx)] == ["f1"]
    assert machine.lookup_device("ctrl0").model.hooks.on_submit is not None
    with pytest.raises(QMPError, match="Parameter 'ctrl': no NVMe controller 'nope'"):
        reg.execute_sync("x-nvme-fault-add", {"id": "f2", "ctrl": "nope"}, ctx)
    with pytest.raises(QMPError, match="Parameter 'bogus' is unexpected"):
        reg.execute_sync("x-nvme-fault-add", {"id": "f2", "bogus": 1}, ctx)
    with pytest.raises(QMPError, match="Parameter 'id' is missing"):
        reg.execute_sync("x-nvme-fault-add", {"action": "drop"}, ctx)
    with pytest.raises(QMPError) as err:
        reg.execute_sync("x-nvme-fault-del", {"id": "zz"}, ctx)
    assert err.value.error_class == "DeviceNotFound" and "Fault rule 'zz' not found" in err.value.desc
    reg.execute_sync("x-nvme-fault-del", {"id": "f1"}, ctx)
    assert reg.execute_sync("x-nvme-fault-list", {}, ctx) == []
    assert machine.lookup_device("ctrl0").model.hooks.on_submit is None


def test_hmp_fault_commands(machine):
    ctx = MonitorContext(machine=machine)
    line = ("fault_add id=f1,ctrl=ctrl0,opcode=read,nsid=1,slba=0,nlb=8,action=status,"
            "status=unrecovered-read-error,count=1")
    assert run(execute_line(line, ctx)).text == ""
    out = run(execute_line("info faults", ctx)).text
    assert "f1" in out and "lba=0+8" in out and "first 1" in out and "unrecovered-read-error" in out
    bad = run(execute_line("fault_add id=f2,action=delay", ctx))
    assert not bad.ok and bad.text == "Error: Parameter 'delay' is missing (milliseconds, for action=delay)\n"
    bad = run(execute_line("fault_add id=f2,opcode", ctx))
    assert not bad.ok and "Expected '='" in bad.text
    assert run(execute_line("fault_del f1", ctx)).ok
    assert run(execute_line("info faults", ctx)).text == "no fault rules\n"
    assert not run(execute_line("fault_del f1", ctx)).ok


def test_command_line_option(machine):
    apply_fault_options(machine, ["id=a,opcode=write,action=drop", "b,action=aen,aen=spare"])
    assert [r.id for r in machine.faults] == ["a", "b"]
    with pytest.raises(PropertyError, match=r"-fault 'id=c,action=nope': Parameter 'action'"):
        apply_fault_options(machine, ["id=c,action=nope"])


def test_controller_added_later_gets_the_injector(machine, tmp_path):
    machine.faults.add(FaultRule.from_args({"id": "f", "action": "drop", "ctrl": "ctrl1"}))
    machine.device_add("x-nvme-ctrl", "ctrl1", {"subsys": "subsys0", "socket": str(tmp_path / "c1.sock")})
    assert machine.lookup_device("ctrl1").model.hooks.on_submit is not None
    assert machine.lookup_device("ctrl0").model.hooks.on_submit is None
    machine.device_del("ctrl1")
    assert len(machine.faults.watchers) == 1            # ctrl1's injector is gone
