"""Shared NVM test helpers (a rig, not a fake): guest memory from a memfd, and the real
controller driven one command at a time.

No tests here; ``test_dataxfer``, ``test_nvm`` and ``test_namespace`` import it.
"""

from __future__ import annotations

import os
import dataclasses
from typing import Any

from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.vfio_user.dma import PROT_READ, PROT_WRITE, GuestMemory

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


class NvmHost:
    """The real ``Controller`` for one-command NVM tests: guest memory bound, no transport and
    no IOThread (blocking backend work then runs inline, as ``Controller.offload`` does), and
    ``run`` dispatches through the controller's own ``CommandEngine`` -- no second dispatcher."""

    def __init__(self, memory: GuestMemory, mdts: int = 7):
        self.ctrl = Controller(ControllerConfig(mdts=mdts), None, None)
        self.ctrl.bind(memory, None)  # type: ignore[arg-type]

    @property
    def namespaces(self) -> dict:
        return self.ctrl.namespaces

    @property
    def stats(self) -> Any:
        return self.ctrl.stats

    @property
    def mdts(self) -> int:
        return self.ctrl.config.mdts

    @mdts.setter
    def mdts(self, value: int) -> None:
        self.ctrl.config = dataclasses.replace(self.ctrl.config, mdts=value)

    def run(self, cmd: Command) -> int:
        """The command's completion status (a handler that defers it is a test bug)."""
        outcome = self.ctrl.engine.dispatch(cmd)
        assert outcome is not None, "the handler deferred the command"
        return outcome[0]
