"""A host for the zoned namespace tests: a real Controller in a real Subsystem behind
the real VfioUserServer, driven over the socket by VfioUserClient (guest RAM is a
memfd, commands go through real queues, completions come back as CQEs)."""

from __future__ import annotations

import struct
import time
from typing import Any

import nvshell.device.nvme  # noqa: F401  (registers every handler)
from nvshell.device.iothread import IOThread
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import CQE, SQE, AdminOpcode, NvmOpcode
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.device.vfio_user.client import VfioUserClient
from nvshell.device.vfio_user.interface import RegionIndex
from nvshell.device.vfio_user.server import VfioUserServer

RAM = 0x40000000
RAM_SIZE = 8 << 20
PAGE = 4096
CSS_ALL = 6
CSS_NVM = 0


def cc_value(css: int) -> int:
    return 1 | (css << 4) | (6 << 16) | (4 << 20)


class ZnsHost:
    """One controller; ``io(...)`` submits on I/O queue 1 and returns the CQE."""

    def __init__(self, tmp_path: Any, css: int = CSS_ALL, mdts: int = 7):
        self.io_thread = IOThread("zns")
        self.io_thread.start()
        self.subsys = Subsystem(capacity=1 << 60)
        self.ctrl = Controller(ControllerConfig(doorbells="trap", max_ioqpairs=2, max_intr_vectors=3, mdts=mdts),
                               self.subsys, self.io_thread)
        self.ctrl.name = "zctrl"
        path = str(tmp_path / "zns.sock")
        self.server = VfioUserServer(path, self.ctrl.pci, self.io_thread, name="zns")
        self.server.start()
        self.c = VfioUserClient(timeout=5.0).connect(path)
        self.c.negotiate()
        self.ram = self.c.map_memory(RAM, RAM_SIZE)
        self.c.set_msix_eventfds(3)
        self.next = RAM
        self.q: dict[int, dict] = {}
        self.cid = 0
        self.css = css

    # ------------------------------------------------------------ plumbing
    def close(self) -> None:
        self.c.close()
        self.server.close()
        self.io_thread.run(self.ctrl.shutdown)
        self.io_thread.stop()

    def alloc(self, n: int) -> int:
        addr = self.next
        self.next += (n + PAGE - 1) & ~(PAGE - 1)
        assert self.next <= RAM + RAM_SIZE, "test guest RAM exhausted"
        return addr

    def write(self, addr: int, data: bytes) -> None:
        self.ram.write(addr, data)

    def read(self, addr: int, n: int) -> bytes:
        return self.ram.read(addr, n)

    def add_namespace(self, ns: Any) -> int:
        nsid = self.subsys.add_namespace(ns)
        self.subsys.attach(nsid, self.ctrl)
        return nsid

    def start(self) -> "ZnsHost":
        asq, acq = self.alloc(PAGE), self.alloc(PAGE)
        self.c.write32(RegionIndex.BAR0, 0x24, 0x001F001F)
        self.c.region_write(RegionIndex.BAR0, 0x28, asq.to_bytes(8, "little"))
        self.c.region_write(RegionIndex.BAR0, 0x30, acq.to_bytes(8, "little"))
        self.c.write32(RegionIndex.BAR0, 0x14, cc_value(self.css))
        assert self.c.read32(RegionIndex.BAR0, 0x1C) & 3 == 1
        self.q[0] = dict(sq=asq, cq=acq, size=32, tail=0, head=0, phase=1, vector=0)
        cq, sq = self.alloc(PAGE), self.alloc(PAGE)
        assert self.admin(AdminOpcode.CREATE_IO_CQ, cdw10=31 << 16 | 1, cdw11=1 << 16 | 3, dptr1=cq).status >> 1 == 0
        assert self.admin(AdminOpcode.CREATE_IO_SQ, cdw10=31 << 16 | 1, cdw11=1 << 16 | 1, dptr1=sq).status >> 1 == 0
        self.q[1] = dict(sq=sq, cq=cq, size=32, tail=0, head=0, phase=1, vector=1)
        return self

    def submit(self, qid: int, opcode: int, **fields: Any) -> Any:
        q = self.q[qid]
        self.cid = (self.cid + 1) & 0xFFFF
        self.ram.write(q["sq"] + 64 * q["tail"], SQE.pack(opcode=opcode, cid=self.cid, **fields))
        q["tail"] = (q["tail"] + 1) % q["size"]
        self.c.write32(RegionIndex.BAR0, 0x1000 + 8 * qid, q["tail"])
        self.c.wait_irq(q["vector"], 5.0)
        deadline = time.monotonic() + 5
        while True:
            e = CQE.unpack(self.ram.read(q["cq"] + 16 * q["head"], 16))
            if e.status & 1 == q["phase"]:
                break
            assert time.monotonic() < deadline, "no completion"
            time.sleep(0.001)
        q["head"] = (q["head"] + 1) % q["size"]
        if q["head"] == 0:
            q["phase"] ^= 1
        self.c.write32(RegionIndex.BAR0, 0x1000 + 8 * qid + 4, q["head"])
        assert e.cid == self.cid
        return e

    def admin(self, opcode: int, **fields: Any) -> Any:
        return self.submit(0, opcode, **fields)

    def io(self, opcode: int, **fields: Any) -> Any:
        return self.submit(1, opcode, **fields)

    # ------------------------------------------------------------ commands
    def buffer(self, data: bytes) -> tuple[int, int]:
        """Guest memory holding ``data`` and its PRP1/PRP2 (a PRP list beyond two pages)."""
        n = max(1, (len(data) + PAGE - 1) // PAGE)
        base = self.alloc(n * PAGE)
        self.write(base, data)
        if n == 1:
            return base, 0
        if n == 2:
            return base, base + PAGE
        prp_list = self.alloc(PAGE)
        self.write(prp_list, struct.pack(f"<{n - 1}Q", *(base + PAGE * i for i in range(1, n))))
        return base, prp_list

    def rw(self, opcode: int, nsid: int, slba: int, nlb: int, data: bytes = b"", cdw12: int = 0,
           buf: int | None = None, prp2: int = 0) -> Any:
        if buf is None:
            buf, prp2 = self.buffer(data or bytes(nlb * 512))
        return self.io(opcode, nsid=nsid, dptr1=buf, dptr2=prp2, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                       cdw12=((nlb - 1) & 0xFFFF) | cdw12)

    def write_lba(self, nsid: int, slba: int, nlb: int, data: bytes = b"") -> int:
        return status(self.rw(NvmOpcode.WRITE, nsid, slba, nlb, data))

    def read_lba(self, nsid: int, slba: int, nlb: int, lba_size: int = 512) -> tuple[int, bytes]:
        buf, prp2 = self.buffer(bytes(nlb * lba_size))
        e = self.rw(NvmOpcode.READ, nsid, slba, nlb, buf=buf, prp2=prp2)
        return status(e), self.read(buf, nlb * lba_size)

    def append(self, nsid: int, zslba: int, nlb: int, data: bytes = b"") -> tuple[int, int]:
        e = self.rw(NvmOpcode.ZONE_APPEND, nsid, zslba, nlb, data)
        return status(e), e.dw0 | (e.dw1 << 32)

    def zms(self, nsid: int, slba: int, zsa: int, select_all: bool = False, data: bytes = b"") -> int:
        fields: dict[str, Any] = {}
        if data:
            fields["dptr1"], fields["dptr2"] = self.buffer(data)
        return status(self.io(NvmOpcode.ZONE_MANAGEMENT_SEND, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                              cdw13=zsa | (int(select_all) << 8), **fields))

    def zmr(self, nsid: int, slba: int, size: int, zra: int = 0, zrasf: int = 0, partial: bool = False
            ) -> tuple[int, bytes]:
        buf, prp2 = self.buffer(bytes(max(size, 4)))
        e = self.io(NvmOpcode.ZONE_MANAGEMENT_RECEIVE, nsid=nsid, dptr1=buf, dptr2=prp2, cdw10=slba & 0xFFFFFFFF,
                    cdw11=slba >> 32, cdw12=size // 4 - 1, cdw13=zra | (zrasf << 8) | (int(partial) << 16))
        return status(e), self.read(buf, size)

    def identify(self, cns: int, nsid: int = 0, csi: int = 0) -> tuple[int, bytes]:
        buf = self.alloc(PAGE)
        e = self.admin(AdminOpcode.IDENTIFY, nsid=nsid, dptr1=buf, cdw10=cns, cdw11=csi << 24)
        return status(e), self.read(buf, PAGE)


def status(entry: Any) -> int:
    """(SCT << 8) | SC of a CQE."""
    return (entry.status >> 1) & 0x7FF
