"""End to end: Controller behind the real VfioUserServer, driven by VfioUserClient.

This is the path QEMU takes: config space and BAR0 registers over REGION_READ/
WRITE, guest RAM passed as a memfd with DMA_MAP, doorbells through the sparse
mmap area (or trapped), MSI-X vectors as eventfds.
"""

from __future__ import annotations

import os
import time

import pytest

import nvshell.device.nvme  # noqa: F401
from nvshell.device.backends import MemoryBackend
from nvshell.device.iothread import IOThread
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import CQE, SQE, AdminOpcode
from nvshell.device.vfio_user.client import VfioUserClient
from nvshell.device.vfio_user.interface import RegionFlag, RegionIndex
from nvshell.device.vfio_user.server import VfioUserServer

RAM = 0x40000000
RAM_SIZE = 2 << 20
CC_ENABLE = 1 | (6 << 16) | (4 << 20) | (6 << 4)


class Guest:
    def __init__(self, tmp_path, doorbells: str):
        self.io = IOThread("e2e")
        self.io.start()
        self.ctrl = Controller(ControllerConfig(doorbells=doorbells, max_ioqpairs=4, max_intr_vectors=5),
                               None, self.io)
        self.server = VfioUserServer(str(tmp_path / "nvme.sock"), self.ctrl.pci, self.io, name="e2e")
        self.server.start()
        self.c = VfioUserClient(timeout=3.0).connect(str(tmp_path / "nvme.sock"))
        self.c.negotiate()
        self.ram = self.c.map_memory(RAM, RAM_SIZE)
        self.c.set_msix_eventfds(5)
        self.db = self.c.mmap_region_area(RegionIndex.BAR0) if doorbells == "mmap" else None
        self.next = RAM
        self.q: dict[int, dict] = {}
        self.cid = 0

    def close(self) -> None:
        self.c.close()
        self.server.close()
        self.io.run(self.ctrl.shutdown)
        self.io.stop()

    def alloc(self, n: int) -> int:
        addr = self.next
        self.next += (n + 0xFFF) & ~0xFFF
        return addr

    def ring(self, index: int, value: int) -> None:
        if self.db is not None:
            self.db[4 * index:4 * index + 4] = value.to_bytes(4, "little")
        else:
            self.c.write32(RegionIndex.BAR0, 0x1000 + 4 * index, value)

    def enable(self) -> None:
        asq, acq = self.alloc(4096), self.alloc(4096)
        self.c.write32(0, 0x24, 0x001F001F)
        self.c.region_write(0, 0x28, asq.to_bytes(8, "little"))
        self.c.region_write(0, 0x30, acq.to_bytes(8, "little"))
        self.c.write32(0, 0x14, CC_ENABLE)
        assert self.c.read32(0, 0x1C) & 3 == 1
        self.q[0] = dict(sq=asq, cq=acq, size=32, tail=0, head=0, phase=1)

    def cmd(self, opcode: int, qid: int = 0, vector: int = 0, **fields):
        q = self.q[qid]
        self.cid += 1
        self.ram.write(q["sq"] + 64 * q["tail"], SQE.pack(opcode=opcode, cid=self.cid, **fields))
        q["tail"] = (q["tail"] + 1) % q["size"]
        self.ring(2 * qid, q["tail"])
        assert self.c.wait_irq(vector, 3.0), "no interrupt"
        deadline = time.monotonic() + 3
        while True:
            e = CQE.unpack(self.ram.read(q["cq"] + 16 * q["head"], 16))
            if e.status & 1 == q["phase"]:
                break
            assert time.monotonic() < deadline, "no completion"
            time.sleep(0.001)
        q["head"] = (q["head"] + 1) % q["size"]
        if q["head"] == 0:
            q["phase"] ^= 1
        self.ring(2 * qid + 1, q["head"])
        assert e.cid == self.cid
        return e


@pytest.fixture(params=["mmap", "trap"])
def guest(request, tmp_path):
    g = Guest(tmp_path, request.param)
    yield g
    g.close()


def test_config_space_and_regions_over_the_wire(guest):
    c = guest.c
    cfg = c.region_read(RegionIndex.CONFIG, 0, 4096)
    assert cfg[0:4] == bytes.fromhex("584e0100")
    assert cfg[9:12] == bytes([0x02, 0x08, 0x01])
    info = c.region_info(RegionIndex.BAR0)
    assert info.size == 0x4000
    if guest.db is not None:
        assert info.flags & RegionFlag.MMAP and info.areas == [(0x1000, 0x1000)]
    else:
        assert not info.flags & RegionFlag.MMAP
    assert c.irq_info(2).count == 5
    assert c.region_read(RegionIndex.BAR0, 0, 8) == guest.ctrl.cap.to_bytes(8, "little")


def test_admin_and_io_over_the_wire(guest):
    g = guest
    ns = NvmNamespace(MemoryBackend(1 << 20))
    ns.nsid = 1
    g.io.run(g.ctrl.attach_namespace, ns)
    g.enable()
    e = g.cmd(AdminOpcode.SET_FEATURES, cdw10=7, cdw11=0x00030003)
    assert e.status >> 1 == 0 and e.dw0 == 0x00030003
    cq, sq = g.alloc(4096), g.alloc(4096)
    assert g.cmd(AdminOpcode.CREATE_IO_CQ, cdw10=15 << 16 | 1, cdw11=2 << 16 | 3, dptr1=cq).status >> 1 == 0
    assert g.cmd(AdminOpcode.CREATE_IO_SQ, cdw10=15 << 16 | 1, cdw11=1 << 16 | 1, dptr1=sq).status >> 1 == 0
    g.q[1] = dict(sq=sq, cq=cq, size=16, tail=0, head=0, phase=1)
    buf = g.alloc(4096)
    for i in range(20):                               # wraps the I/O queues
        g.ram.write(buf, bytes([i]) * 4096)
        e = g.cmd(0x01, qid=1, vector=2, nsid=1, dptr1=buf, cdw10=8 * i, cdw12=7)
        assert e.status >> 1 == 0, hex(e.status)
    g.ram.write(buf, bytes(4096))
    e = g.cmd(0x02, qid=1, vector=2, nsid=1, dptr1=buf, cdw10=8 * 19, cdw12=7)
    assert e.status >> 1 == 0 and g.ram.read(buf, 4096) == bytes([19]) * 4096
    assert g.ctrl.stats.host_write_commands == 20 and g.ctrl.stats.bytes_written == 20 * 4096
    # The host's reset path: disable, everything gone, enable again.
    g.c.write32(0, 0x14, 0)
    assert g.c.read32(0, 0x1C) == 0
    g.enable()
    assert g.cmd(AdminOpcode.GET_FEATURES, cdw10=7).dw0 == 0x00030003
