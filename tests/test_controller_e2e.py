"""End to end: Controller behind the real VfioUserServer, driven by VfioUserClient.

This is the path QEMU takes: config space and BAR0 registers over REGION_READ/
WRITE, guest RAM passed as a memfd with DMA_MAP, doorbells through the sparse
mmap area (or trapped), MSI-X vectors as eventfds.
"""

from __future__ import annotations

import pytest

from nvshell.device.backends import MemoryBackend
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.vfio_user.interface import RegionFlag, RegionIndex
from nvshell.testing import NvmeTestHost, status

@pytest.fixture(params=["mmap", "trap"])
def guest(request, tmp_path):
    g = NvmeTestHost.serve(tmp_path, name="e2e", doorbells=request.param)
    yield g
    g.close()


def test_config_space_and_regions_over_the_wire(guest):
    c = guest.client
    cfg = c.region_read(RegionIndex.CONFIG, 0, 4096)
    assert cfg[0:4] == bytes.fromhex("584e0100")
    assert cfg[9:12] == bytes([0x02, 0x08, 0x01])
    info = c.region_info(RegionIndex.BAR0)
    assert info.size == 0x4000
    if guest.doorbell_mmap:
        assert info.flags & RegionFlag.MMAP and info.areas == [(0x1000, 0x1000)]
    else:
        assert not info.flags & RegionFlag.MMAP
    assert c.irq_info(2).count == 5
    assert c.region_read(RegionIndex.BAR0, 0, 8) == guest.ctrl.cap.to_bytes(8, "little")


def test_admin_and_io_over_the_wire(guest):
    g = guest
    ns = NvmNamespace(MemoryBackend(1 << 20))
    g.target.add_namespace(ns, notify=False)
    g.enable()
    e = g.cmd(AdminOpcode.SET_FEATURES, cdw10=7, cdw11=0x00030003)
    assert status(e) == 0 and e.dw0 == 0x00030003
    g.create_io_queue(1, 16, vector=2)
    assert g.client.wait_irq(0, 1.0)                  # admin completions came with their MSI-X vector
    for i in range(20):                               # wraps the I/O queues
        assert status(g.nvm(0x01, 8 * i, 8, data=bytes([i]) * 4096)[0]) == 0
    e, data = g.nvm(0x02, 8 * 19, 8)
    assert status(e) == 0 and data == bytes([19]) * 4096
    assert g.client.wait_irq(2, 1.0) and not g.client.wait_irq(1, 0)   # I/O ones with theirs
    assert g.ctrl.stats.host_write_commands == 20 and g.ctrl.stats.bytes_written == 20 * 4096
    # The host's reset path: disable, everything gone, enable again.
    g.write_reg32(0x14, 0)
    assert g.reg32(0x1C) == 0
    g.queues.clear()
    g.enable()
    assert g.cmd(AdminOpcode.GET_FEATURES, cdw10=7).dw0 == 0x00030003
