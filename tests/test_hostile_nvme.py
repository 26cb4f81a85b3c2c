"""Hostile guests (a DMA-capable vfio-user client playing the NVMe driver):
regression tests for issue 13's NVMe findings, through the real sockets."""

from __future__ import annotations

import resource
import time

import pytest

from nvshell.device.nvme.spec import AdminOpcode, LogPage
from nvshell.device.nvme.status import Status
from tests.test_controller_e2e import Guest


@pytest.fixture
def guest(tmp_path):
    g = Guest(tmp_path, "mmap")
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
