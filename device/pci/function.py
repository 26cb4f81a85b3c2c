"""The PCIe function a vfio-user client sees: config space, BARs, MSI-X, MSI, INTx.

``PciFunction`` implements ``VfioUserDevice`` (device/vfio_user/interface.py)
and knows nothing about NVMe: BAR0 accesses go to a ``Bar0Handler`` (the NVMe
controller), split into naturally aligned 1/2/4/8-byte accesses so the handler
only ever sees register-sized operations whatever count the client used.

BAR0 is 16 KiB. In ``doorbells=mmap`` mode its doorbell page (0x1000-0x1fff)
is a sparse mmap area backed by a memfd the controller polls, so the guest's
doorbell writes never cause a message. REGION_WRITEs to that page still reach
the handler (it mirrors them into the memfd).

MSI-X: the client (QEMU) emulates the table, the PBA and masking; we keep a
memory-backed table in BAR4 and an all-zero PBA in BAR5 for completeness and
fire vectors through the ``InterruptSink`` the server binds (``trigger``).
``msix_vectors=0`` leaves MSI-X out (no capability, no BAR4/BAR5).

MSI and INTx are the fallbacks: the device behind BAR0 learns the mode from
``irq_mode_changed`` (config writes decide it, see ``ConfigSpace.irq_mode``) and
then sends MSI messages (``trigger_msi``) or drives the INTx level (``set_intx``:
Status.Interrupt Status follows it; the pin itself only while Interrupt Disable
is clear). After the client unmasks INTx (the guest's EOI) the device is asked
to bring its level up to date (``intx_unmasked``).
"""

from __future__ import annotations

from nvshell.device import trace as T

import logging
from typing import TYPE_CHECKING, Protocol

from nvshell.device.pci.config import ConfigSpace, IrqMode
from nvshell.device.vfio_user.interface import (NUM_REGIONS, InterruptSink, IrqIndex, RegionAccessError, RegionFlag,
                                        RegionIndex, RegionInfo)

if TYPE_CHECKING:
    from nvshell.device.vfio_user.dma import GuestMemory

log = logging.getLogger(__name__)

NVME_CLASS_CODE = 0x010802
MSIX_ENTRY_SIZE = 16
RW = RegionFlag.READ | RegionFlag.WRITE


class Bar0Handler(Protocol):
    """What the PCI function forwards to the device model behind BAR0."""

    def read(self, offset: int, size: int) -> int:
        """Register read of ``size`` (1, 2, 4, 8) bytes at a naturally aligned ``offset``."""

    def write(self, offset: int, size: int, value: int) -> None:
        """Register write; never raises for a guest mistake."""

    def reset(self) -> None:
        """Function reset (DEVICE_RESET, FLR)."""

    def bind(self, memory: "GuestMemory", interrupts: InterruptSink) -> None: ...

    def client_connected(self) -> None: ...

    def client_disconnected(self) -> None: ...

    def dma_unmapping(self, addr: int, size: int) -> None: ...

    def irq_mode_changed(self, mode: IrqMode) -> None:
        """The host switched between MSI-X, MSI, INTx and none (config space writes, reset)."""

    def intx_unmasked(self) -> None:
        """The client unmasked INTx (the guest's EOI): call ``set_intx`` with the current level."""


class _NoInterrupts:
    """Sink used until the server binds: interrupts are lost, as with no client."""

    def trigger(self, vector: int) -> bool:
        return False

    def trigger_msi(self, vector: int) -> bool:
        return False

    def set_intx(self, level: bool) -> None:
        pass


def _pow2_at_least(n: int, minimum: int = 0x1000) -> int:
    size = minimum
    while size < n:
        size <<= 1
    return size


def _chunks(offset: int, count: int) -> list[tuple[int, int]]:
    """Split [offset, offset+count) into naturally aligned accesses of 8/4/2/1 bytes."""
    out = []
    pos, end = offset, offset + count
    while pos < end:
        for width in (8, 4, 2, 1):
            if pos % width == 0 and pos + width <= end:
                out.append((pos, width))
                pos += width
                break
    return out


class PciFunction:
    """One PCIe function served over vfio-user (see module docstring)."""

    def __init__(self, bar0: Bar0Handler, *, msix_vectors: int, bar0_size: int, doorbell_area: tuple[int, int],
                 doorbell_fd: int | None = None,
                 vendor_id: int = 0x4E58, device_id: int = 0x0001, subsystem_vendor_id: int = 0x4E58,
                 subsystem_id: int = 0x0000, revision: int = 0, class_code: int = NVME_CLASS_CODE):
        if not 0 <= msix_vectors <= 2048:
            raise ValueError(f"msix_vectors must be 0 (no MSI-X) or 1..2048, not {msix_vectors}")
        self.bar0 = bar0
        self.msix_vectors = msix_vectors
        self.doorbell_fd = doorbell_fd
        self.bar0_size = bar0_size
        self.doorbell_area = doorbell_area
        self.msix_table_size = _pow2_at_least(msix_vectors * MSIX_ENTRY_SIZE) if msix_vectors else 0
        self.msix_pba_size = _pow2_at_least((msix_vectors + 63) // 64 * 8) if msix_vectors else 0
        self.config = ConfigSpace(
            vendor_id=vendor_id, device_id=device_id, subsystem_vendor_id=subsystem_vendor_id,
            subsystem_id=subsystem_id, class_code=class_code, revision=revision,
            bars={0: (bar0_size, 0), 4: (self.msix_table_size, 0), 5: (self.msix_pba_size, 0)},
            msix_vectors=msix_vectors, msix_table_bar=4, msix_pba_bar=5, on_flr=self.reset)
        self.msix_table = bytearray(self.msix_table_size)
        self._reset_msix_table()
        self.memory: "GuestMemory | None" = None
        self.interrupts: InterruptSink = _NoInterrupts()
        self.connected = False
        #: The interrupt mode the config space selects (kept current by config writes).
        self.irq_mode = self.config.irq_mode
        #: The device's INTx request (shown in Status.Interrupt Status), and the pin as driven.
        self.intx_level = False
        self._intx_hold = False
        self._pin = False

    def _reset_msix_table(self) -> None:
        self.msix_table[:] = bytes(self.msix_table_size)
        for vector in range(self.msix_vectors):
            self.msix_table[vector * MSIX_ENTRY_SIZE + 12] = 1  # Vector Control: masked

    # ---------------------------------------------------------- interrupts
    def trigger(self, vector: int) -> bool:
        """Fire MSI-X ``vector`` (masking is the client's business)."""
        if not 0 <= vector < self.msix_vectors:
            return False
        return self.interrupts.trigger(vector)

    def trigger_msi(self, vector: int) -> bool:
        """Send MSI message ``vector`` (below the messages the host allocated)."""
        if self.irq_mode is not IrqMode.MSI or not 0 <= vector < self.config.msi_allocated:
            return False
        return self.interrupts.trigger_msi(vector)

    def set_intx(self, level: bool, *, hold: bool = False) -> None:
        """The device's INTx request: Status.Interrupt Status, and the pin unless disabled or
        ``hold`` (the request stands, but the client is not signalled while held)."""
        self.intx_level = level
        self._intx_hold = hold
        self.config.set_intx_status(level)
        self._drive_pin()

    @property
    def pin_driven(self) -> bool:
        """The INTx pin as driven towards the client (request, not held, INTx mode)."""
        return self._pin

    def _drive_pin(self) -> None:
        pin = self.intx_level and not self._intx_hold and self.irq_mode is IrqMode.INTX
        if pin != self._pin:
            self._pin = pin
            self.interrupts.set_intx(pin)

    def _config_changed(self) -> None:
        mode = self.config.irq_mode
        if mode is self.irq_mode:
            return
        self.irq_mode = mode
        self._drive_pin()
        self.bar0.irq_mode_changed(mode)

    # ------------------------------------------------------ VfioUserDevice
    def regions(self) -> list[RegionInfo]:
        infos = [RegionInfo(index=i) for i in range(NUM_REGIONS)]
        bar0 = RegionInfo(index=RegionIndex.BAR0, size=self.bar0_size, flags=RW)
        if self.doorbell_fd is not None:
            bar0.flags = RW | RegionFlag.MMAP | RegionFlag.CAPS
            bar0.mmap_fd = self.doorbell_fd
            bar0.file_offset = 0
            bar0.mmap_areas = [self.doorbell_area]
        infos[RegionIndex.BAR0] = bar0
        if self.msix_vectors:
            infos[RegionIndex.BAR4] = RegionInfo(index=RegionIndex.BAR4, size=self.msix_table_size, flags=RW)
            infos[RegionIndex.BAR5] = RegionInfo(index=RegionIndex.BAR5, size=self.msix_pba_size, flags=RW)
        infos[RegionIndex.CONFIG] = RegionInfo(index=RegionIndex.CONFIG, size=self.config.size, flags=RW)
        return infos

    def irq_count(self, index: int) -> int:
        if index == IrqIndex.MSIX:
            return self.msix_vectors
        if index == IrqIndex.MSI:
            return self.config.msi_vectors
        if index == IrqIndex.INTX:
            return 1
        return 0

    def irq_unmasked(self, index: int) -> None:
        if index == IrqIndex.INTX:
            self.bar0.intx_unmasked()

    def _check(self, size: int, offset: int, count: int) -> None:
        if offset < 0 or count < 0 or offset + count > size:
            raise RegionAccessError(f"access [{offset:#x}, +{count:#x}) outside a region of {size:#x} bytes")

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index == RegionIndex.CONFIG:
            self._check(self.config.size, offset, count)
            data = self.config.read(offset, count)
            if T.VFU_CONFIG_READ.enabled:
                T.VFU_CONFIG_READ.emit(ctrl=getattr(self.bar0, "name", ""), offset=offset, size=count,
                                       value=int.from_bytes(data[:8], "little"))
            return data
        if index == RegionIndex.BAR0:
            self._check(self.bar0_size, offset, count)
            out = bytearray()
            for pos, width in _chunks(offset, count):
                out += (self.bar0.read(pos, width) & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
            return bytes(out)
        if index == RegionIndex.BAR4:
            self._check(self.msix_table_size, offset, count)
            return bytes(self.msix_table[offset:offset + count])
        if index == RegionIndex.BAR5:
            self._check(self.msix_pba_size, offset, count)
            return bytes(count)  # nothing pends: the client emulates masking
        raise RegionAccessError(f"region {index} does not exist")

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        count = len(data)
        if index == RegionIndex.CONFIG:
            self._check(self.config.size, offset, count)
            if T.VFU_CONFIG_WRITE.enabled:
                T.VFU_CONFIG_WRITE.emit(ctrl=getattr(self.bar0, "name", ""), offset=offset, size=count,
                                        value=int.from_bytes(data[:8], "little"))
            self.config.write(offset, data)
            self._config_changed()
            return
        if index == RegionIndex.BAR0:
            self._check(self.bar0_size, offset, count)
            for pos, width in _chunks(offset, count):
                rel = pos - offset
                self.bar0.write(pos, width, int.from_bytes(data[rel:rel + width], "little"))
            return
        if index == RegionIndex.BAR4:
            self._check(self.msix_table_size, offset, count)
            self.msix_table[offset:offset + count] = data
            return
        if index == RegionIndex.BAR5:
            self._check(self.msix_pba_size, offset, count)
            return  # PBA is read-only
        raise RegionAccessError(f"region {index} does not exist")

    def bind(self, memory: "GuestMemory", interrupts: InterruptSink) -> None:
        self.memory = memory
        self.interrupts = interrupts
        self._pin = False
        self.bar0.bind(memory, interrupts)

    def reset(self) -> None:
        """DEVICE_RESET or FLR: config space, MSI-X table and the device behind BAR0."""
        self.config.reset()
        self._reset_msix_table()
        self.bar0.reset()
        self._config_changed()

    def client_connected(self) -> None:
        self.connected = True
        self.bar0.client_connected()

    def client_disconnected(self) -> None:
        self.connected = False
        self.bar0.client_disconnected()

    def dma_unmapping(self, addr: int, size: int) -> None:
        self.bar0.dma_unmapping(addr, size)
