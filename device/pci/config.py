"""PCI configuration space of the emulated function (4 KiB, PCIe).

The client (QEMU's vfio-pci) reads the whole space once, emulates BAR sizing,
the ROM BAR, MSI-X and the capability next-pointers itself, but forwards every
guest config write to us synchronously. So the space has to be plausible on
its own (class code, a walkable capability chain, BARs that size correctly
when someone writes all-ones) and must accept any write, silently dropping
writes to read-only bits. That is done with a per-byte writable mask and a
write-1-to-clear mask, as real hardware (and QEMU's pci.c) does.

Layout (as SPDK's vfio-user NVMe, proven with Linux and QEMU):
PM at 0x40, PCIe v2 endpoint at 0x48, MSI-X at 0x84 (table in BAR4, PBA in BAR5).
"""

from __future__ import annotations

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
COMMAND_WRITABLE = 0x0547        # I/O, memory, bus master, parity, SERR, INTx disable
STATUS_W1C = 0xF900              # error bits (all zero here, but W1C by definition)

CAP_ID_PM = 0x01
CAP_ID_PCIE = 0x10
CAP_ID_MSIX = 0x11

PM_OFFSET = 0x40
PCIE_OFFSET = 0x48
MSIX_OFFSET = 0x84

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

PCIE_DEVCAP_FLR = 1 << 28
PCIE_DEVCTL_FLR = 1 << 15
MSIX_CTL_ENABLE = 1 << 15
MSIX_CTL_MASKALL = 1 << 14


class ConfigSpace:
    """Config space bytes plus writable / write-1-to-clear masks.

    ``on_flr`` is called when the guest sets Initiate Function Level Reset.
    """

    def __init__(self, *, vendor_id: int, device_id: int, subsystem_vendor_id: int, subsystem_id: int,
                 class_code: int, revision: int, bars: dict[int, tuple[int, int]], msix_vectors: int,
                 msix_table_bar: int, msix_pba_bar: int, on_flr: Callable[[], None] | None = None):
        """``bars``: index -> (size, flag bits of the BAR register, e.g. 0 for mem32)."""
        self.size = CONFIG_SPACE_SIZE
        self._params = dict(vendor_id=vendor_id, device_id=device_id, subsystem_vendor_id=subsystem_vendor_id,
                            subsystem_id=subsystem_id, class_code=class_code, revision=revision)
        self.bars = dict(bars)
        self.msix_vectors = msix_vectors
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
                         subsystem_id=p["subsystem_id"], cap_ptr=PM_OFFSET, interrupt_pin=0, **bar_values)
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
        PCIE_CAP.pack_into(self.data, PCIE_OFFSET, cap_id=CAP_ID_PCIE, next=MSIX_OFFSET, pcie_caps=0x0002,
                           devcap=PCIE_DEVCAP_FLR, devctl=0x2810, lnkcap=0x00000011, lnksta=0x0011,
                           devcap2=0x0000001F, lnkcap2=0x00000002)
        off = PCIE_CAP.offsets
        self._mask(self.wmask, PCIE_OFFSET + off["devctl"], 2, 0x7FFF)
        self._mask(self.w1cmask, PCIE_OFFSET + off["devsta"], 2, 0x000F)
        self._mask(self.wmask, PCIE_OFFSET + off["lnkctl"], 2, 0x0FC3)
        self._mask(self.wmask, PCIE_OFFSET + off["devctl2"], 2, 0x043F)
        self._mask(self.wmask, PCIE_OFFSET + off["lnkctl2"], 2, 0x0FFF)

        # MSI-X: Enable and Function Mask writable; the client emulates both anyway.
        MSIX_CAP.pack_into(self.data, MSIX_OFFSET, cap_id=CAP_ID_MSIX, next=0,
                           msg_ctl=(self.msix_vectors - 1) & 0x7FF,
                           table=self.msix_table_bar, pba=self.msix_pba_bar)
        self._mask(self.wmask, MSIX_OFFSET + 2, 2, MSIX_CTL_ENABLE | MSIX_CTL_MASKALL)

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
        return bool(self.u16(MSIX_OFFSET + 2) & MSIX_CTL_ENABLE)

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
