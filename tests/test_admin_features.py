"""Set/Get Features through the vfio-user client: every FID's SEL answers, NSID rules,
Number of Queues ordering, the volatile write cache's durability, Keep Alive (feature,
command, expiry, fault rule), Asynchronous Event Configuration for notices."""

from __future__ import annotations

import os
import struct
import time

import pytest

from nvshell.device.backends import FileBackend, MemoryBackend
from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme import admin_features, admin_keepalive
from nvshell.device.nvme.admin_keepalive import KAS
from nvshell.device.nvme.controller import Features
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, dnr, status

GET, SET = 0x0A, 0x09
BROADCAST = 0xFFFFFFFF


@pytest.fixture
def host(tmp_path):
    h = NvmeTestHost.serve(tmp_path, ns_size=1 << 20).enable(admin_depth=64)
    yield h
    h.close()


#: FID -> (default DW0, namespace specific); the capability answer follows from these.
EXPECTED = {
    0x01: (0x7, False), 0x02: (0, False), 0x04: (0x157, False), 0x05: (0, True), 0x06: (1, False),
    0x07: (3 << 16 | 3, False), 0x08: (0, False), 0x09: (0, False), 0x0A: (0, False), 0x0B: (0, False),
    0x0E: (0, False), 0x0F: (0, False), 0x16: (0, False), 0x19: (0, False),
}


def test_every_feature_answers_each_select(host):
    assert set(admin_features.FEATURES) == set(EXPECTED)
    for fid, (default, ns_specific) in EXPECTED.items():
        nsid = 1 if ns_specific else 0
        for sel in (0, 1, 2):
            e = host.get_feature(fid, sel, nsid)
            assert status(e) == 0 and e.dw0 == default, (fid, sel, e)
        e = host.get_feature(fid, 3, nsid)
        assert status(e) == 0 and e.dw0 == (0b100 | (0b010 if ns_specific else 0)), (fid, e)
        e = host.get_feature(fid, 4, nsid)
        assert status(e) == Status.INVALID_FIELD and dnr(e)


def test_saved_is_the_default_not_the_current_value(host):
    assert status(host.set_feature(0x04, 0x160)) == 0
    assert host.get_feature(0x04, 0).dw0 == 0x160
    assert host.get_feature(0x04, 1).dw0 == 0x157
    assert host.get_feature(0x04, 2).dw0 == 0x157
    e = host.set_feature(0x04, 0x161, save=True)
    assert status(e) == Status.FEATURE_ID_NOT_SAVEABLE and dnr(e)


def test_unknown_fids(host):
    for fid in (0x00, 0x03, 0x0C, 0x0D, 0x10, 0x7F, 0x80, 0xFF):
        assert status(host.get_feature(fid)) == Status.INVALID_FIELD
        assert status(host.set_feature(fid, 0)) == Status.INVALID_FIELD


def test_controller_feature_refuses_an_nsid_on_set(host):
    e = host.set_feature(0x06, 0, nsid=1)
    assert status(e) == Status.FEATURE_NOT_NS_SPECIFIC and dnr(e)
    assert status(host.set_feature(0x06, 0, nsid=300)) == Status.INVALID_NSID
    assert host.get_feature(0x06).dw0 == 1                  # nothing changed
    assert status(host.set_feature(0x06, 0, nsid=BROADCAST)) == 0
    assert status(host.set_feature(0x06, 1, nsid=0)) == 0
    # Get ignores the NSID of a controller feature (nvme-cli sends the block device's).
    assert status(host.get_feature(0x06, nsid=1)) == 0


def test_error_recovery_is_per_namespace(host):
    ns2 = NvmNamespace(MemoryBackend(1 << 20))
    host.subsys.add_namespace(ns2, 2)
    host.subsys.attach(2, host.ctrl, notify=False)
    assert status(host.set_feature(0x05, 30, nsid=1)) == 0
    assert host.get_feature(0x05, nsid=1).dw0 == 30
    assert host.get_feature(0x05, nsid=2).dw0 == 0
    assert host.get_feature(0x05, 1, nsid=1).dw0 == 0        # default
    assert status(host.set_feature(0x05, 7, nsid=BROADCAST)) == 0
    assert host.get_feature(0x05, nsid=1).dw0 == 7 and host.get_feature(0x05, nsid=2).dw0 == 7
    assert status(host.get_feature(0x05, nsid=BROADCAST)) == Status.INVALID_NSID
    assert status(host.get_feature(0x05, nsid=0)) == Status.INVALID_NSID
    assert status(host.get_feature(0x05, nsid=5)) == Status.INVALID_FIELD     # valid, not active
    assert status(host.set_feature(0x05, 1, nsid=5)) == Status.INVALID_FIELD
    assert status(host.set_feature(0x05, 1 << 16, nsid=1)) == Status.INVALID_FIELD   # DULBE


def test_number_of_queues_only_before_io_queues(host):
    e = host.set_feature(0x07, 0x00010001)
    assert status(e) == 0 and e.dw0 == 3 << 16 | 3
    assert host.ctrl.features.num_queues_requested == (1, 1)
    assert status(host.set_feature(0x07, 0xFFFF0000)) == Status.INVALID_FIELD
    # A CQ alone is enough to fix the allocation.
    cq = host.alloc(4096)
    assert status(host.cmd(0x05, cdw10=15 << 16 | 1, cdw11=1 << 16 | 3, dptr1=cq)) == 0
    e = host.set_feature(0x07, 0x00020002)
    assert status(e) == Status.COMMAND_SEQUENCE_ERROR and dnr(e)
    assert host.ctrl.features.num_queues_requested == (1, 1)
    assert host.get_feature(0x07).dw0 == 3 << 16 | 3
    assert status(host.cmd(0x04, cdw10=1)) == 0                # deleted again: allowed again
    assert status(host.set_feature(0x07, 0x00020002)) == 0


def test_volatile_write_cache_off_makes_each_write_durable(tmp_path, monkeypatch):
    h = NvmeTestHost.serve(tmp_path, ns_size=0).enable(admin_depth=64)
    try:
        ns = NvmNamespace(FileBackend(str(tmp_path / "disk.img"), size=1 << 20))
        h.subsys.add_namespace(ns, 1)
        h.subsys.attach(1, h.ctrl, notify=False)
        h.create_io_queue()
        syncs: list[int] = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real(fd))[1])
        assert status(h.nvm(0x01, 0, 1, data=b"a" * 512)[0]) == 0
        assert syncs == []                                     # cache on: no sync per write
        assert status(h.set_feature(0x06, 0)) == 0
        assert len(syncs) == 1                                 # what the cache held is flushed
        for opcode, fields in ((0x01, {}), (0x08, {}), (0x19, None)):
            before = len(syncs)
            if opcode == 0x19:
                h.ram.write(h.buf + 4096, struct.pack("<QQHH", 0, 0, 0, 0).ljust(32, b"\0"))
                e = h.cmd(0x19, 1, nsid=1, dptr1=h.buf + 4096, cdw10=8, cdw12=0)
            else:
                e = h.nvm(opcode, 4, 1, data=b"b" * 512)[0]
            assert status(e) == 0 and len(syncs) == before + 1, opcode
        assert os.pread(ns.backend.fd, 512, 4 * 512) == bytes(512)   # write zeroes landed
        assert status(h.set_feature(0x06, 1)) == 0
        before = len(syncs)
        assert status(h.nvm(0x01, 0, 1, data=b"c" * 512)[0]) == 0 and len(syncs) == before
    finally:
        h.close()


def test_keep_alive_feature_and_command(host):
    d = host.identify_ctrl()
    assert struct.unpack_from("<H", d, 320)[0] == KAS == 1        # 100 ms granularity
    assert not struct.unpack_from("<I", d, 96)[0] & (1 << 6)     # CTRATT.TBKAS clear
    assert status(host.cmd(0x18)) == 0                         # no timer: a no-op
    assert status(host.set_feature(0x0F, 250)) == 0
    assert host.get_feature(0x0F).dw0 == 300                   # rounded up to 100 ms
    assert host.get_feature(0x0F, 1).dw0 == 0
    assert status(host.set_feature(0x0F, 300, nsid=1)) == Status.FEATURE_NOT_NS_SPECIFIC
    assert status(host.set_feature(0x0F, 1500)) == 0           # generous: the machine may be loaded
    deadline = time.monotonic() + 3.0                          # alive for twice KATO through commands
    while time.monotonic() < deadline:
        time.sleep(0.1)
        assert status(host.cmd(0x18)) == 0
    assert host.reg32(0x1C) & 0b11 == 0b01
    assert status(host.set_feature(0x0F, 0)) == 0              # off: no expiry
    assert not host.run(admin_keepalive.armed, host.ctrl)      # no timer left to fire
    assert host.reg32(0x1C) & 0b11 == 0b01


def wait_cfs(host, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not host.reg32(0x1C) & 0b10:
        assert time.monotonic() < deadline, "keep alive timer never expired"
        time.sleep(0.02)


def test_keep_alive_expiry_sets_cfs_and_logs(host):
    started = time.monotonic()
    assert status(host.set_feature(0x0F, 200)) == 0
    wait_cfs(host)
    assert time.monotonic() - started >= 0.2
    assert "keep alive" in host.ctrl.fatal_reason
    entry = host.ctrl.error_log.entries()[0]
    assert entry.status == Status.KEEP_ALIVE_EXPIRED
    host.reset()                                               # the host's recovery
    assert host.reg32(0x1C) & 0b11 == 0b01
    assert host.get_feature(0x0F).dw0 == 0                     # timer gone with the reset
    e, page = host.get_log(0x01, 64)
    assert status(e) == 0
    sf = struct.unpack_from("<H", page, 12)[0]
    assert (sf >> 1) & 0x7FF == Status.KEEP_ALIVE_EXPIRED
    assert not host.run(admin_keepalive.armed, host.ctrl)      # nothing left to expire again
    assert host.reg32(0x1C) & 0b11 == 0b01


def test_keep_alive_reset_disarms(host):
    assert status(host.set_feature(0x0F, 300)) == 0
    assert host.run(admin_keepalive.armed, host.ctrl)
    host.reset()
    assert not host.run(admin_keepalive.armed, host.ctrl)      # the reset dropped the timer
    assert host.reg32(0x1C) & 0b11 == 0b01


def test_keep_alive_expire_fault_rule(host):
    faults = FaultSet()
    install(host.ctrl, faults)
    faults.add(FaultRule.from_args({"id": "k1", "opcode": "keep-alive", "action": "keep-alive-expire",
                                    "count": 1}))
    # Without a timer there is nothing to expire: the command runs.
    assert status(host.cmd(0x18)) == 0
    faults.remove("k1")
    faults.add(FaultRule.from_args({"id": "k2", "opcode": "keep-alive", "action": "keep-alive-expire"}))
    assert status(host.set_feature(0x0F, 60_000)) == 0
    host.submit(0x18)
    wait_cfs(host)                                             # the rule fired on the command
    assert host.peek() is None                                 # held: the controller failed
    assert "fault rule 'k2'" in host.ctrl.fatal_reason
    assert host.ctrl.error_log.entries()[0].status == Status.KEEP_ALIVE_EXPIRED


def test_async_event_configuration_gates_namespace_notices(host):
    aer = host.submit(0x0C)
    host.subsys.detach(1, host.ctrl)                           # AEC 0: no notice
    host.run(lambda: None)                                     # the IOThread is past the change
    assert host.peek() is None
    assert host.run(host.ctrl.take_changed_namespaces, False) == [1]   # the log still records it
    host.enable_notices(0x100)
    host.subsys.attach(1, host.ctrl)
    e = host.reap()[0]
    assert e.cid == aer and e.dw0 == 0x040002


def test_masked_notice_is_not_delivered_after_the_log_was_read(host):
    host.enable_notices(0x100)
    ns2 = NvmNamespace(MemoryBackend(1 << 20))
    host.subsys.add_namespace(ns2, 2)
    aer = host.submit(0x0C)
    host.subsys.attach(2, host.ctrl)
    assert host.reap()[0].cid == aer                              # delivered, now masked
    host.submit(0x0C)
    host.subsys.detach(1, host.ctrl)                           # queued behind the mask
    host.run(lambda: None)                                     # the IOThread is past the change
    assert host.peek() is None
    page = host.log(0x04, 4096)
    assert struct.unpack_from("<3I", page) == (1, 2, 0)        # both changes in one read
    host.run(lambda: None)                                     # and past the log read
    assert host.peek() is None                                 # no notice pointing at an empty list
    assert host.run(host.ctrl.pending_events) == []
    host.subsys.attach(1, host.ctrl)                           # a later change is reported
    assert host.reap()[0].dw0 == 0x040002
    assert struct.unpack_from("<2I", host.log(0x04, 4096)) == (1, 0)


def test_features_dataclass_defaults_match_the_table():
    f = Features()
    assert f.keep_alive_ms == 0 and f.error_recovery == {} and f.volatile_wc is True
