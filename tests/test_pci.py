"""PCI function: config space contents, capability chain, BAR sizing, masks, regions.

The function is the real one of a real NVMe controller: what it forwards through BAR0
is checked in the controller's registers."""

from __future__ import annotations

import os

import pytest

from nvshell.device.pci.config import (COMMAND_INTX_DISABLE, MSI_OFFSET, MSIX_OFFSET, PCIE_OFFSET, PM_OFFSET,
                                       STATUS_INTERRUPT, IrqMode)
from nvshell.device.nvme.spec import BAR0_SIZE, DOORBELL_PAGE_OFFSET, DOORBELL_PAGE_SIZE
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import Reg
from nvshell.device.pci.function import PciFunction
from nvshell.device.vfio_user.irq import ClientInterrupts, IntxLine, MsixEventfds
from nvshell.device.vfio_user.interface import IrqIndex, RegionAccessError, RegionFlag, RegionIndex

CFG = RegionIndex.CONFIG


def controller(**config) -> Controller:
    """A real controller; its PCI function (``.pci``) forwards BAR0 to it."""
    return Controller(ControllerConfig(**config))


@pytest.fixture
def ctrl():
    c = controller(doorbells="trap")
    yield c
    c.shutdown()


@pytest.fixture
def fn(ctrl):
    return ctrl.pci


def rd(fn, off, n=4):
    return int.from_bytes(fn.region_read(CFG, off, n), "little")


def wr(fn, off, value, n=4):
    fn.region_write(CFG, off, value.to_bytes(n, "little"))


def test_header(fn):
    assert rd(fn, 0, 2) == 0x4E58 and rd(fn, 2, 2) == 0x0001
    assert rd(fn, 0x09, 1) == 0x02 and rd(fn, 0x0A, 1) == 0x08 and rd(fn, 0x0B, 1) == 0x01
    assert rd(fn, 0x06, 2) & 0x10
    assert rd(fn, 0x34, 1) == 0x40
    assert rd(fn, 0x3D, 1) == 1                  # INTA#
    assert rd(fn, 0x0E, 1) == 0                  # type 0 header
    assert rd(fn, 0x2C, 2) == 0x4E58
    assert len(fn.region_read(CFG, 0, 4096)) == 4096


def test_capability_chain(fn):
    caps = []
    ptr = rd(fn, 0x34, 1)
    while ptr:
        caps.append((ptr, rd(fn, ptr, 1)))
        ptr = rd(fn, ptr + 1, 1)
    assert caps == [(0x40, 0x01), (0x48, 0x10), (0x84, 0x11), (0x90, 0x05)]
    assert fn.config.capabilities() == caps
    assert rd(fn, PCIE_OFFSET + 2, 2) & 0xF == 2            # version 2
    assert (rd(fn, PCIE_OFFSET + 2, 2) >> 4) & 0xF == 0     # endpoint
    assert rd(fn, PCIE_OFFSET + 4) & (1 << 28)              # FLR
    assert rd(fn, MSIX_OFFSET + 2, 2) & 0x7FF == 64          # table size N-1
    assert rd(fn, MSIX_OFFSET + 4) == 4                      # BIR 4, offset 0
    assert rd(fn, MSIX_OFFSET + 8) == 5                      # BIR 5, offset 0
    assert rd(fn, PM_OFFSET + 2, 2) & 7 == 3
    # MSI: 64-bit address, one message (MMC 0), no per-vector masking, disabled.
    assert rd(fn, MSI_OFFSET + 2, 2) == 0x0080


def test_msi_capability_registers(fn):
    wr(fn, MSI_OFFSET + 2, 0xFFFF, 2)
    assert rd(fn, MSI_OFFSET + 2, 2) == 0x0081              # only Enable is writable (MME stays 0)
    assert fn.config.msi_enabled and fn.config.msi_allocated == 1
    wr(fn, MSI_OFFSET + 4, 0xFFFFFFFF)
    wr(fn, MSI_OFFSET + 8, 0xFFFFFFFF)
    wr(fn, MSI_OFFSET + 12, 0xFFFF, 2)
    assert (rd(fn, MSI_OFFSET + 4), rd(fn, MSI_OFFSET + 8), rd(fn, MSI_OFFSET + 12, 2)) == (0xFFFFFFFC, 0xFFFFFFFF, 0xFFFF)


def test_irq_mode_follows_config_space(ctrl, fn):
    assert fn.irq_mode is IrqMode.INTX                       # power-on: no MSI, no MSI-X
    wr(fn, 0x04, COMMAND_INTX_DISABLE, 2)
    assert fn.irq_mode is IrqMode.NONE
    wr(fn, MSI_OFFSET + 2, 1, 2)
    assert fn.irq_mode is IrqMode.MSI
    wr(fn, MSIX_OFFSET + 2, 0x8000 | 64, 2)
    assert fn.irq_mode is IrqMode.MSIX                       # MSI-X wins over MSI
    wr(fn, MSIX_OFFSET + 2, 64, 2)
    wr(fn, MSI_OFFSET + 2, 0, 2)
    wr(fn, 0x04, 0, 2)
    assert fn.irq_mode is IrqMode.INTX
    # The controller behind BAR0 followed every change.
    assert not ctrl.interrupts.msix and ctrl.interrupts.legacy.mode is IrqMode.INTX
    wr(fn, MSIX_OFFSET + 2, 0x8000 | 64, 2)
    assert ctrl.interrupts.msix and ctrl.engine.on_cq_head is None    # MSI-X: no per-doorbell hook


def test_intx_level_and_status_bit(fn):
    """(Interrupt Disable with a pending request: tests/test_intx.py, through the controller.)

    The sink is the transport's own (``ClientInterrupts`` with an INTx eventfd); its line's
    ``set_level`` is watched (recorded, then run) to see which changes reach it."""
    line = IntxLine()
    levels: list[bool] = []
    real_set_level = line.set_level

    def set_level(level: bool) -> None:
        levels.append(level)
        real_set_level(level)
    line.set_level = set_level  # type: ignore[method-assign]
    trigger = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        line.assign(os.dup(trigger))
        fn.bind(None, ClientInterrupts(MsixEventfds(), MsixEventfds(), line))
        fn.set_intx(True)
        assert rd(fn, 0x06, 2) & STATUS_INTERRUPT and levels == [True]
        assert os.eventfd_read(trigger) == 1                     # the client's INTx eventfd fired
        fn.set_intx(True)
        assert levels == [True]                                  # the sink hears of changes only
        wr(fn, 0x06, 0xFFFF, 2)                                 # read-only: a W1C write does not clear it
        assert rd(fn, 0x06, 2) & STATUS_INTERRUPT
        fn.set_intx(False)
        assert not rd(fn, 0x06, 2) & STATUS_INTERRUPT and levels[-1] is False and not line.level
    finally:
        line.close_all()
        os.close(trigger)


def test_no_msix_leaves_out_capability_and_bars(ctrl):
    fn = PciFunction(ctrl, bar0_size=BAR0_SIZE, doorbell_area=(DOORBELL_PAGE_OFFSET, DOORBELL_PAGE_SIZE),
                     msix_vectors=0)
    assert fn.config.capabilities() == [(0x40, 0x01), (0x48, 0x10), (0x90, 0x05)]
    regs = fn.regions()
    assert regs[4].size == 0 and regs[5].size == 0
    assert (fn.irq_count(IrqIndex.MSIX), fn.irq_count(IrqIndex.MSI), fn.irq_count(IrqIndex.INTX)) == (0, 1, 1)
    wr(fn, 0x20, 0xFFFFFFFF)
    assert rd(fn, 0x20) == 0                                 # BAR4 absent


def test_bar_sizing_and_rom(fn):
    for bar, size in ((0, 0x4000), (4, fn.msix_table_size), (5, fn.msix_pba_size)):
        wr(fn, 0x10 + 4 * bar, 0xFFFFFFFF)
        assert rd(fn, 0x10 + 4 * bar) == (~(size - 1)) & 0xFFFFFFFF
        wr(fn, 0x10 + 4 * bar, 0xFEB00000)
        assert rd(fn, 0x10 + 4 * bar) == 0xFEB00000
    assert fn.msix_table_size >= 65 * 16
    for bar in (1, 2, 3):
        wr(fn, 0x10 + 4 * bar, 0xFFFFFFFF)
        assert rd(fn, 0x10 + 4 * bar) == 0
    wr(fn, 0x30, 0xFFFFFFFF)
    assert rd(fn, 0x30) == 0


def test_read_only_bits_ignored(fn):
    before = fn.region_read(CFG, 0, 4096)
    wr(fn, 0x00, 0x12345678)                    # IDs
    wr(fn, 0x08, 0xFFFFFFFF)                    # revision/class
    wr(fn, 0x34, 0xFF, 1)
    wr(fn, MSIX_OFFSET + 4, 0xFFFFFFFF)         # table offset/BIR
    wr(fn, PCIE_OFFSET + 4, 0)                  # DEVCAP
    wr(fn, 0x100, 0xFFFFFFFF)                   # extended space: nothing there
    wr(fn, 0x06, 0xFFFF, 2)                     # status: W1C of zero bits, cap bit RO
    assert fn.region_read(CFG, 0, 4096) == before


def test_writable_registers(fn):
    wr(fn, 0x04, 0xFFFF, 2)
    assert rd(fn, 0x04, 2) == 0x0547
    wr(fn, 0x3C, 0x0B, 1)
    assert rd(fn, 0x3C, 1) == 0x0B
    wr(fn, MSIX_OFFSET + 2, 0xFFFF, 2)
    assert rd(fn, MSIX_OFFSET + 2, 2) == 0xC000 | 64
    assert fn.config.msix_enabled
    wr(fn, PM_OFFSET + 4, 0x0003, 2)
    assert rd(fn, PM_OFFSET + 4, 2) & 3 == 3


def test_flr_resets(ctrl, fn):
    wr(fn, 0x04, 0x6, 2)
    fn.region_write(RegionIndex.BAR0, Reg.AQA, (0x001F001F).to_bytes(4, "little"))
    assert ctrl.aqa == 0x001F001F
    wr(fn, PCIE_OFFSET + 8, 0x8000, 2)
    assert ctrl.aqa == 0                        # the controller behind BAR0 was reset too
    assert rd(fn, 0x04, 2) == 0
    assert rd(fn, PCIE_OFFSET + 8, 2) & 0x8000 == 0


def test_regions_trap_and_mmap():
    trap_ctrl, mmap_ctrl = controller(doorbells="trap", max_intr_vectors=4), controller(doorbells="mmap")
    try:
        trap = trap_ctrl.pci
        regs = trap.regions()
        assert len(regs) == 9
        assert regs[0].size == BAR0_SIZE and not regs[0].flags & RegionFlag.MMAP and regs[0].mmap_fd is None
        assert regs[4].size == 0x1000 and regs[5].size == 0x1000
        assert regs[7].size == 4096
        assert all(regs[i].size == 0 for i in (1, 2, 3, 6, 8))
        mm = mmap_ctrl.pci.regions()[0]
        assert mm.flags == RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS
        assert mmap_ctrl.doorbells.fd is not None
        assert (mm.mmap_fd, mm.file_offset, mm.mmap_areas) == (mmap_ctrl.doorbells.fd, 0,
                                                               [(DOORBELL_PAGE_OFFSET, DOORBELL_PAGE_SIZE)])
        assert trap.irq_count(IrqIndex.MSIX) == 4 and trap.irq_count(IrqIndex.INTX) == 1
        assert trap.irq_count(IrqIndex.MSI) == 1 and trap.irq_count(IrqIndex.ERR) == 0
    finally:
        trap_ctrl.shutdown()
        mmap_ctrl.shutdown()


def test_bar0_forwarding_splits_accesses(ctrl, fn):
    fn.region_write(RegionIndex.BAR0, Reg.ASQ, (0x1122334455667000).to_bytes(8, "little"))
    assert ctrl.asq == 0x1122334455667000       # one 8-byte register write
    fn.region_write(RegionIndex.BAR0, Reg.AQA + 1, b"\x01\x02\x03")  # a 1-byte then a 2-byte write
    assert ctrl.aqa == 0x03020100
    # An 8-byte read at a dword boundary: two 4-byte register reads, in order.
    assert fn.region_read(RegionIndex.BAR0, Reg.AQA, 8) == (0x03020100).to_bytes(4, "little") + b"\x00\x70\x66\x55"
    assert fn.region_read(RegionIndex.BAR0, Reg.CAP, 8) == ctrl.cap.to_bytes(8, "little")
    assert fn.region_read(RegionIndex.BAR0, Reg.VS + 2, 2) == (ctrl.vs >> 16).to_bytes(2, "little")


def test_bar0_accesses_across_the_register_doorbell_boundary():
    """An 8-byte access at 0xffc is a register half and a doorbell half: each reaches its
    own part of the controller (the doorbell is mirrored into the mmap memfd)."""
    c = controller(doorbells="mmap")
    try:
        edge = DOORBELL_PAGE_OFFSET - 4
        c.pci.region_write(RegionIndex.BAR0, edge, (0x5 << 32 | 0xFFFFFFFF).to_bytes(8, "little"))
        assert os.pread(c.doorbells.fd, 4, DOORBELL_PAGE_OFFSET) == (5).to_bytes(4, "little")
        assert c.pci.region_read(RegionIndex.BAR0, edge, 8) == bytes(4) + (5).to_bytes(4, "little")
    finally:
        c.shutdown()


def test_bad_accesses(fn):
    for index, off, n in ((CFG, 4095, 2), (RegionIndex.BAR0, 0x3FFF, 2), (RegionIndex.BAR4, 1 << 20, 4),
                          (RegionIndex.BAR1, 0, 4), (RegionIndex.ROM, 0, 4), (99, 0, 4)):
        with pytest.raises(RegionAccessError):
            fn.region_read(index, off, n)
        with pytest.raises(RegionAccessError):
            fn.region_write(index, off, bytes(n))


def test_msix_table_and_pba(fn):
    assert fn.region_read(RegionIndex.BAR4, 12, 4) == b"\x01\x00\x00\x00"   # masked at reset
    fn.region_write(RegionIndex.BAR4, 16, b"\xaa" * 16)
    assert fn.region_read(RegionIndex.BAR4, 16, 16) == b"\xaa" * 16
    fn.region_write(RegionIndex.BAR5, 0, b"\xff" * 8)
    assert fn.region_read(RegionIndex.BAR5, 0, 8) == bytes(8)
    fn.reset()
    assert fn.region_read(RegionIndex.BAR4, 16, 16) == bytes(12) + b"\x01\x00\x00\x00"


def test_trigger_range(fn):
    sink = MsixEventfds()                      # the transport's eventfd-backed sink
    fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(4)]
    try:
        for vector, fd in enumerate(fds):
            sink.assign(vector, os.dup(fd))
        assert fn.trigger(0) is False           # nothing bound yet
        fn.bind(None, sink)
        assert fn.trigger(3) and not fn.trigger(65) and not fn.trigger(-1)
        assert os.eventfd_read(fds[3]) == 1
        for fd in fds[:3]:
            with pytest.raises(BlockingIOError):
                os.eventfd_read(fd)
    finally:
        sink.close_all()
        for fd in fds:
            os.close(fd)
