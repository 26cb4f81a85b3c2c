"""The two things a device model needs from whatever transport hosts it: guest memory and interrupts.

The NVMe controller, its namespaces and its subsystem are written against these
small interfaces only, so a transport other than vfio-user (NVMe over TCP is on
the roadmap: there "guest memory" is the capsule's data) can host them unchanged.
vfio-user implements them in ``device/vfio_user/`` (``GuestMemory`` over the
client's DMA regions, eventfd-backed MSI-X), importing this module, never the
other way round.
"""

from __future__ import annotations

from typing import Protocol


class MemoryFault(Exception):
    """A host-memory range that is not (entirely) accessible: the NVMe layer answers
    Data Transfer Error. Transports raise subclasses (vfio-user: ``DmaError``)."""


class HostMemory(Protocol):
    """Guest-physical memory as the device sees it (bounds-checked, zero-copy views).

    A ``view`` must not outlive the call that took it unless its holder drops it
    in ``dma_unmapping`` (the transport closes the mapping after that hook).
    """

    def view(self, addr: int, length: int, write: bool = False) -> memoryview: ...

    def read(self, addr: int, length: int) -> bytes: ...

    def readinto(self, addr: int, buffer: memoryview | bytearray) -> None: ...

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None: ...

    def __contains__(self, addr: int) -> bool: ...


class InterruptSink(Protocol):
    """Fires interrupt vectors (MSI-X on PCIe); False when the vector is not wired up."""

    def trigger(self, vector: int) -> bool: ...
