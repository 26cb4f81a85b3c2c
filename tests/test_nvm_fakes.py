"""Shared test doubles for the NVM data path: guest memory from a memfd, a fake controller.

No tests here; ``test_dataxfer``, ``test_nvm`` and ``test_namespace`` import it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from nvshell.device.nvme.controller import Features
from nvshell.device.nvme.commands import NVM, Command
from nvshell.device.nvme.dataxfer import DataMap, map_data
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.vfio_user.dma import PROT_READ, PROT_WRITE, DmaError, GuestMemory

PAGE = 4096
GUEST_BASE = 0x100000


class Guest:
    """A GuestMemory over one memfd plus a bump page allocator."""

    def __init__(self, size: int = 16 << 20, base: int = GUEST_BASE):
        self.fd = os.memfd_create("guest")
        os.ftruncate(self.fd, size)
        self.memory = GuestMemory()
        self.memory.map(base, size, self.fd, 0, PROT_READ | PROT_WRITE)
        self.base = base
        self.size = size
        self.next = base

    def alloc(self, npages: int = 1) -> int:
        addr = self.next
        self.next += npages * PAGE
        assert self.next <= self.base + self.size
        return addr

    def write(self, addr: int, data: bytes) -> None:
        self.memory.write(addr, data)

    def read(self, addr: int, n: int) -> bytes:
        return self.memory.read(addr, n)

    def close(self) -> None:
        self.memory.unmap_all()
        os.close(self.fd)


def make_cmd(opcode: int = 0, *, nsid: int = 1, flags: int = 0, dptr1: int = 0, dptr2: int = 0,
             cdw10: int = 0, cdw11: int = 0, cdw12: int = 0, cdw13: int = 0, ns: Any = None) -> Command:
    return Command(sqid=1, cid=7, opcode=opcode, flags=flags, nsid=nsid, mptr=0, dptr1=dptr1, dptr2=dptr2,
                   cdw10=cdw10, cdw11=cdw11, cdw12=cdw12, cdw13=cdw13, cdw14=0, cdw15=0, ns=ns)


@dataclass
class FakeStats:
    read_bytes: int = 0
    written_bytes: int = 0

    def add_read(self, n: int) -> None:
        self.read_bytes += n

    def add_write(self, n: int) -> None:
        self.written_bytes += n


@dataclass
class FakeCtrl:
    """What the NVM handlers use of a Controller: memory, transfer, config.mdts, stats, namespaces,
    features (the volatile write cache)."""

    memory: GuestMemory
    mdts: int = 7
    stats: FakeStats = field(default_factory=FakeStats)
    namespaces: dict = field(default_factory=dict)
    features: Features = field(default_factory=Features)

    @property
    def config(self) -> SimpleNamespace:
        return SimpleNamespace(mdts=self.mdts)

    def transfer(self, cmd: Command, length: int, *, allow_sgl: bool = True) -> DataMap:
        return map_data(self.memory, cmd, length, allow_sgl=allow_sgl)

    def offload(self, cmd: Command, work) -> None:
        """As the real controller without an IOThread: blocking backend work runs inline."""
        work()

    def run(self, cmd: Command) -> int:
        """Dispatch like the controller: returns the status (DmaError -> Data Transfer Error)."""
        info = NVM.get(cmd.opcode)
        if info is None:
            return Status.INVALID_OPCODE
        if info.nsid == "required" or (info.nsid == "optional" and cmd.nsid not in (0, 0xFFFFFFFF)):
            cmd.ns = self.namespaces.get(cmd.nsid)
            if cmd.ns is None and info.nsid == "required":
                return Status.INVALID_NSID
        try:
            info.handler(self, cmd)
        except NvmeError as exc:
            return exc.status
        except DmaError:
            return Status.DATA_TRANSFER_ERROR
        return Status.SUCCESS
