"""Namespace management at scale through the vfio-user client: many create / attach /
detach / delete cycles, each change reported by exactly one Namespace Attribute Changed
notice and a Changed Namespace List (04h) holding the changed NSIDs once each, ascending,
emptied by the read; more than 1024 changes between two reads leave FFFFFFFFh alone."""

from __future__ import annotations

import struct
import time

import pytest

from nvshell.device.backends import MemoryBackend
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.testing import NvmeTestHost

#: Notice (type 2), Namespace Attribute Changed (info 0), log page 04h.
NS_CHANGED = 2 | (0 << 8) | (0x04 << 16)
CYCLES = 256


def changed_list(h: NvmeTestHost) -> list[int]:
    """Read (and so clear) the Changed Namespace List: its non-zero entries."""
    ids = struct.unpack("<1024I", h.log(0x04, 4096))
    used = [n for n in ids if n]
    assert list(ids[:len(used)]) == used, "entries after a zero"
    return used


def active(h: NvmeTestHost) -> list[int]:
    ids = struct.unpack("<1024I", h.identify(0x02))
    return [n for n in ids if n]


@pytest.fixture
def host(tmp_path):
    h = NvmeTestHost.serve(tmp_path).enable()
    h.enable_notices()
    yield h
    h.close()


def test_many_cycles_each_change_one_notice(host):
    cntlid = host.ctrl.cntlid
    started = time.monotonic()
    for i in range(CYCLES):
        host.request_aen()
        nsid = host.ns_create(64, nmic=0)
        assert nsid == 1, i                                 # the lowest free NSID, again and again
        assert active(host) == []                           # allocated, not attached
        assert host.aens(timeout=0) == []                   # create alone changes nothing attached
        host.ns_attach(nsid, [cntlid])
        assert host.aens() == [NS_CHANGED], i
        assert changed_list(host) == [nsid]
        assert active(host) == [nsid]
        host.request_aen()
        host.ns_attach(nsid, [cntlid], detach=True)
        assert host.aens() == [NS_CHANGED], i
        assert changed_list(host) == [nsid]
        assert changed_list(host) == []                     # the read emptied it
        assert active(host) == []
        host.check(host.cmd(0x0D, nsid=nsid, cdw10=1), "delete")
        assert host.aens(timeout=0) == []
    # The device's share of the cycle (the guest test measures the rest): a few ms each.
    per_cycle = (time.monotonic() - started) / CYCLES
    assert per_cycle < 0.1, f"{per_cycle * 1000:.1f} ms per cycle"
    assert host.run(lambda: sorted(host.ctrl.namespaces)) == []
    assert host.subsys.namespaces == {}


def test_changes_before_the_read_are_coalesced_in_order(host):
    cntlid = host.ctrl.cntlid
    nsids = [host.ns_create(64) for _ in range(6)]
    assert nsids == [1, 2, 3, 4, 5, 6]
    host.request_aen()
    for nsid in (5, 2, 6, 1):
        host.ns_attach(nsid, [cntlid])
    host.ns_attach(2, [cntlid], detach=True)                # changed twice: listed once
    host.check(host.cmd(0x0D, nsid=6, cdw10=1), "delete")   # attached, then deleted
    assert host.aens() == [NS_CHANGED]                      # one notice: masked until the read
    host.request_aen()
    assert host.aens(timeout=0.2) == []
    assert changed_list(host) == [1, 2, 5, 6]
    assert active(host) == [1, 5]
    # After the read a new change gets a new notice, and only it is listed.
    host.ns_attach(3, [cntlid])
    assert host.aens() == [NS_CHANGED]
    assert changed_list(host) == [3]


def test_rae_keeps_the_notice_masked_and_the_list(host):
    cntlid = host.ctrl.cntlid
    nsid = host.ns_create(64)
    host.request_aen()
    host.ns_attach(nsid, [cntlid])
    assert host.aens() == [NS_CHANGED]
    ids = struct.unpack("<2I", host.log(0x04, 4096, rae=True)[:8])
    assert ids == (nsid, 0)
    host.request_aen()
    host.ns_attach(nsid, [cntlid], detach=True)
    assert host.aens(timeout=0.2) == []                     # still masked: RAE kept the event
    assert changed_list(host) == [nsid]


def test_more_than_1024_changes_overflow(tmp_path):
    subsys = Subsystem(max_nsid=1100, capacity=0)
    h = NvmeTestHost.serve(tmp_path, subsystem=subsys).enable()
    try:
        h.enable_notices()
        for _ in range(1025):
            subsys.add_namespace(NvmNamespace(MemoryBackend(1 << 16)))
        h.request_aen()
        for nsid in range(1, 1025):                         # 1024 changes still fit
            subsys.attach(nsid, h.ctrl)
        assert h.aens() == [NS_CHANGED]
        data = struct.unpack("<1024I", h.log(0x04, 4096, rae=True))
        assert list(data) == list(range(1, 1025))
        subsys.attach(1025, h.ctrl)                         # the 1025th: only FFFFFFFFh
        data = struct.unpack("<1024I", h.log(0x04, 4096))
        assert data[0] == 0xFFFFFFFF and not any(data[1:])
        assert changed_list(h) == []
        h.request_aen()
        subsys.detach(7, h.ctrl)                            # a fresh list after the read
        assert h.aens() == [NS_CHANGED]
        assert changed_list(h) == [7]
        assert len(active(h)) == 1024                       # Identify lists the first 1024
    finally:
        h.close()
