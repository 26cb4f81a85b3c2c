"""Hostile guests (a DMA-capable vfio-user client playing the NVMe driver):
regression tests for issue 13's NVMe findings, through the real sockets."""

from __future__ import annotations

import resource
import struct
import time

import pytest

from nvshell.device.nvme.spec import AdminOpcode, LogPage
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost


@pytest.fixture
def guest(tmp_path):
    g = NvmeTestHost.serve(tmp_path, name="e2e", doorbells="mmap")
    g.enable()
    yield g
    g.close()


def _status(e) -> int:
    return (e.status >> 1) & 0x7FF


def test_get_log_page_huge_numd_is_refused_before_any_allocation(guest):
    """NUMD = 0xFFFFFFFF (16 GiB): Invalid Field by MDTS, at once, no allocation."""
    buf = guest.alloc(4096)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    for lid in (LogPage.SMART, LogPage.ERROR, LogPage.CMD_EFFECTS):
        e = guest.cmd(AdminOpcode.GET_LOG_PAGE, nsid=0xFFFFFFFF, dptr1=buf,
                      cdw10=0xFFFF0000 | lid, cdw11=0xFFFF)
        assert _status(e) == Status.INVALID_FIELD, hex(e.status)
    assert time.monotonic() - t0 < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 64 * 1024  # KiB: < 64 MiB
    # The largest transfer MDTS allows (128 KiB here) still works and pads with zeros.
    mdts_bytes = 4096 << guest.ctrl.config.mdts
    big = guest.alloc(mdts_bytes)
    prp_list = guest.alloc(4096)
    pages = [big + 4096 * i for i in range(1, mdts_bytes // 4096)]
    guest.ram.write(prp_list, b"".join(p.to_bytes(8, "little") for p in pages))
    guest.ram.write(big, b"\xaa" * mdts_bytes)
    numd = mdts_bytes // 4 - 1
    e = guest.cmd(AdminOpcode.GET_LOG_PAGE, nsid=0xFFFFFFFF, dptr1=big, dptr2=prp_list,
                  cdw10=((numd & 0xFFFF) << 16) | LogPage.SMART, cdw11=numd >> 16)
    assert _status(e) == 0, hex(e.status)
    data = guest.ram.read(big, mdts_bytes)
    assert data[512:] == bytes(mdts_bytes - 512)


def _create_data(nsze: int) -> bytes:
    data = bytearray(4096)
    struct.pack_into("<QQ", data, 0, nsze, nsze)  # NSZE, NCAP; FLBAS 0 (512 B); NMIC 0
    return bytes(data)


def test_guest_created_namespaces_are_bounded_by_the_subsystem_property(tmp_path):
    """Namespace Management create draws on ns-mgmt-capacity (not on host RAM nobody
    configured): past it, Namespace Insufficient Capacity; the configured namespace
    does not count against it; the property is live (qom-set)."""
    from nvshell.device.machine import Machine
    m = Machine(str(tmp_path))
    try:
        m.object_add("x-nvme-subsystem", "s0", {"ns-mgmt-capacity": "48M"})
        m.object_add("x-nvme-ns-nvm", "big", {"subsys": "s0", "size": "256M", "attached-to": ["all"]})
        sock = str(tmp_path / "c0.sock")
        m.device_add("x-nvme-ctrl", "c0", {"subsys": "s0", "socket": sock})
        assert m.qom_get("/objects/s0", "ns-mgmt-capacity") == 48 << 20
        g = NvmeTestHost(sock, ram_size=2 << 20, timeout=3.0)
        try:
            g.enable()
            data = g.alloc(4096)
            g.ram.write(data, _create_data((16 << 20) // 512))
            created = []
            for _ in range(4):
                e = g.cmd(0x0D, dptr1=data, cdw10=0)  # Namespace Management, SEL 0: create
                if _status(e):
                    break
                created.append(e.dw0)
            assert len(created) == 3, created
            assert _status(e) == Status.NS_INSUFFICIENT_CAPACITY, hex(e.status)
            # Identify Controller: TNVMCAP = configured 256M + created 48M, UNVMCAP = 0
            ident = g.alloc(4096)
            assert _status(g.cmd(AdminOpcode.IDENTIFY, dptr1=ident, cdw10=1)) == 0
            raw = g.ram.read(ident, 4096)
            assert int.from_bytes(raw[280:296], "little") == (256 + 48) << 20
            assert int.from_bytes(raw[296:312], "little") == 0
            # deleting one frees its share; lowering the property to 0 forbids more
            assert _status(g.cmd(0x0D, nsid=created[0], cdw10=1)) == 0
            m.qom_set("/objects/s0", "ns-mgmt-capacity", 0)
            e = g.cmd(0x0D, dptr1=data, cdw10=0)
            assert _status(e) == Status.NS_INSUFFICIENT_CAPACITY, hex(e.status)
        finally:
            g.close()
    finally:
        m.shutdown()


def test_the_default_guest_capacity_is_small_and_stated(tmp_path):
    from nvshell.device.machine import Machine
    from nvshell.device.nvme.subsystem import DEFAULT_CAPACITY
    m = Machine(str(tmp_path))
    try:
        m.object_add("x-nvme-subsystem", "s0", {})
        assert m.qom_get("/objects/s0", "ns-mgmt-capacity") == DEFAULT_CAPACITY == 1 << 30
    finally:
        m.shutdown()
