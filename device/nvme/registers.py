"""Controller registers in BAR0 below the doorbells, and the CC/CSTS state machine.

``Registers`` decodes register accesses (any width, any alignment: combined from
dwords) and owns the controller's ``CtrlState``; CSTS is derived from that one
state instead of loose flags. What an enable, disable or shutdown *does* is the
owner's business, reached through the ``RegisterOwner`` callbacks: the
registers only say when it happens and what CSTS reads afterwards.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable, Protocol

from nvshell.device import trace as T
from nvshell.device.nvme.spec import CQE_SIZE_LOG2, DOORBELL_PAGE_OFFSET, NVME_VERSION, SQE_SIZE_LOG2, Reg

log = logging.getLogger(__name__)

CC_EN = 1 << 0
CC_SHN_SHIFT = 14
CC_SHN_MASK = 0x3 << CC_SHN_SHIFT
CSTS_RDY = 1 << 0
CSTS_CFS = 1 << 1
CSTS_SHST_MASK = 0x3 << 2
CSTS_SHST_COMPLETE = 0x2 << 2
CAP_TO = 0x0F                   # 7.5 s ready timeout (500 ms units)
#: CAP.CRMS: CRWMS (bit 59), mandatory since NVMe 2.0: ready "with media", the only
#: mode here (CRIMS, bit 60, clear: CC.CRIME stays 0).
CAP_CRWMS = 1 << 59
#: CRTO: CRWMT (15:0) and CRIMT (31:16) in 500 ms units; both CAP.TO.
CRTO = CAP_TO | (CAP_TO << 16)
CAP_CSS_NVM = 1 << 0
CAP_CSS_IOCS = 1 << 6           # "one or more I/O command sets": CC.CSS=110b, CNS 05/06
CSS_NVM = 0
CSS_ALL_IOCS = 6
IOSQES = SQE_SIZE_LOG2
IOCQES = CQE_SIZE_LOG2


class CtrlState(enum.Enum):
    """Where the controller is in its life cycle; ``csts`` is what CSTS reads there."""

    DISABLED = 0                                #: CC.EN=0, power-on
    READY = CSTS_RDY                            #: enabled, processing commands
    SHUT_DOWN = CSTS_RDY | CSTS_SHST_COMPLETE   #: enabled, CC.SHN done (data durable)
    SHUT_DOWN_DISABLED = CSTS_SHST_COMPLETE     #: disabled after a shutdown notification
    ENABLE_FAILED = CSTS_CFS                    #: CC.EN=1 refused (bad CC/AQA/ASQ/ACQ)
    FATAL = CSTS_RDY | CSTS_CFS                 #: Controller Fatal Status while enabled

    @property
    def csts(self) -> int:
        return self.value

    @property
    def processing(self) -> bool:
        """Do queues run in this state (a host may still use queues after SHN)."""
        return self in (CtrlState.READY, CtrlState.SHUT_DOWN)


class RegisterOwner(Protocol):
    """What the registers call when the host changes CC."""

    def on_enable(self) -> str | None:
        """CC.EN 0 -> 1 with the new CC in place: None, or why it fails (-> CFS)."""

    def on_disable(self) -> None:
        """CC.EN 1 -> 0: Controller Level Reset."""

    def on_shutdown(self) -> None:
        """CC.SHN set: make written data durable."""

    def interrupt_mask_writable(self) -> bool:
        """INTMS/INTMC apply (MSI-X is not in use: with MSI-X the spec leaves them undefined)."""

    def on_interrupt_mask(self, old: int) -> None:
        """INTMS or INTMC changed the interrupt mask (``old`` is the previous one)."""


def reg_name(offset: int) -> str:
    """'CC', 'ASQ+4', ... for register traces."""
    for reg in sorted(Reg, key=int, reverse=True):
        if reg <= offset < reg + 8 and reg != Reg.DOORBELLS:
            return reg.name if offset == reg else f"{reg.name}+{offset - reg}"
    return f"{offset:#x}"


class Registers:
    """CAP, VS, INTMS/INTMC, CC, CSTS, AQA, ASQ, ACQ (offsets below the doorbells)."""

    def __init__(self, owner: RegisterOwner, *, mqes: int, name: Callable[[], str]):
        self._owner = owner
        self._name = name
        self.cap = (mqes & 0xFFFF) | (1 << 16) | (CAP_TO << 24) | ((CAP_CSS_NVM | CAP_CSS_IOCS) << 37) | CAP_CRWMS
        self.vs = NVME_VERSION
        self.cc = 0
        self.aqa = 0
        self.asq = 0
        self.acq = 0
        self.intms = 0
        self.state = CtrlState.DISABLED

    @property
    def csts(self) -> int:
        return self.state.csts

    @property
    def page_size(self) -> int:
        return 4096 << ((self.cc >> 7) & 0xF)

    @property
    def asq_entries(self) -> int:
        return (self.aqa & 0xFFF) + 1

    @property
    def acq_entries(self) -> int:
        return ((self.aqa >> 16) & 0xFFF) + 1

    def reset(self) -> None:
        """Power-on values (function reset)."""
        self.cc = self.aqa = self.asq = self.acq = self.intms = 0
        self.state = CtrlState.DISABLED

    def fatal(self) -> None:
        """CSTS.CFS: stays until the host clears CC.EN."""
        if self.state is not CtrlState.ENABLE_FAILED:
            self.state = CtrlState.FATAL

    # -------------------------------------------------------------- reads
    def reg32(self, off: int) -> int:
        if off == Reg.CAP:
            return self.cap & 0xFFFFFFFF
        if off == Reg.CAP + 4:
            return self.cap >> 32
        if off == Reg.VS:
            return self.vs
        if off in (Reg.INTMS, Reg.INTMC):
            return self.intms
        if off == Reg.CC:
            return self.cc
        if off == Reg.CSTS:
            return self.state.csts
        if off == Reg.AQA:
            return self.aqa
        if off == Reg.ASQ:
            return self.asq & 0xFFFFFFFF
        if off == Reg.ASQ + 4:
            return self.asq >> 32
        if off == Reg.ACQ:
            return self.acq & 0xFFFFFFFF
        if off == Reg.ACQ + 4:
            return self.acq >> 32
        if off == Reg.CRTO:
            return CRTO
        return 0  # reserved, NSSR, CMB/PMR/BP registers (absent)

    def read(self, offset: int, size: int) -> int:
        """A read of 1/2/4/8 bytes below the doorbells; any alignment (combined from dwords)."""
        start = offset & ~3
        value = 0
        for i, off in enumerate(range(start, offset + size, 4)):
            value |= self.reg32(off) << (32 * i)
        value = (value >> (8 * (offset - start))) & ((1 << (8 * size)) - 1)
        if T.NVME_REG_READ.enabled:
            T.NVME_REG_READ.emit(ctrl=self._name(), reg=reg_name(offset), offset=offset, size=size, value=value)
        return value

    # ------------------------------------------------------------- writes
    def write(self, offset: int, size: int, value: int) -> None:
        """A register write; a guest mistake is ignored, never raised."""
        if T.NVME_REG_WRITE.enabled:
            T.NVME_REG_WRITE.emit(ctrl=self._name(), reg=reg_name(offset), offset=offset, size=size, value=value)
        self._write(offset, size, value)

    def _write(self, offset: int, size: int, value: int) -> None:
        if size == 8 and not offset & 7:
            self._write32(offset, value & 0xFFFFFFFF)
            self._write32(offset + 4, value >> 32)
            return
        start = offset & ~3
        shift = 8 * (offset - start)
        if size == 4 and not shift:
            self._write32(offset, value)
            return
        if offset + size > start + 4:
            # Straddles two dwords (an odd access): do it byte by byte.
            for i in range(size):
                self._write(offset + i, 1, (value >> (8 * i)) & 0xFF)
            return
        mask = ((1 << (8 * size)) - 1) << shift
        if start in (Reg.INTMS, Reg.INTMC):
            self._write32(start, (value << shift) & mask)  # set/clear only the bytes written
        else:
            self._write32(start, (self.reg32(start) & ~mask) | ((value << shift) & mask))

    def _write32(self, off: int, value: int) -> None:
        value &= 0xFFFFFFFF
        if off in (Reg.INTMS, Reg.INTMC):
            if not self._owner.interrupt_mask_writable():
                # Undefined while MSI-X is in use (its table masks vectors): ignored, as QEMU does.
                log.debug("%s: %s write %#x ignored: MSI-X is in use", self._name(), Reg(off).name, value)
                return
            old = self.intms
            self.intms = old | value if off == Reg.INTMS else old & ~value
            if self.intms != old:
                self._owner.on_interrupt_mask(old)
        elif off == Reg.CC:
            self._write_cc(value)
        elif off == Reg.AQA:
            self.aqa = value & 0x0FFF0FFF
        elif off == Reg.ASQ:
            self.asq = (self.asq & ~0xFFFFFFFF) | value
        elif off == Reg.ASQ + 4:
            self.asq = (self.asq & 0xFFFFFFFF) | (value << 32)
        elif off == Reg.ACQ:
            self.acq = (self.acq & ~0xFFFFFFFF) | value
        elif off == Reg.ACQ + 4:
            self.acq = (self.acq & 0xFFFFFFFF) | (value << 32)
        # CAP, VS, CSTS: read-only; NSSR: subsystem reset unsupported (NSSRS=0); rest reserved.

    def _write_cc(self, value: int) -> None:
        old = self.cc
        if value & CC_EN and not old & CC_EN:
            self.cc = value
            reason = self.enable_error() or self._owner.on_enable()
            if reason:
                log.warning("controller %s: enable failed: %s", self._name(), reason)
                self.state = CtrlState.ENABLE_FAILED
                return
            self.state = CtrlState.READY
            if T.NVME_CTRL_ENABLE.enabled:
                T.NVME_CTRL_ENABLE.emit(ctrl=self._name(), cc=value)
        elif not value & CC_EN and old & CC_EN:
            if T.NVME_CTRL_DISABLE.enabled:
                T.NVME_CTRL_DISABLE.emit(ctrl=self._name(), reason="cc.en")
            self._owner.on_disable()
            self.state = CtrlState.DISABLED
        self.cc = value
        new_shn = value & CC_SHN_MASK
        if new_shn and not old & CC_SHN_MASK:
            self._owner.on_shutdown()
            if self.state is CtrlState.READY:
                self.state = CtrlState.SHUT_DOWN
            elif self.state is CtrlState.DISABLED:
                self.state = CtrlState.SHUT_DOWN_DISABLED
        elif not new_shn and old & CC_SHN_MASK:
            if self.state is CtrlState.SHUT_DOWN:
                self.state = CtrlState.READY
            elif self.state is CtrlState.SHUT_DOWN_DISABLED:
                self.state = CtrlState.DISABLED

    def enable_error(self) -> str | None:
        """What in CC/AQA/ASQ/ACQ forbids CC.EN=1 (memory is the owner's check), or None."""
        cc = self.cc
        css = (cc >> 4) & 7
        if css not in (CSS_NVM, CSS_ALL_IOCS):
            return f"CC.CSS {css} not supported"
        if (cc >> 7) & 0xF:
            return f"CC.MPS {(cc >> 7) & 0xF} outside MPSMIN..MPSMAX (0..0)"
        if (cc >> 11) & 7:
            return f"CC.AMS {(cc >> 11) & 7} not supported"
        if (cc >> 16) & 0xF != IOSQES:
            return f"CC.IOSQES {(cc >> 16) & 0xF} (need {IOSQES})"
        if (cc >> 20) & 0xF != IOCQES:
            return f"CC.IOCQES {(cc >> 20) & 0xF} (need {IOCQES})"
        asqs, acqs = self.aqa & 0xFFF, (self.aqa >> 16) & 0xFFF
        if not asqs or not acqs:
            return f"AQA {self.aqa:#x}: admin queues need at least 2 entries"
        for name, addr in (("ASQ", self.asq), ("ACQ", self.acq)):
            if not addr or addr & (self.page_size - 1):
                return f"{name} {addr:#x} is not page aligned"
        return None


assert DOORBELL_PAGE_OFFSET > Reg.CMBSZ
