"""A minimal NVMe host over the vfio-user test client: admin queue only, polled completions.

Why a separate host and not the controller tests' ``Host``: this one drives a running nvshell
*process* through its vfio-user socket exactly as QEMU's vfio-user-pci would (DMA_MAP of a
memfd, BAR0 over REGION_READ/WRITE, doorbells through the mmap area when the device offers
one), so what it reads is what a guest sees.  Completions are polled on the CQ's phase tag,
so no interrupt plumbing is needed; an AER stays outstanding until ``reap_aen`` collects it.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvshell.device.nvme.spec import CQE, SQE, AdminOpcode
from nvshell.device.vfio_user.client import VfioUserClient
from nvshell.device.vfio_user.interface import IrqIndex, RegionIndex

RAM = 0x10000000
RAM_SIZE = 1 << 20
PAGE = 4096
QSIZE = 32
#: CC: EN, CSS 110b (all I/O command sets), MPS 4 KiB, IOSQES 6, IOCQES 4.
CC_ENABLE = 1 | (6 << 4) | (6 << 16) | (4 << 20)
FID_ASYNC_EVENT_CONFIG = 0x0B
AEC_NS_ATTRIBUTE = 1 << 8
REG_CAP, REG_CC, REG_CSTS, REG_AQA, REG_ASQ, REG_ACQ = 0x00, 0x14, 0x1C, 0x24, 0x28, 0x30


class NvmeCommandError(RuntimeError):
    def __init__(self, opcode: int, status: int):
        super().__init__(f"admin opcode {opcode:#x} failed: status {status:#x}")
        self.status = status


@dataclass
class Completion:
    dw0: int
    status: int  # (SCT << 8) | SC, DNR/M/phase stripped


class AdminHost:
    """Enable the controller behind ``socket`` and run admin commands on it."""

    def __init__(self, socket: str | Path, timeout: float = 5.0):
        self.socket = str(socket)
        self.timeout = timeout
        self.client = VfioUserClient(timeout=timeout).connect(self.socket)
        try:
            self.client.negotiate()
            self.ram = self.client.map_memory(RAM, RAM_SIZE)
            bar0 = self.client.region_info(RegionIndex.BAR0)
            self.doorbell_mmap = bool(bar0.areas)
            self.db = self.client.mmap_region_area(RegionIndex.BAR0) if self.doorbell_mmap else None
            self.msix_vectors = int(self.client.irq_info(IrqIndex.MSIX).count)
            self._next = RAM
            self.asq, self.acq = self.alloc(QSIZE * 64), self.alloc(QSIZE * 16)
            self.buf = self.alloc(PAGE)
            self.sq_tail = self.cq_head = 0
            self.phase = 1
            self.cid = 0
            self._aens: list[int] = []
            self._outstanding_aer: set[int] = set()
            self.enable()
            # Asynchronous Event Configuration: namespace attribute notices, as Linux enables them.
            self.set_features(FID_ASYNC_EVENT_CONFIG, AEC_NS_ATTRIBUTE)
        except BaseException:
            self.client.close()
            raise

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "AdminHost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ registers
    def reg32(self, offset: int) -> int:
        return self.client.read32(RegionIndex.BAR0, offset)

    def reg64(self, offset: int) -> int:
        return int.from_bytes(self.client.region_read(RegionIndex.BAR0, offset, 8), "little")

    def alloc(self, nbytes: int) -> int:
        addr = self._next
        self._next += (nbytes + PAGE - 1) & ~(PAGE - 1)
        return addr

    def enable(self) -> None:
        self.client.write32(RegionIndex.BAR0, REG_AQA, ((QSIZE - 1) << 16) | (QSIZE - 1))
        self.client.region_write(RegionIndex.BAR0, REG_ASQ, self.asq.to_bytes(8, "little"))
        self.client.region_write(RegionIndex.BAR0, REG_ACQ, self.acq.to_bytes(8, "little"))
        self.client.write32(RegionIndex.BAR0, REG_CC, CC_ENABLE)
        deadline = time.monotonic() + self.timeout
        while not self.reg32(REG_CSTS) & 1:
            if time.monotonic() > deadline:
                raise TimeoutError("CSTS.RDY did not come up")
            time.sleep(0.005)

    def _ring(self, index: int, value: int) -> None:
        if self.db is not None:
            self.db[4 * index:4 * index + 4] = value.to_bytes(4, "little")
        else:
            self.client.write32(RegionIndex.BAR0, 0x1000 + 4 * index, value)

    # ------------------------------------------------------------------ commands
    def submit(self, opcode: int, **fields: int) -> int:
        self.cid = (self.cid + 1) & 0xFFFF
        self.ram.write(self.asq + 64 * self.sq_tail, SQE.pack(opcode=opcode, cid=self.cid, **fields))
        self.sq_tail = (self.sq_tail + 1) % QSIZE
        self._ring(0, self.sq_tail)
        return self.cid

    def _reap(self) -> Any:
        entry = CQE.unpack(self.ram.read(self.acq + 16 * self.cq_head, 16))
        if (entry.status & 1) != self.phase:
            return None
        self.cq_head = (self.cq_head + 1) % QSIZE
        if self.cq_head == 0:
            self.phase ^= 1
        self._ring(1, self.cq_head)
        return entry

    def _wait(self, cid: int) -> Completion:
        deadline = time.monotonic() + self.timeout
        while True:
            entry = self._reap()
            if entry is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no completion for cid {cid}")
                time.sleep(0.001)
                continue
            if self._take_aen(entry):
                continue
            if entry.cid == cid:
                return Completion(entry.dw0, (entry.status >> 1) & 0x7FF)

    def run(self, opcode: int, *, check: bool = True, **fields: int) -> Completion:
        done = self._wait(self.submit(opcode, **fields))
        if check and done.status:
            raise NvmeCommandError(opcode, done.status)
        return done

    def identify(self, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> bytes:
        self.ram.write(self.buf, bytes(PAGE))
        self.run(AdminOpcode.IDENTIFY, nsid=nsid, dptr1=self.buf, cdw10=cns | (cntid << 16), cdw11=csi << 24)
        return self.ram.read(self.buf, PAGE)

    def set_features(self, fid: int, cdw11: int) -> int:
        return self.run(AdminOpcode.SET_FEATURES, cdw10=fid, cdw11=cdw11).dw0

    def get_features(self, fid: int, cdw11: int = 0) -> int:
        return self.run(AdminOpcode.GET_FEATURES, cdw10=fid, cdw11=cdw11).dw0

    def get_log(self, lid: int, nbytes: int, nsid: int = 0xFFFFFFFF) -> bytes:
        numd = nbytes // 4 - 1
        self.run(AdminOpcode.GET_LOG_PAGE, nsid=nsid, dptr1=self.buf, cdw10=lid | ((numd & 0xFFFF) << 16),
                 cdw11=numd >> 16)
        return self.ram.read(self.buf, nbytes)

    def format_nvm(self, nsid: int, lbaf: int, *, mset: int = 0, pi: int = 0, pil: int = 0) -> None:
        cdw10 = (lbaf & 0xF) | (mset << 4) | (pi << 5) | (pil << 8) | ((lbaf >> 4) << 12)
        self.run(AdminOpcode.FORMAT_NVM, nsid=nsid, cdw10=cdw10)

    def ns_create(self, nsze: int, flbas: int = 0, nmic: int = 1) -> int:
        data = bytearray(PAGE)
        struct.pack_into("<QQ", data, 0, nsze, nsze)   # NSZE, NCAP
        data[26] = flbas
        data[30] = nmic
        self.ram.write(self.buf, bytes(data))
        return self.run(AdminOpcode.NAMESPACE_MANAGEMENT, dptr1=self.buf, cdw10=0).dw0

    def ns_attach(self, nsid: int, cntlids: list[int], detach: bool = False) -> None:
        data = bytearray(PAGE)
        struct.pack_into(f"<H{len(cntlids)}H", data, 0, len(cntlids), *cntlids)
        self.ram.write(self.buf, bytes(data))
        self.run(AdminOpcode.NAMESPACE_ATTACHMENT, nsid=nsid, dptr1=self.buf, cdw10=1 if detach else 0)

    def _take_aen(self, entry: Any) -> bool:
        if entry.cid not in self._outstanding_aer:
            return False
        self._outstanding_aer.discard(entry.cid)
        status = (entry.status >> 1) & 0x7FF
        if status:
            raise NvmeCommandError(AdminOpcode.ASYNC_EVENT_REQUEST, status)
        self._aens.append(entry.dw0)
        return True

    def request_aen(self) -> None:
        """Have one Asynchronous Event Request outstanding (its completion is collected by ``aens``)."""
        if not self._outstanding_aer:
            self._outstanding_aer.add(self.submit(AdminOpcode.ASYNC_EVENT_REQUEST))

    def aens(self, timeout: float = 2.0) -> list[int]:
        """AEN completions (dword 0) received so far, waiting up to ``timeout`` for the first."""
        deadline = time.monotonic() + timeout
        while not self._aens and self._outstanding_aer and time.monotonic() < deadline:
            entry = self._reap()
            if entry is None:
                time.sleep(0.002)
            else:
                self._take_aen(entry)
        out, self._aens = self._aens, []
        return out
