"""The small interface through which the vfio-user transport knows a device.

The transport (``server.py``) imports nothing from the PCI function or the NVMe
model: it serves any object implementing ``VfioUserDevice``. The device, in
turn, sees the client only through the two objects the server hands it once in
``bind()``: a ``GuestMemory`` (DMA: the only way to touch guest memory) and an
``InterruptSink`` (MSI-X vectors backed by the client's eventfds).

All methods are called on the controller's IOThread, one at a time, in the order
the client's messages arrive.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nvshell.device.vfio_user.dma import GuestMemory


class RegionIndex(enum.IntEnum):
    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7
    VGA = 8


NUM_REGIONS = 9


class IrqIndex(enum.IntEnum):
    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


NUM_IRQS = 5


class RegionFlag(enum.IntFlag):
    READ = 1
    WRITE = 2
    MMAP = 4
    CAPS = 8


@dataclass
class RegionInfo:
    """What DEVICE_GET_REGION_INFO reports for one region (size 0 = absent)."""

    index: int
    size: int = 0
    flags: RegionFlag = RegionFlag(0)
    #: File descriptor the client may mmap (sparse areas only); None if not mappable.
    mmap_fd: int | None = None
    #: Offset of the region within ``mmap_fd`` (reported as the region's offset).
    file_offset: int = 0
    #: Sparse mmap areas ``(offset within region, size)``; exactly one when mappable.
    mmap_areas: list[tuple[int, int]] = field(default_factory=list)


class RegionAccessError(Exception):
    """A region access the device refuses (out of bounds, bad width): error reply."""


class InterruptSink(Protocol):
    """The interrupts as the client configured them with SET_IRQS: MSI-X vectors,
    MSI messages and the INTx line."""

    def trigger(self, vector: int) -> bool:
        """Signal MSI-X ``vector``; False if the client assigned no eventfd to it (the
        interrupt is lost for the client, as a masked MSI-X vector would pend)."""

    def trigger_msi(self, vector: int) -> bool:
        """Send MSI message ``vector``; False if no eventfd is assigned to it."""

    def set_intx(self, level: bool) -> None:
        """Drive the INTx line. It is level-triggered: the client hears of a rising
        level once (the line masks itself, as vfio's INTx is auto-masked) and unmasks
        it after the guest's EOI; a level still high then is signalled again."""


class VfioUserDevice(Protocol):
    """A PCI function the vfio-user server can serve."""

    def regions(self) -> list[RegionInfo]:
        """All ``NUM_REGIONS`` regions, indexed by ``RegionIndex``."""

    def irq_count(self, index: int) -> int:
        """Number of vectors for an IRQ index (0 for unsupported indexes)."""

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        """Read ``count`` bytes; raise ``RegionAccessError`` for a bad access."""

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        """Write; raise ``RegionAccessError`` for a bad access."""

    def bind(self, memory: "GuestMemory", interrupts: InterruptSink) -> None:
        """Called once when the server is created; the objects live as long as it."""

    def reset(self) -> None:
        """DEVICE_RESET: back to the power-on state (queues gone, data kept)."""

    def client_connected(self) -> None:
        """A client finished VERSION negotiation."""

    def client_disconnected(self) -> None:
        """The client went away. DMA maps and eventfds are already dropped; keep
        device state (namespaces, data), stop touching guest memory."""

    def dma_unmapping(self, addr: int, size: int) -> None:
        """Called before a range is unmapped: drop every reference into it."""

    def irq_unmasked(self, index: int) -> None:
        """The client unmasked IRQ ``index`` (INTx after the guest's EOI): bring the
        level up to date (``InterruptSink.set_intx``) before the server re-signals a
        level still high. Only called for indexes whose ``irq_count`` is nonzero."""
