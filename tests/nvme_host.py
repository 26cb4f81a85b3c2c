"""``NvmeTestHost`` plus the admin commands the introspection test sends, and AEN collection.

Why a subclass: ``nvshell.testing.NvmeTestHost`` drives a controller socket as QEMU's
vfio-user-pci would (the path a guest takes); these tests also need Get/Set Features, Get Log
Page, Format NVM, Namespace Management/Attachment and an Asynchronous Event Request left
outstanding while other admin commands run, whose completion must not be mistaken for theirs.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.vfio_user.interface import IrqIndex, RegionIndex
from nvshell.testing import PAGE, NvmeHostError, NvmeTestHost

FID_NUMBER_OF_QUEUES = 0x07
FID_ASYNC_EVENT_CONFIG = 0x0B
#: Asynchronous Event Configuration: Namespace Attribute Notices (Linux enables them).
AEC_NS_ATTRIBUTE = 1 << 8


class AdminHost(NvmeTestHost):
    """An enabled controller with an admin queue; ``aens()`` returns AEN completions."""

    def __init__(self, socket: str | Path, timeout: float = 5.0):
        super().__init__(socket, ram_size=2 << 20, timeout=timeout)
        try:
            self.socket = str(socket)
            self.doorbell_mmap = bool(self.client.region_info(RegionIndex.BAR0).areas)
            self.msix_vectors = int(self.client.irq_info(IrqIndex.MSIX).count)
            self.buf = self.alloc(PAGE)
            self._aer: set[int] = set()
            self._aens: list[int] = []
            self.enable()
            self.set_features(FID_ASYNC_EVENT_CONFIG, AEC_NS_ATTRIBUTE)
        except BaseException:
            self.close()
            raise

    def reg64(self, offset: int) -> int:
        return int.from_bytes(self.client.region_read(RegionIndex.BAR0, offset, 8), "little")

    # ---------------------------------------------------------------- admin queue with AERs
    def _take_aen(self, cqe: Any) -> bool:
        if cqe.cid not in self._aer:
            return False
        self._aer.discard(cqe.cid)
        if self.status(cqe):
            raise NvmeHostError(f"Asynchronous Event Request failed with status {self.status(cqe):#x}")
        self._aens.append(cqe.dw0)
        return True

    def admin(self, opcode: int, **fields: int) -> Any:
        """One admin command; AER completions arriving meanwhile are kept for ``aens``."""
        cid = self.submit(opcode, 0, **fields)
        while True:
            cqe = self.reap(0)[0]
            if self._take_aen(cqe):
                continue
            if cqe.cid != cid:
                raise NvmeHostError(f"admin queue: completion for cid {cqe.cid}, expected {cid}")
            return self.check(cqe, f"admin opcode {opcode:#x}")

    def request_aen(self) -> None:
        """Have one Asynchronous Event Request outstanding."""
        if not self._aer:
            self._aer.add(self.submit(AdminOpcode.ASYNC_EVENT_REQUEST, 0))

    def aens(self, timeout: float = 2.0) -> list[int]:
        """AEN completions (dword 0) received so far, waiting up to ``timeout`` for one."""
        deadline = time.monotonic() + timeout
        while not self._aens and self._aer:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                cqe = self.reap(0, timeout=min(left, 0.05))[0]
            except NvmeHostError:
                continue
            if not self._take_aen(cqe):
                raise NvmeHostError(f"admin queue: unexpected completion for cid {cqe.cid}")
        out, self._aens = self._aens, []
        return out

    # ---------------------------------------------------------------- commands
    def identify(self, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> bytes:  # type: ignore[override]
        self.ram.write(self.buf, bytes(PAGE))
        self.admin(AdminOpcode.IDENTIFY, nsid=nsid, dptr1=self.buf, cdw10=cns | (cntid << 16), cdw11=csi << 24)
        return self.ram.read(self.buf, PAGE)

    def set_features(self, fid: int, cdw11: int) -> int:
        return self.admin(AdminOpcode.SET_FEATURES, cdw10=fid, cdw11=cdw11).dw0

    def get_features(self, fid: int, cdw11: int = 0) -> int:
        return self.admin(AdminOpcode.GET_FEATURES, cdw10=fid, cdw11=cdw11).dw0

    def get_log(self, lid: int, nbytes: int, nsid: int = 0xFFFFFFFF) -> bytes:
        numd = nbytes // 4 - 1
        self.admin(AdminOpcode.GET_LOG_PAGE, nsid=nsid, dptr1=self.buf, cdw10=lid | ((numd & 0xFFFF) << 16),
                   cdw11=numd >> 16)
        return self.ram.read(self.buf, nbytes)

    def format_nvm(self, nsid: int, lbaf: int, *, mset: int = 0, pi: int = 0, pil: int = 0) -> None:
        cdw10 = (lbaf & 0xF) | (mset << 4) | (pi << 5) | (pil << 8) | ((lbaf >> 4) << 12)
        self.admin(AdminOpcode.FORMAT_NVM, nsid=nsid, cdw10=cdw10)

    def ns_create(self, nsze: int, flbas: int = 0, nmic: int = 1) -> int:
        data = bytearray(PAGE)
        struct.pack_into("<QQ", data, 0, nsze, nsze)   # NSZE, NCAP
        data[26] = flbas
        data[30] = nmic
        self.ram.write(self.buf, bytes(data))
        return self.admin(AdminOpcode.NAMESPACE_MANAGEMENT, dptr1=self.buf, cdw10=0).dw0

    def ns_attach(self, nsid: int, cntlids: list[int], detach: bool = False) -> None:
        data = bytearray(PAGE)
        struct.pack_into(f"<H{len(cntlids)}H", data, 0, len(cntlids), *cntlids)
        self.ram.write(self.buf, bytes(data))
        self.admin(AdminOpcode.NAMESPACE_ATTACHMENT, nsid=nsid, dptr1=self.buf, cdw10=1 if detach else 0)
