"""INTx and MSI, the fallbacks when a host does not use MSI-X (``pci=nomsi``, MSI-X hidden).

Through the real program and the vfio-user client, playing QEMU's part: the
interrupt pin and capability chain in config space, GET_IRQ_INFO, the INTx
line's level semantics (asserted on completion, deasserted once the CQ head
doorbell catches up, signalled again on UNMASK while completions are still
unacknowledged, as QEMU's vfio-pci unmasks after the guest's EOI), INTMS/INTMC,
one MSI message, and SET_IRQS arguments refused with a clear error.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from nvshell.device.nvme.spec import Reg
from nvshell.device.nvme.status import Status
from nvshell.device.pci.config import (CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_PCIE, CAP_ID_PM, COMMAND, COMMAND_INTX_DISABLE,
                                       MSI_OFFSET, MSIX_CTL_ENABLE, STATUS, STATUS_INTERRUPT)
from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.client import VfioUserError
from nvshell.device.vfio_user.interface import IrqIndex, RegionIndex
from nvshell.testing import NvmeTestHost

CFG = RegionIndex.CONFIG
BAR0 = RegionIndex.BAR0
WRITE = 0x01
#: How long a signal may take to arrive, and how long we wait to be sure none comes.
SIGNAL = 3.0
QUIET = 0.2


def cfg16(host: NvmeTestHost, offset: int) -> int:
    return int.from_bytes(host.client.region_read(CFG, offset, 2), "little")


def intx_status(host: NvmeTestHost) -> bool:
    """Status.Interrupt Status: the function's INTx request."""
    return bool(cfg16(host, STATUS) & STATUS_INTERRUPT)


def wait_status(host: NvmeTestHost, want: bool, timeout: float = SIGNAL) -> bool:
    deadline = time.monotonic() + timeout
    while intx_status(host) != want:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def legacy_host(socket: os.PathLike[str], mode: str = "intx") -> NvmeTestHost:
    """A host that turned MSI-X off again (as a guest booted with pci=nomsi never enables it) and
    wired INTx (or MSI); enabled, with I/O queue pair 1 on vector 0 (the only one without MSI-X)."""
    host = NvmeTestHost(socket)
    c = host.client
    c.disable_msix()
    assert c.set_msg_enable(CAP_ID_MSIX, MSIX_CTL_ENABLE, False)
    c.set_intx_eventfd()
    if mode == "msi":
        c.set_msi_eventfds(1)
    host.enable()
    assert host.status(host.cmd(0x05, cdw10=63 << 16 | 1, cdw11=1 << 16 | 3, dptr1=host.alloc(4096))) \
        == Status.INVALID_INTERRUPT_VECTOR                 # no vector 1 without MSI-X
    host.create_io_queue(1, 64, vector=0)
    host.lba_size()                                        # its Identify now, not inside a test
    # The admin commands above interrupted (and were acknowledged): start from a quiet line.
    c.unmask_intx()
    c.wait_intx(QUIET)
    if mode == "msi":
        c.wait_msi(0, QUIET)
    return host


def submit_write(host: NvmeTestHost, slba: int = 0) -> int:
    buf = host.alloc(4096)
    return host.submit(WRITE, 1, **host._io_fields(slba, 1, 1, buf))


def test_config_space_pin_and_capability_chain(nvme_host: NvmeTestHost) -> None:
    c = nvme_host.client
    config = c.region_read(CFG, 0, 256)
    assert config[0x3D] == 1                                     # Interrupt Pin: INTA#
    chain, ptr = [], config[0x34]
    while ptr:
        chain.append(config[ptr])
        ptr = config[ptr + 1]
    assert chain == [CAP_ID_PM, CAP_ID_PCIE, CAP_ID_MSIX, CAP_ID_MSI]
    assert c.capability(CAP_ID_MSI) == MSI_OFFSET
    ctl = int.from_bytes(config[MSI_OFFSET + 2:MSI_OFFSET + 4], "little")
    assert ctl & 0x80 and not ctl & 0x100 and (ctl >> 1) & 7 == 0  # 64-bit, no per-vector mask, 1 message


def test_irq_info_counts(nvme_host: NvmeTestHost) -> None:
    c = nvme_host.client
    intx, msi, msix = (c.irq_info(i) for i in (IrqIndex.INTX, IrqIndex.MSI, IrqIndex.MSIX))
    assert (intx.count, intx.flags) == (1, P.IrqInfoFlag.EVENTFD | P.IrqInfoFlag.MASKABLE | P.IrqInfoFlag.AUTOMASKED)
    assert (msi.count, msi.flags) == (1, P.IrqInfoFlag.EVENTFD | P.IrqInfoFlag.NORESIZE)
    assert (msix.count, msix.flags) == (65, P.IrqInfoFlag.EVENTFD | P.IrqInfoFlag.NORESIZE)  # max-intr-vectors
    assert c.irq_info(IrqIndex.ERR).count == 0 and c.irq_info(IrqIndex.REQ).count == 0


def test_intx_assert_deassert_and_unmask(nvshell) -> None:
    host = legacy_host(nvshell.socket("ctrl0"))
    c = host.client
    try:
        assert not intx_status(host)
        submit_write(host, 0)
        assert c.wait_intx(SIGNAL), "no INTx for a completion"
        assert intx_status(host)
        submit_write(host, 1)                                    # more while the line is masked (no EOI yet)
        time.sleep(QUIET)
        assert not c.wait_intx(QUIET), "a masked line signalled again"
        c.unmask_intx()                                          # the guest EOId without acknowledging
        assert c.wait_intx(SIGNAL), "UNMASK did not re-signal a level still high"
        host.reap(1, 2)                                          # CQ head doorbell catches up
        assert wait_status(host, False), "INTx still asserted after the CQ head caught up"
        c.unmask_intx()
        assert not c.wait_intx(QUIET), "UNMASK signalled a deasserted line"
        submit_write(host, 2)                                    # a new completion: asserted again
        assert c.wait_intx(SIGNAL)
        host.reap(1, 1)
        assert wait_status(host, False)
    finally:
        host.close()


def test_intx_kvm_unmask_eventfd(nvshell) -> None:
    """With KVM, QEMU passes a resample eventfd (SET_IRQS DATA_EVENTFD|ACTION_UNMASK): KVM writes
    it at the guest's EOI, and the line is unmasked exactly as by an UNMASK message."""
    host = legacy_host(nvshell.socket("ctrl0"))
    c = host.client
    unmask = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        c.set_irqs(IrqIndex.INTX, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_UNMASK, 0, 1, fds=[unmask])
        submit_write(host, 0)
        assert c.wait_intx(SIGNAL)
        os.eventfd_write(unmask, 1)                               # EOI, entry still unacknowledged
        assert c.wait_intx(SIGNAL), "the resample eventfd did not unmask"
        host.reap(1, 1)
        assert wait_status(host, False)
        os.eventfd_write(unmask, 1)
        assert not c.wait_intx(QUIET)
    finally:
        os.close(unmask)
        host.close()


def test_intms_intmc_mask_intx(nvshell) -> None:
    host = legacy_host(nvshell.socket("ctrl0"))
    c = host.client
    try:
        c.write32(BAR0, Reg.INTMS, 0x5)
        c.write32(BAR0, Reg.INTMC, 0x4)
        assert c.read32(BAR0, Reg.INTMS) == 0x1 and c.read32(BAR0, Reg.INTMC) == 0x1
        submit_write(host, 0)
        time.sleep(QUIET)
        assert not c.wait_intx(QUIET), "a masked vector asserted INTx"
        assert not intx_status(host)
        c.write32(BAR0, Reg.INTMC, 0x1)                          # unmasked: the pending completion asserts
        assert c.wait_intx(SIGNAL)
        assert intx_status(host)
        host.reap(1, 1)
        assert wait_status(host, False)
        # Interrupt Disable: the request still shows in Status, the pin stays quiet.
        c.unmask_intx()
        c.region_write(CFG, COMMAND, (cfg16(host, COMMAND) | COMMAND_INTX_DISABLE).to_bytes(2, "little"))
        submit_write(host, 1)
        assert wait_status(host, True)
        assert not c.wait_intx(QUIET)
        c.region_write(CFG, COMMAND, (cfg16(host, COMMAND) & ~COMMAND_INTX_DISABLE).to_bytes(2, "little"))
        assert c.wait_intx(SIGNAL), "clearing Interrupt Disable did not drive the pending request"
        assert intx_status(host), "the request was dropped when Interrupt Disable was cleared"
        host.reap(1, 1)
        assert wait_status(host, False)
    finally:
        host.close()


def test_intms_ignored_with_msix(nvme_host: NvmeTestHost) -> None:
    c = nvme_host.client                                          # nvme_host runs with MSI-X enabled
    c.write32(BAR0, Reg.INTMS, 0xFFFFFFFF)
    assert c.read32(BAR0, Reg.INTMS) == 0
    nvme_host.write(0, bytes(nvme_host.lba_size()))
    assert c.wait_irq(1, SIGNAL)                                  # the mask did not reach MSI-X vector 1


def test_msi_single_message(nvshell) -> None:
    host = legacy_host(nvshell.socket("ctrl0"), mode="msi")
    c = host.client
    try:
        submit_write(host, 0)
        assert c.wait_msi(0, SIGNAL), "no MSI for a completion"
        host.reap(1, 1)
        submit_write(host, 1)
        assert c.wait_msi(0, SIGNAL)                              # edge: one message per interrupt
        host.reap(1, 1)
        assert not c.wait_intx(QUIET) and not intx_status(host)  # never INTx while MSI is on
        c.write32(BAR0, Reg.INTMS, 0x1)
        submit_write(host, 2)
        assert not c.wait_msi(0, QUIET + 0.1), "a masked vector sent MSI"
        c.write32(BAR0, Reg.INTMC, 0x1)
        assert c.wait_msi(0, SIGNAL), "INTMC did not send the MSI held by the mask"
        host.reap(1, 1)
    finally:
        host.close()


def test_bad_set_irqs_arguments(nvme_host: NvmeTestHost) -> None:
    c = nvme_host.client
    trigger_fd = P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER
    none_unmask = P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_UNMASK
    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(2)]
    r, w = os.pipe()
    try:
        cases = [
            (IrqIndex.INTX, trigger_fd, 0, 2, b"", fds, errno.EINVAL),                  # one line only
            (IrqIndex.INTX, trigger_fd, 1, 1, b"", fds[:1], errno.EINVAL),
            (IrqIndex.INTX, trigger_fd, 0, 1, b"", fds, errno.EINVAL),                  # two fds, one line
            (IrqIndex.INTX, none_unmask, 0, 0, b"", (), errno.EINVAL),
            (IrqIndex.INTX, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_MASK, 0, 1, b"", fds[:1],
             errno.ENOTSUP),
            (IrqIndex.INTX, P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_UNMASK, 0, 1, b"", (), errno.EINVAL),
            (IrqIndex.INTX, trigger_fd, 0, 1, b"", [r], errno.EINVAL),                  # not an eventfd
            (IrqIndex.MSI, trigger_fd, 0, 2, b"", fds, errno.EINVAL),                   # one message
            (IrqIndex.MSI, none_unmask, 0, 1, b"", (), errno.EINVAL),                   # MSI is not maskable
            (IrqIndex.INTX, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_MASK, 0, 1,
             b"", (), errno.EINVAL),
        ]
        for index, flags, start, count, data, passed, err in cases:
            with pytest.raises(VfioUserError) as exc:
                c.set_irqs(index, flags, start, count, data, fds=passed)
            assert exc.value.errno == err, (index, hex(flags), start, count)
        # Valid ones still work on the same connection: BOOL unmask and mask, and disabling.
        c.set_irqs(IrqIndex.INTX, P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_UNMASK, 0, 1, b"\x01")
        c.mask_intx()
        c.set_irqs(IrqIndex.INTX, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_TRIGGER, 0, 0)
        assert c.read32(BAR0, Reg.CSTS) & 1
    finally:
        for fd in (*fds, r, w):
            os.close(fd)


MSIX_OFF = ["-object", "x-nvme-subsystem,id=subsys0", "-device", "x-nvme-ctrl,id=ctrl0,subsys=subsys0,msix=off",
            "-object", "x-nvme-ns-nvm,id=ns1,subsys=subsys0,size=16M,attached-to=all"]


def test_msix_off_hides_msix_and_msi_carries_io(nvshell_factory) -> None:
    nv = nvshell_factory(*MSIX_OFF, wait_for=["qmp.sock", "ctrl0.sock"])
    host = NvmeTestHost(nv.socket("ctrl0"))
    c = host.client
    try:
        assert c.capability(CAP_ID_MSIX) is None and c.capability(CAP_ID_MSI) == MSI_OFFSET
        assert c.irq_info(IrqIndex.MSIX).count == 0 and c.irq_info(IrqIndex.MSI).count == 1
        assert c.region_info(RegionIndex.BAR4).size == 0 and c.region_info(RegionIndex.BAR5).size == 0
        with pytest.raises(VfioUserError) as exc:                 # no MSI-X vectors to assign
            c.set_irqs(IrqIndex.MSIX, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER, 0, 1,
                       fds=[os.eventfd(0, os.EFD_CLOEXEC)])
        assert exc.value.errno == errno.EINVAL
        c.set_msi_eventfds(1)
        host.enable()
        host.create_io_queue(1, 64, vector=0)
        host.lba_size()
        c.wait_msi(0, QUIET)
        host.write(0, bytes(range(256)) * (host.lba_size() // 256))
        assert c.wait_msi(0, SIGNAL)
        assert host.read(0, 1) == bytes(range(256)) * (host.lba_size() // 256)
    finally:
        host.close()


def test_deleting_a_cq_with_unacknowledged_entries_deasserts(nvshell) -> None:
    host = legacy_host(nvshell.socket("ctrl0"))
    c = host.client
    try:
        submit_write(host, 0)
        assert c.wait_intx(SIGNAL)
        assert intx_status(host)
        assert host.status(host.cmd(0x00, cdw10=1)) == 0          # Delete I/O SQ 1
        assert intx_status(host)                                  # CQ 1 still holds the entry
        assert host.status(host.cmd(0x04, cdw10=1)) == 0          # Delete I/O CQ 1
        assert wait_status(host, False), "a deleted CQ kept INTx asserted"
    finally:
        host.close()
