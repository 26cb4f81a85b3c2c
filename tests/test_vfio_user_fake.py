"""A tiny ``VfioUserDevice`` for the transport tests (no PCI, no NVMe); no tests here.

BAR0 is 16 KiB: registers 0x0-0xfff are trapped (a byte array, plus a few
"command" registers below), 0x1000-0x1fff is a sparse mmap area backed by a
memfd (the doorbell page of the real device). The config region is 4 KiB of
plain bytes. Four MSI-X vectors.

Command registers (8-byte writes):
* 0x20: fire MSI-X vector ``value``; the result of ``trigger`` is kept in ``fired``.
* 0x30: DMA read 8 bytes from guest address ``value`` into register 0x40.
* 0x38: DMA write register 0x48 to guest address ``value``.
* 0xff0: reading or writing raises RuntimeError (a device bug the server must survive).
* 0xfe0: reading raises RegionAccessError.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from nvshell.device.nvme.spec import BAR0_SIZE
from nvshell.device.vfio_user.dma import DmaError, GuestMemory
from nvshell.device.vfio_user.interface import (
    NUM_REGIONS,
    InterruptSink,
    IrqIndex,
    RegionAccessError,
    RegionFlag,
    RegionIndex,
    RegionInfo,
)

DOORBELL_OFFSET = 0x1000
DOORBELL_SIZE = 0x1000
MSIX_VECTORS = 4
#: BAR4 is a plain 1 MiB byte range (large reads fill the socket buffer).
BAR4_SIZE = 1 << 20


class FakeDevice:
    def __init__(self) -> None:
        self.regs = bytearray(0x1000)
        self.config = bytearray(4096)
        self.config[0:4] = (0x00014E58).to_bytes(4, "little")
        self.doorbell_fd = os.memfd_create("fake-doorbells", os.MFD_CLOEXEC)
        # The file mirrors BAR0's layout up to the doorbell page (file offset = region offset).
        os.ftruncate(self.doorbell_fd, DOORBELL_OFFSET + DOORBELL_SIZE)
        self.doorbells = mmap.mmap(self.doorbell_fd, DOORBELL_SIZE, offset=DOORBELL_OFFSET)
        self.memory: GuestMemory | None = None
        self.interrupts: InterruptSink | None = None
        self.calls: list[tuple[Any, ...]] = []
        self.fired: list[tuple[int, bool]] = []
        self.dma_errors: list[str] = []

    # ----------------------------------------------------- VfioUserDevice
    def regions(self) -> list[RegionInfo]:
        regions = [RegionInfo(i) for i in range(NUM_REGIONS)]
        rw = RegionFlag.READ | RegionFlag.WRITE
        regions[RegionIndex.BAR0] = RegionInfo(RegionIndex.BAR0, BAR0_SIZE, rw, self.doorbell_fd, 0,
                                               [(DOORBELL_OFFSET, DOORBELL_SIZE)])
        regions[RegionIndex.CONFIG] = RegionInfo(RegionIndex.CONFIG, 4096, rw)
        regions[RegionIndex.BAR4] = RegionInfo(RegionIndex.BAR4, BAR4_SIZE, rw)
        return regions

    def irq_count(self, index: int) -> int:
        return MSIX_VECTORS if index == IrqIndex.MSIX else 0

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        self.calls.append(("read", index, offset, count))
        if index == RegionIndex.CONFIG:
            return bytes(self.config[offset:offset + count])
        if index == RegionIndex.BAR4:
            return bytes((offset + i) & 0xFF for i in range(count))
        if index != RegionIndex.BAR0:
            raise RegionAccessError(f"region {index}")
        if offset == 0xFF0:
            raise RuntimeError("simulated device bug")
        if offset == 0xFE0:
            raise RegionAccessError("simulated refused access")
        if DOORBELL_OFFSET <= offset < DOORBELL_OFFSET + DOORBELL_SIZE:
            o = offset - DOORBELL_OFFSET
            return bytes(self.doorbells[o:o + count])
        if offset + count > len(self.regs):
            return bytes(count)
        return bytes(self.regs[offset:offset + count])

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        self.calls.append(("write", index, offset, bytes(data)))
        if index == RegionIndex.CONFIG:
            self.config[offset:offset + len(data)] = data
            return
        if index != RegionIndex.BAR0:
            raise RegionAccessError(f"region {index}")
        if offset == 0xFF0:
            raise RuntimeError("simulated device bug")
        if offset + len(data) > len(self.regs):
            raise RegionAccessError("write beyond the registers")
        self.regs[offset:offset + len(data)] = data
        value = int.from_bytes(data, "little")
        assert self.memory is not None and self.interrupts is not None
        try:
            if offset == 0x20:
                self.fired.append((value, self.interrupts.trigger(value)))
            elif offset == 0x30:
                self.regs[0x40:0x48] = self.memory.read(value, 8)
            elif offset == 0x38:
                self.memory.write(value, bytes(self.regs[0x48:0x50]))
        except DmaError as exc:
            self.dma_errors.append(str(exc))

    def bind(self, memory: GuestMemory, interrupts: InterruptSink) -> None:
        self.calls.append(("bind",))
        self.memory = memory
        self.interrupts = interrupts

    def reset(self) -> None:
        self.calls.append(("reset",))

    def client_connected(self) -> None:
        self.calls.append(("connected",))

    def client_disconnected(self) -> None:
        self.calls.append(("disconnected",))

    def dma_unmapping(self, addr: int, size: int) -> None:
        self.calls.append(("dma_unmapping", addr, size))

    # -------------------------------------------------------------- tests
    def count(self, name: str) -> int:
        return sum(1 for c in self.calls if c[0] == name)

    def close(self) -> None:
        self.doorbells.close()
        os.close(self.doorbell_fd)
