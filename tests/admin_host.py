"""A host for admin-command tests: a real Controller in a real Subsystem behind the real
VfioUserServer, driven through ``VfioUserClient`` (config space, BAR0, DMA_MAP'd guest RAM,
mmapped doorbells, MSI-X eventfds) -- the path QEMU takes.

``admin(opcode, ..., data=..., length=...)`` submits one admin command, waits for its
completion and returns ``(cqe, bytes read back from the data buffer)``.
"""

from __future__ import annotations

import time
from typing import Any

import nvshell.device.nvme  # noqa: F401  (registers every command)
from nvshell.device.backends import MemoryBackend
from nvshell.device.iothread import IOThread
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import CQE, SQE
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.device.vfio_user.client import VfioUserClient
from nvshell.device.vfio_user.interface import RegionIndex
from nvshell.device.vfio_user.server import VfioUserServer

RAM = 0x40000000
RAM_SIZE = 8 << 20
CC_ENABLE = 1 | (6 << 16) | (4 << 20) | (6 << 4)
BUF_SIZE = 64 << 10


def status(e: Any) -> int:
    return (e.status >> 1) & 0x7FF


def dnr(e: Any) -> bool:
    return bool(e.status & 0x8000)


class AdminHost:
    def __init__(self, tmp_path: Any, name: str = "ctrl0", subsystem: Subsystem | None = None,
                 ns_size: int = 1 << 20, lba_size: int = 512, **config: Any):
        self.io = IOThread(f"adm-{name}")
        self.io.start()
        self.subsys = subsystem or Subsystem()
        cfg = ControllerConfig(serial=name, max_ioqpairs=4, max_intr_vectors=5, **config)
        self.ctrl = Controller(cfg, None, self.io)
        self.ctrl.name = name
        self.ctrl.subsystem = self.subsys
        self.io.run(self.subsys.add_controller, self.ctrl)
        self.ns = None
        if ns_size:
            self.ns = NvmNamespace(MemoryBackend(ns_size), lba_size=lba_size)
            self.subsys.add_namespace(self.ns)
            self.subsys.attach(self.ns.nsid, self.ctrl, notify=False)
        sock = str(tmp_path / f"{name}.sock")
        self.server = VfioUserServer(sock, self.ctrl.pci, self.io, name=name)
        self.server.start()
        self.c = VfioUserClient(timeout=5.0).connect(sock)
        self.c.negotiate()
        self.ram = self.c.map_memory(RAM, RAM_SIZE)
        self.c.set_msix_eventfds(5)
        # doorbells=mmap: the shared page; trap (the default): REGION_WRITE messages.
        self.db = self.c.mmap_region_area(RegionIndex.BAR0) if self.ctrl.doorbells.fd is not None else None
        self.next = RAM
        self.q: dict[int, dict] = {}
        self.cid = 0
        self.buf = self.alloc(BUF_SIZE)
        self.enable()

    # -------------------------------------------------------------- plumbing
    def close(self) -> None:
        self.c.close()
        self.server.close()
        self.io.run(self.ctrl.shutdown)
        self.io.stop()

    def alloc(self, n: int) -> int:
        addr = self.next
        self.next += (n + 0xFFF) & ~0xFFF
        assert self.next <= RAM + RAM_SIZE
        return addr

    def ring(self, index: int, value: int) -> None:
        if self.db is None:
            self.c.write32(RegionIndex.BAR0, 0x1000 + 4 * index, value)
        else:
            self.db[4 * index:4 * index + 4] = value.to_bytes(4, "little")

    def reg32(self, offset: int) -> int:
        return self.c.read32(RegionIndex.BAR0, offset)

    def enable(self) -> None:
        asq, acq = self.alloc(4096), self.alloc(4096)
        self.c.write32(0, 0x24, 0x003F003F)
        self.c.region_write(0, 0x28, asq.to_bytes(8, "little"))
        self.c.region_write(0, 0x30, acq.to_bytes(8, "little"))
        self.c.write32(0, 0x14, CC_ENABLE)
        assert self.c.read32(0, 0x1C) & 3 == 1
        self.q[0] = dict(sq=asq, cq=acq, size=64, tail=0, head=0, phase=1, vector=0)

    def reset(self) -> None:
        """CC.EN 1 -> 0 -> 1: a Controller Level Reset, then a fresh admin queue."""
        self.c.write32(0, 0x14, 0)
        deadline = time.monotonic() + 3
        while self.c.read32(0, 0x1C) & 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        self.q = {}
        self.enable()

    def submit(self, opcode: int, qid: int = 0, **fields: Any) -> int:
        q = self.q[qid]
        self.cid = (self.cid + 1) & 0xFFFF
        self.ram.write(q["sq"] + 64 * q["tail"], SQE.pack(opcode=opcode, cid=self.cid, **fields))
        q["tail"] = (q["tail"] + 1) % q["size"]
        self.ring(2 * qid, q["tail"])
        return self.cid

    def reap(self, qid: int = 0, timeout: float = 3.0) -> Any:
        q = self.q[qid]
        deadline = time.monotonic() + timeout
        while True:
            e = CQE.unpack(self.ram.read(q["cq"] + 16 * q["head"], 16))
            if e.status & 1 == q["phase"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no completion on CQ {qid}")
            self.c.wait_irq(q["vector"], 0.05)
        q["head"] = (q["head"] + 1) % q["size"]
        if q["head"] == 0:
            q["phase"] ^= 1
        self.ring(2 * qid + 1, q["head"])
        return e

    def peek(self, qid: int = 0) -> Any | None:
        q = self.q[qid]
        e = CQE.unpack(self.ram.read(q["cq"] + 16 * q["head"], 16))
        return e if e.status & 1 == q["phase"] else None

    def cmd(self, opcode: int, qid: int = 0, **fields: Any) -> Any:
        cid = self.submit(opcode, qid, **fields)
        e = self.reap(qid)
        assert e.cid == cid, (e, cid)
        return e

    def admin(self, opcode: int, *, data: bytes | None = None, length: int = 0, **fields: Any) -> tuple[Any, bytes]:
        """One admin command with the shared data buffer as PRP1 (+PRP2/list as needed)."""
        n = max(length, len(data) if data else 0)
        assert n <= BUF_SIZE
        self.ram.write(self.buf, (data or b"").ljust(n, b"\0") if n else b"")
        fields.setdefault("dptr1", self.buf)
        if n > 4096:
            fields.setdefault("dptr2", self._prp_list(self.buf, n))
        e = self.cmd(opcode, **fields)
        return e, (self.ram.read(self.buf, n) if n else b"")

    def _prp_list(self, addr: int, n: int) -> int:
        pages = [addr + off for off in range(4096, (n + 4095) & ~4095, 4096)]
        if len(pages) == 1:
            return pages[0]
        lst = getattr(self, "_prp_page", None) or self.alloc(4096)
        self._prp_page = lst
        self.ram.write(lst, b"".join(p.to_bytes(8, "little") for p in pages))
        return lst

    # ----------------------------------------------------------- shortcuts
    def get_log(self, lid: int, length: int, *, nsid: int = 0xFFFFFFFF, offset: int = 0, rae: bool = False,
                lsp: int = 0, lsi: int = 0, csi: int = 0) -> tuple[Any, bytes]:
        numd = length // 4 - 1
        return self.admin(0x02, length=length, nsid=nsid,
                          cdw10=lid | (lsp << 8) | (int(rae) << 15) | ((numd & 0xFFFF) << 16),
                          cdw11=(numd >> 16) | (lsi << 16), cdw12=offset & 0xFFFFFFFF, cdw13=offset >> 32,
                          cdw14=csi << 24)

    def log(self, lid: int, length: int, **kw: Any) -> bytes:
        e, data = self.get_log(lid, length, **kw)
        assert status(e) == 0, hex(status(e))
        return data

    def identify_ctrl(self) -> bytes:
        e, data = self.admin(0x06, length=4096, cdw10=1)
        assert status(e) == 0
        return data

    def get_feature(self, fid: int, sel: int = 0, nsid: int = 0, cdw11: int = 0) -> Any:
        return self.cmd(0x0A, nsid=nsid, cdw10=fid | (sel << 8), cdw11=cdw11, dptr1=self.buf)

    def set_feature(self, fid: int, value: int, nsid: int = 0, save: bool = False, data: bytes | None = None) -> Any:
        e, _ = self.admin(0x09, data=data, nsid=nsid, cdw10=fid | (int(save) << 31), cdw11=value)
        return e

    def enable_notices(self, aec: int = 0xF00) -> None:
        assert status(self.set_feature(0x0B, aec)) == 0

    def create_io_queues(self, qid: int = 1, size: int = 32, vector: int = 1) -> None:
        cq, sq = self.alloc(16 * size), self.alloc(64 * size)
        assert status(self.cmd(0x05, cdw10=(size - 1) << 16 | qid, cdw11=vector << 16 | 3, dptr1=cq)) == 0
        assert status(self.cmd(0x01, cdw10=(size - 1) << 16 | qid, cdw11=qid << 16 | 1, dptr1=sq)) == 0
        self.q[qid] = dict(sq=sq, cq=cq, size=size, tail=0, head=0, phase=1, vector=vector)

    def nvm(self, opcode: int, slba: int = 0, nlb: int = 1, *, nsid: int = 1, data: bytes | None = None,
           qid: int = 1, cdw12: int = 0, **fields: Any) -> tuple[Any, bytes]:
        lba = self.ctrl.namespaces[nsid].lba_size if nsid in self.ctrl.namespaces else 512
        n = nlb * lba
        self.ram.write(self.buf, (data or b"").ljust(n, b"\0"))
        fields.setdefault("dptr1", self.buf)
        if n > 4096:
            fields.setdefault("dptr2", self._prp_list(self.buf, n))
        e = self.cmd(opcode, qid, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                     cdw12=((nlb - 1) & 0xFFFF) | cdw12, **fields)
        return e, self.ram.read(self.buf, n)
