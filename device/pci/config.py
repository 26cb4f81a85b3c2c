"""PCI configuration space of the emulated function (4 KiB, PCIe).

The client (QEMU's vfio-pci) reads the whole space once, emulates BAR sizing,
the ROM BAR, MSI-X and the capability next-pointers itself, but forwards every
guest config write to us synchronously. So the space has to be plausible on
its own (class code, a walkable capability chain, BARs that size correctly
when someone writes all-ones) and must accept any write, silently dropping
writes to read-only bits. That is done with a per-byte writable mask and a
write-1-to-clear mask, as real hardware (and QEMU's pci.c) does.

Layout (as SPDK's vfio-user NVMe, proven with Linux and QEMU):
PM at 0x40, PCIe v2 endpoint at 0x48, MSI-X at 0x84 (table in BAR4, PBA in BAR5),
then MSI at 0x90. Interrupt Pin 1 (INTA#) for hosts without MSI (``pci=nomsi``).

The MSI capability is the one QEMU's own devices that fall back from MSI-X to
MSI use (e1000e: ``msi_init(dev, off, 1, true, false)``; QEMU's nvme has none):
one message, 64-bit address, no per-vector masking. One message because an x86
host without interrupt remapping allocates only one MSI vector anyway, and the
NVMe side then needs no vector translation (all CQs use vector 0, as QEMU's
nvme requires without MSI-X); no per-vector mask because with one message the
MSI Enable bit and the NVMe INTMS register already mask it, and the client
(QEMU's vfio-pci) emulates MSI masking itself.

The interrupt mode follows this state, as QEMU's devices decide: MSI-X Enable,
else MSI Enable, else INTx unless Command.Interrupt Disable (``irq_mode``).
Status.Interrupt Status shows the function's INTx request (``set_intx_status``).
"""

from __future__ import annotations

import enum
from typing import Callable

from nvshell.device.layout import Layout

CONFIG_SPACE_SIZE = 4096

# Standard header offsets.
VENDOR_ID = 0x00
COMMAND = 0x04
STATUS = 0x06
BAR0 = 0x10
ROM = 0x30
CAP_PTR = 0x34
INTERRUPT_LINE = 0x3C

STATUS_CAP_LIST = 0x10
STATUS_INTERRUPT = 0x08          # Interrupt Status: INTx requested (read-only)
COMMAND_WRITABLE = 0x0547        # I/O, memory, bus master, parity, SERR, INTx disable
COMMAND_INTX_DISABLE = 0x0400
#: Interrupt Pin register value: INTA#.
INTERRUPT_PIN_INTA = 1
STATUS_W1C = 0xF900              # error bits (all zero here, but W1C by definition)

CAP_ID_PM = 0x01
CAP_ID_MSI = 0x05
CAP_ID_PCIE = 0x10
CAP_ID_MSIX = 0x11

PM_OFFSET = 0x40
PCIE_OFFSET = 0x48
MSIX_OFFSET = 0x84
MSI_OFFSET = 0x90
#: MSI messages the function asks for (Multiple Message Capable = log2 of it); see the module docstring.
MSI_VECTORS = 1

#: Type 0 header (64 bytes) up to the capability pointer area.
HEADER = Layout("PciHeader", [
    (0x00, "vendor_id", "H"), (0x02, "device_id", "H"), (0x04, "command", "H"), (0x06, "status", "H"),
    (0x08, "revision", "B"), (0x09, "prog_if", "B"), (0x0A, "subclass", "B"), (0x0B, "class_code", "B"),
    (0x0C, "cache_line_size", "B"), (0x0D, "latency_timer", "B"), (0x0E, "header_type", "B"),
    (0x0F, "bist", "B"),
    (0x10, "bar0", "I"), (0x14, "bar1", "I"), (0x18, "bar2", "I"), (0x1C, "bar3", "I"),
    (0x20, "bar4", "I"), (0x24, "bar5", "I"), (0x28, "cardbus_cis", "I"),
    (0x2C, "subsystem_vendor_id", "H"), (0x2E, "subsystem_id", "H"), (0x30, "rom", "I"),
    (0x34, "cap_ptr", "B"), (0x3C, "interrupt_line", "B"), (0x3D, "interrupt_pin", "B"),
    (0x3E, "min_gnt", "B"), (0x3F, "max_lat", "B"),
], size=0x40)

#: Power Management capability (PCI PM 1.2), 8 bytes.
PM_CAP = Layout("PmCap", [
    ("cap_id", "B"), ("next", "B"), ("pmc", "H"), ("pmcsr", "H"), ("bse", "B"), ("data", "B"),
])

#: PCI Express capability, version 2 (60 bytes).
PCIE_CAP = Layout("PcieCap", [
    (0x00, "cap_id", "B"), (0x01, "next", "B"), (0x02, "pcie_caps", "H"),
    (0x04, "devcap", "I"), (0x08, "devctl", "H"), (0x0A, "devsta", "H"),
    (0x0C, "lnkcap", "I"), (0x10, "lnkctl", "H"), (0x12, "lnksta", "H"),
    (0x14, "sltcap", "I"), (0x18, "sltctl", "H"), (0x1A, "sltsta", "H"),
    (0x1C, "rootctl", "H"), (0x1E, "rootcap", "H"), (0x20, "rootsta", "I"),
    (0x24, "devcap2", "I"), (0x28, "devctl2", "H"), (0x2A, "devsta2", "H"),
    (0x2C, "lnkcap2", "I"), (0x30, "lnkctl2", "H"), (0x32, "lnksta2", "H"),
    (0x34, "sltcap2", "I"), (0x38, "sltctl2", "H"), (0x3A, "sltsta2", "H"),
])
assert PCIE_CAP.size == 0x3C

#: MSI-X capability, 12 bytes.
MSIX_CAP = Layout("MsixCap", [
    ("cap_id", "B"), ("next", "B"), ("msg_ctl", "H"), ("table", "I"), ("pba", "I"),
])

#: MSI capability with a 64-bit address and no per-vector masking, 14 bytes (PCI Local Bus 3.0, 6.8.1).
MSI_CAP = Layout("MsiCap64", [
    ("cap_id", "B"), ("next", "B"), ("msg_ctl", "H"), ("addr_lo", "I"), ("addr_hi", "I"), ("data", "H"),
])
MSI_CTL_ENABLE = 1 << 0
MSI_CTL_MMC_SHIFT = 1
MSI_CTL_MME_SHIFT = 4
MSI_CTL_MME_MASK = 0x7 << MSI_CTL_MME_SHIFT
MSI_CTL_64BIT = 1 << 7

PCIE_DEVCAP_FLR = 1 << 28
PCIE_DEVCTL_FLR = 1 << 15
MSIX_CTL_ENABLE = 1 << 15
MSIX_CTL_MASKALL = 1 << 14


class IrqMode(enum.Enum):
    """How the function signals interrupts, from its config space (``ConfigSpace.irq_mode``)."""

    MSIX = "msix"
    MSI = "msi"
    INTX = "intx"
    #: No MSI/MSI-X and Command.Interrupt Disable set: nothing is signalled.
    NONE = "none"


class ConfigSpace:
    """Config space bytes plus writable / write-1-to-clear masks.

    ``on_flr`` is called when the guest sets Initiate Function Level Reset.
    """

    def __init__(self, *, vendor_id: int, device_id: int, subsystem_vendor_id: int, subsystem_id: int,
                 class_code: int, revision: int, bars: dict[int, tuple[int, int]], msix_vectors: int,
                 msix_table_bar: int, msix_pba_bar: int, on_flr: Callable[[], None] | None = None,
                 msi_vectors: int = MSI_VECTORS):
        """``bars``: index -> (size, flag bits of the BAR register, e.g. 0 for mem32).
        ``msix_vectors`` 0 leaves out the MSI-X capability; ``msi_vectors`` (a power of two
        up to 32) 0 leaves out MSI."""
        if msi_vectors and (msi_vectors > 32 or msi_vectors & (msi_vectors - 1)):
            raise ValueError(f"msi_vectors must be 0 or a power of two up to 32, not {msi_vectors}")
        self.size = CONFIG_SPACE_SIZE
        self._params = dict(vendor_id=vendor_id, device_id=device_id, subsystem_vendor_id=subsystem_vendor_id,
                            subsystem_id=subsystem_id, class_code=class_code, revision=revision)
        self.bars = dict(bars)
        self.msix_vectors = msix_vectors
        self.msi_vectors = msi_vectors
        self.msix_table_bar = msix_table_bar
        self.msix_pba_bar = msix_pba_bar
        self.on_flr = on_flr
        self.data = bytearray(CONFIG_SPACE_SIZE)
        self.wmask = bytearray(CONFIG_SPACE_SIZE)
        self.w1cmask = bytearray(CONFIG_SPACE_SIZE)
        self.reset()

    # ------------------------------------------------------------ building
    def _mask(self, mask: bytearray, offset: int, width: int, value: int) -> None:
        mask[offset:offset + width] = value.to_bytes(width, "little")

    def reset(self) -> None:
        """Back to power-on contents (Function Level Reset / DEVICE_RESET)."""
        p = self._params
        self.data[:] = bytes(CONFIG_SPACE_SIZE)
        self.wmask[:] = bytes(CONFIG_SPACE_SIZE)
        self.w1cmask[:] = bytes(CONFIG_SPACE_SIZE)
        cc = p["class_code"]
        bar_values = {f"bar{i}": flags for i, (size, flags) in self.bars.items() if size}
        HEADER.pack_into(self.data, 0, vendor_id=p["vendor_id"], device_id=p["device_id"], status=STATUS_CAP_LIST,
                         revision=p["revision"], prog_if=cc & 0xFF, subclass=(cc >> 8) & 0xFF,
                         class_code=(cc >> 16) & 0xFF, subsystem_vendor_id=p["subsystem_vendor_id"],
                         subsystem_id=p["subsystem_id"], cap_ptr=PM_OFFSET, interrupt_pin=INTERRUPT_PIN_INTA,
                         **bar_values)
        self._mask(self.wmask, COMMAND, 2, COMMAND_WRITABLE)
        self._mask(self.w1cmask, STATUS, 2, STATUS_W1C)
        self.wmask[0x0C] = 0xFF  # cache line size
        self.wmask[0x0D] = 0xFF  # latency timer
        self.wmask[INTERRUPT_LINE] = 0xFF
        for index, (size, flags) in self.bars.items():
            if size:
                # Address bits above the size are writable; the low bits (type
                # flags, size) are not, so writing all-ones reads back the size mask.
                self._mask(self.wmask, BAR0 + 4 * index, 4, ~(size - 1) & 0xFFFFFFF0 & 0xFFFFFFFF)
        # ROM: wmask 0 -> a sizing write reads back 0 = no ROM.

        # Power management: version 3, D0 only; PowerState and PME_En writable, PME_Status W1C.
        PM_CAP.pack_into(self.data, PM_OFFSET, cap_id=CAP_ID_PM, next=PCIE_OFFSET, pmc=0x0003, pmcsr=0x0008)
        self._mask(self.wmask, PM_OFFSET + 4, 2, 0x0103)
        self._mask(self.w1cmask, PM_OFFSET + 4, 2, 0x8000)

        # PCI Express v2 endpoint, FLR capable, x1 at 2.5 GT/s.
        # The chain after PCIe: MSI-X and MSI, each only if present.
        after = [off for off, present in ((MSIX_OFFSET, self.msix_vectors), (MSI_OFFSET, self.msi_vectors))
                 if present] + [0]
        PCIE_CAP.pack_into(self.data, PCIE_OFFSET, cap_id=CAP_ID_PCIE, next=after[0], pcie_caps=0x0002,
                           devcap=PCIE_DEVCAP_FLR, devctl=0x2810, lnkcap=0x00000011, lnksta=0x0011,
                           devcap2=0x0000001F, lnkcap2=0x00000002)
        off = PCIE_CAP.offsets
        self._mask(self.wmask, PCIE_OFFSET + off["devctl"], 2, 0x7FFF)
        self._mask(self.w1cmask, PCIE_OFFSET + off["devsta"], 2, 0x000F)
        self._mask(self.wmask, PCIE_OFFSET + off["lnkctl"], 2, 0x0FC3)
        self._mask(self.wmask, PCIE_OFFSET + off["devctl2"], 2, 0x043F)
        self._mask(self.wmask, PCIE_OFFSET + off["lnkctl2"], 2, 0x0FFF)

        # MSI-X: Enable and Function Mask writable; the client emulates both anyway.
        if self.msix_vectors:
            MSIX_CAP.pack_into(self.data, MSIX_OFFSET, cap_id=CAP_ID_MSIX, next=MSI_OFFSET if self.msi_vectors else 0,
                               msg_ctl=(self.msix_vectors - 1) & 0x7FF,
                               table=self.msix_table_bar, pba=self.msix_pba_bar)
            self._mask(self.wmask, MSIX_OFFSET + 2, 2, MSIX_CTL_ENABLE | MSIX_CTL_MASKALL)

        # MSI: Enable, Multiple Message Enable (only as far as Capable reaches), address and data.
        if self.msi_vectors:
            mmc = self.msi_vectors.bit_length() - 1
            MSI_CAP.pack_into(self.data, MSI_OFFSET, cap_id=CAP_ID_MSI, next=0,
                              msg_ctl=MSI_CTL_64BIT | (mmc << MSI_CTL_MMC_SHIFT))
            mme_writable = ((1 << mmc.bit_length()) - 1) << MSI_CTL_MME_SHIFT if mmc else 0
            off = MSI_CAP.offsets
            self._mask(self.wmask, MSI_OFFSET + off["msg_ctl"], 2, MSI_CTL_ENABLE | mme_writable)
            self._mask(self.wmask, MSI_OFFSET + off["addr_lo"], 4, 0xFFFFFFFC)
            self._mask(self.wmask, MSI_OFFSET + off["addr_hi"], 4, 0xFFFFFFFF)
            self._mask(self.wmask, MSI_OFFSET + off["data"], 2, 0xFFFF)

    # ------------------------------------------------------------ access
    def read(self, offset: int, count: int) -> bytes:
        if offset < 0 or count < 0 or offset + count > CONFIG_SPACE_SIZE:
            raise IndexError(f"config read [{offset:#x}, +{count}) outside the config space")
        return bytes(self.data[offset:offset + count])

    def write(self, offset: int, data: bytes) -> None:
        """Apply a guest write: writable bits change, W1C bits clear, the rest is ignored."""
        if offset < 0 or offset + len(data) > CONFIG_SPACE_SIZE:
            raise IndexError(f"config write [{offset:#x}, +{len(data)}) outside the config space")
        flr = False
        for i, value in enumerate(data):
            pos = offset + i
            wm = self.wmask[pos]
            old = self.data[pos]
            new = (old & ~wm) | (value & wm)
            new &= ~(value & self.w1cmask[pos]) & 0xFF
            self.data[pos] = new
            if pos == PCIE_OFFSET + PCIE_CAP.offsets["devctl"] + 1 and value & 0x80:
                flr = True
        if flr:
            # Initiate FLR is a trigger, it always reads back 0.
            self.data[PCIE_OFFSET + PCIE_CAP.offsets["devctl"] + 1] &= 0x7F
            if self.on_flr is not None:
                self.on_flr()

    def u8(self, offset: int) -> int:
        return self.data[offset]

    def u16(self, offset: int) -> int:
        return int.from_bytes(self.data[offset:offset + 2], "little")

    def u32(self, offset: int) -> int:
        return int.from_bytes(self.data[offset:offset + 4], "little")

    @property
    def command(self) -> int:
        return self.u16(COMMAND)

    @property
    def msix_enabled(self) -> bool:
        return bool(self.msix_vectors and self.u16(MSIX_OFFSET + 2) & MSIX_CTL_ENABLE)

    @property
    def msi_enabled(self) -> bool:
        return bool(self.msi_vectors and self.u16(MSI_OFFSET + 2) & MSI_CTL_ENABLE)

    @property
    def msi_allocated(self) -> int:
        """Messages the host allocated (Multiple Message Enable, never above Capable)."""
        mme = (self.u16(MSI_OFFSET + 2) & MSI_CTL_MME_MASK) >> MSI_CTL_MME_SHIFT
        return min(1 << mme, self.msi_vectors) if self.msi_vectors else 0

    @property
    def irq_mode(self) -> IrqMode:
        """MSI-X if enabled, else MSI if enabled, else INTx unless Interrupt Disable is set."""
        if self.msix_enabled:
            return IrqMode.MSIX
        if self.msi_enabled:
            return IrqMode.MSI
        if self.command & COMMAND_INTX_DISABLE:
            return IrqMode.NONE
        return IrqMode.INTX

    def set_intx_status(self, asserted: bool) -> None:
        """Status.Interrupt Status follows the function's INTx request."""
        if asserted:
            self.data[STATUS] |= STATUS_INTERRUPT
        else:
            self.data[STATUS] &= ~STATUS_INTERRUPT & 0xFF

    def capabilities(self) -> list[tuple[int, int]]:
        """Walk the capability chain: [(offset, cap id)] (used by tests and `info pci`)."""
        caps: list[tuple[int, int]] = []
        ptr = self.data[CAP_PTR] & 0xFC
        seen: set[int] = set()
        while ptr and ptr not in seen and ptr < 0x100:
            seen.add(ptr)
            caps.append((ptr, self.data[ptr]))
            ptr = self.data[ptr + 1] & 0xFC
        return caps
