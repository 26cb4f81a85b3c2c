"""A real Controller for admin-command tests, without a socket or an IOThread.

Why: Identify, Get Log Page and Namespace Management tests check many fields and
error paths; each check is one admin command. ``AdminRig`` builds the real
``Controller`` (its registers, command engine, async events, SMART counters) in a
real ``Subsystem``, binds memfd guest RAM through the real PCI function, and runs each
command the way an admin SQ entry runs: an ``SQE`` packed into bytes, decoded by
``Command.from_sqe``, executed by ``CommandEngine.dispatch`` (opcode lookup, namespace
lookup, admission, the handler, its data transfer over PRPs). The transport is covered
by the tests that drive ``nvshell.testing.NvmeTestHost`` (tests/test_admin_*.py, test_controller_e2e.py).

With no IOThread the controller runs on the test's thread (``Subsystem`` calls it
directly), so a test reads controller state right after a command.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import nvshell.device.nvme  # noqa: F401  (registers every command)
from nvshell.device.nvme.commands import Command
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import SQE, AsyncEventType, LogPage, NoticeInfo
from nvshell.device.nvme.status import NvmeError
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.device.vfio_user.dma import GuestMemory

RAM_BASE = 0x100000
RAM_SIZE = 2 << 20
PAGE = 4096
#: The data buffer: PRP1 at its start, the PRP list on the page below it.
PRP_LIST = RAM_BASE
BUF = RAM_BASE + PAGE
#: The event a namespace attach/detach/delete posts to each controller it touches.
NOTICE = (AsyncEventType.NOTICE, NoticeInfo.NS_ATTRIBUTE_CHANGED, LogPage.CHANGED_NS_LIST)
#: Written past the expected data before each command: a handler writing more than
#: the command asked for would overwrite it.
GUARD = b"\xa5" * 64


class _NoInterrupts:
    """Interrupt sink of the rig: admin commands here never complete through a CQ."""

    def trigger(self, vector: int) -> bool:
        return True


class AdminRig:
    """One real controller (``.ctrl``) in ``subsystem`` with guest RAM bound."""

    def __init__(self, subsystem: Subsystem | None = None, cntlid: int = 0, *, notices: bool = False,
                 **config: Any):
        config.setdefault("serial", "SER123")
        config.setdefault("oui", 0x525400)
        self.subsystem = subsystem
        self.ctrl = Controller(ControllerConfig(cntlid=cntlid, **config), subsystem, None)
        self.fd = os.memfd_create("rig-ram")
        os.ftruncate(self.fd, RAM_SIZE)
        self.ram = mmap.mmap(self.fd, RAM_SIZE)
        self.mem = GuestMemory()
        self.mem.map(RAM_BASE, RAM_SIZE, self.fd, 0, 3)
        self.ctrl.pci.bind(self.mem, _NoInterrupts())
        self.cid = 0
        #: Log pages read with RAE=0 (the reads that unmask their event type), in order.
        self.logs_read: list[int] = []
        real_log_page_read = self.ctrl.log_page_read

        def log_page_read(log_id: int, rae: bool = False, cleared: bool = False) -> None:
            if not rae:
                self.logs_read.append(log_id)
            real_log_page_read(log_id, rae, cleared)
        self.ctrl.log_page_read = log_page_read  # type: ignore[method-assign]
        if notices:
            self.enable_notices()

    @property
    def cntlid(self) -> int:
        return self.ctrl.cntlid

    def close(self) -> None:
        self.ctrl.shutdown()
        self.mem.unmap_all()
        self.ram.close()
        os.close(self.fd)

    @property
    def namespaces(self) -> dict[int, Any]:
        return self.ctrl.namespaces

    @property
    def events(self) -> list[tuple[int, int, int]]:
        """Asynchronous events waiting for an AER (none is outstanding on a rig)."""
        return self.ctrl.pending_events()

    def clear_events(self) -> None:
        """As a host that got its AENs and read the Changed Namespace List."""
        self.ctrl.events.events.clear()
        self.logs_read.clear()
        self.ctrl.take_changed_namespaces()

    def enable_notices(self, aec: int = 0xF00) -> None:
        """Set Features Asynchronous Event Configuration, as a host does after its first
        scan: the controller sends notices only once they are enabled."""
        self.admin(0x09, cdw10=0x0B, cdw11=aec, length=0)

    def admin(self, opcode: int, nsid: int = 0, data: bytes = b"", *, length: int = 4096,
              **cdw: int) -> tuple[Command, bytes]:
        """Run one admin command through the command engine; return it (``result`` holds
        Dword 0) and the ``length`` bytes of its data buffer afterwards. A failed command
        raises ``NvmeError`` with the status (and DNR) the controller would post."""
        n = max(length, len(data))
        assert BUF + n + len(GUARD) <= RAM_BASE + RAM_SIZE
        self._write(BUF, data.ljust(n, b"\0") + GUARD)
        pages = [BUF + off for off in range(PAGE, (n + PAGE - 1) & ~(PAGE - 1), PAGE)]
        dptr2 = 0
        if len(pages) == 1:
            dptr2 = pages[0]
        elif pages:
            assert len(pages) <= PAGE // 8
            self._write(PRP_LIST, b"".join(p.to_bytes(8, "little") for p in pages))
            dptr2 = PRP_LIST
        self.cid = (self.cid + 1) & 0xFFFF
        fields = {f"cdw{i}": cdw.pop(f"cdw{i}", 0) for i in range(10, 16)}
        assert not cdw, f"unknown fields {sorted(cdw)}"
        raw = SQE.struct.unpack(SQE.pack(opcode=opcode, cid=self.cid, nsid=nsid, dptr1=BUF, dptr2=dptr2,
                                         **fields))
        cmd = Command.from_sqe(0, raw)
        outcome = self.ctrl.engine.dispatch(cmd)
        assert outcome is not None, f"admin command {opcode:#x} was deferred"
        status, dnr, _ = outcome
        assert self._read(BUF + n, len(GUARD)) == GUARD, "the controller wrote past the data buffer"
        if status:
            raise NvmeError(status, dnr=dnr)
        return cmd, self._read(BUF, length)

    def _write(self, addr: int, data: bytes) -> None:
        self.ram[addr - RAM_BASE:addr - RAM_BASE + len(data)] = data

    def _read(self, addr: int, n: int) -> bytes:
        return bytes(self.ram[addr - RAM_BASE:addr - RAM_BASE + n])
