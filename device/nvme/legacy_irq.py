"""INTx and MSI: how the controller interrupts when the host did not enable MSI-X.

The NVMe rules for pin-based and MSI interrupts (NVMe Base, "Interrupts"), as
QEMU's hw/nvme implements them (``nvme_irq_assert``/``nvme_irq_deassert``/
``nvme_irq_check``):

* Each vector has an interrupt status bit (``status``): set when the interrupt
  unit fires the vector (after coalescing), cleared once every completion queue
  on that vector with interrupts enabled is empty again (its head, as the host's
  CQ head doorbell reports it, caught up with the tail).
* INTMS/INTMC mask vectors (bit v masks vector v; only vectors below 32 can be
  masked). They exist for this mode only: written while MSI-X is in use they are
  ignored, as QEMU does (the spec leaves such accesses undefined).
* INTx: the pin is asserted while any unmasked status bit is set. QEMU's vfio
  client signals the guest once and unmasks after the guest's EOI; the PCI
  function then asks for the level again (``intx_unmasked``), which re-signals
  completions still unacknowledged.
* MSI: edge-triggered; the one message is sent each time an unmasked vector
  fires; one fired while masked is sent when INTMC unmasks it (if its status is
  still set).

Without MSI-X there is one message (or the one pin): QEMU's nvme refuses a CQ
with a nonzero vector then (Invalid Interrupt Vector, ``admin_queues``), so every
CQ uses vector 0 and the message sent is 0.

Shadow doorbells: the host updates CQ heads in its shadow buffer and rings the
real doorbell only when EventIdx asks. INTx needs that ring: QEMU's client sees
the guest's EOI only on a BAR access, and without one the line stays asserted
(an interrupt storm the guest finally disables). So when a vector fires on the
pin, each of its shadowed CQs gets EventIdx = its current head
(``Doorbells.arm_cq_head``): the host's next head update rings. On unmask the
heads are read from the shadow buffer before the level is decided.

This module costs nothing with MSI-X: ``Interrupts`` sends straight to the PCI
function then, and the engine's CQ head hook is None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device.pci.config import IrqMode

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller
    from nvshell.device.nvme.queues import CompletionQueue

#: The MSI message every vector uses (one message, see the module docstring).
MSI_MESSAGE = 0


class LegacyInterrupts:
    """Interrupt status, masking and the INTx level of one controller (IOThread only)."""

    def __init__(self, ctrl: "Controller"):
        self.ctrl = ctrl
        self.mode = IrqMode.INTX
        #: Interrupt status, bit per vector (fired, completions not yet acknowledged).
        self.status = 0
        #: MSI: vectors that fired while masked (sent on unmask).
        self.msi_pending = 0
        #: MSI messages sent, INTx assertions (statistics, tests).
        self.msi_sent = 0
        self.intx_asserts = 0

    @property
    def intms(self) -> int:
        return self.ctrl.regs.intms

    def clear(self) -> None:
        """Controller reset: no status, the pin deasserted."""
        self.status = 0
        self.msi_pending = 0
        self._update_pin()

    def set_mode(self, mode: IrqMode) -> None:
        """MSI, INTx or none from now on. Between INTx and none (Interrupt Disable) the status
        stays: a request made while disabled drives the pin once enabled (PCI's Interrupt
        Status). Any other change drops the previous mode's state."""
        pin = (IrqMode.INTX, IrqMode.NONE)
        if not (self.mode in pin and mode in pin):
            self.status = 0
            self.msi_pending = 0
        self.mode = mode
        self._update_pin()

    # --------------------------------------------------------- signalling
    def fire(self, vector: int) -> None:
        """The interrupt unit fires ``vector`` (after coalescing)."""
        bit = 1 << vector
        self.status |= bit
        if self.mode is IrqMode.MSI:
            if self.intms & bit:
                self.msi_pending |= bit
            elif self.ctrl.pci.trigger_msi(MSI_MESSAGE):
                self.msi_sent += 1
            return
        self._arm_shadow(vector)
        if self._vector_empty(vector):
            self.status &= ~bit    # the host consumed them all meanwhile (shadow heads)
        self._update_pin()

    def cq_deleted(self, cq: "CompletionQueue") -> None:
        """A deleted CQ (already out of the engine's table) holds no status any more."""
        bit = 1 << cq.vector
        if self.status & bit and self._vector_empty(cq.vector):
            self.status &= ~bit
            self.msi_pending &= ~bit
            if self.mode is not IrqMode.MSI:
                self._update_pin()

    def cq_head_moved(self, cq: "CompletionQueue") -> None:
        """A CQ head doorbell: the vector's status clears once all its CQs are empty."""
        bit = 1 << cq.vector
        if self.status & bit and cq.head == cq.tail and self._vector_empty(cq.vector):
            self.status &= ~bit
            self.msi_pending &= ~bit
            if self.mode is not IrqMode.MSI:
                self._update_pin()

    def mask_changed(self, old_mask: int) -> None:
        """INTMS/INTMC written: re-drive the pin, or send the MSI held by a mask just cleared."""
        if self.mode is IrqMode.MSI:
            unmasked = old_mask & ~self.intms & self.msi_pending & self.status
            self.msi_pending &= ~unmasked
            if unmasked and self.ctrl.pci.trigger_msi(MSI_MESSAGE):
                self.msi_sent += 1
            return
        self._update_pin()

    def intx_unmasked(self) -> None:
        """The client unmasked INTx (the guest's EOI): the level from the CQ heads as they are now."""
        if self.mode is not IrqMode.INTX:
            return
        doorbells = self.ctrl.doorbells
        status = self.status
        vector = 0
        while status >> vector:
            if status >> vector & 1:
                for cq in self._vector_cqs(vector):
                    doorbells.refresh_head(cq)
                if self._vector_empty(vector):
                    self.status &= ~(1 << vector)
                else:
                    self._arm_shadow(vector)
            vector += 1
        self._update_pin()

    # ------------------------------------------------------------ helpers
    def _vector_cqs(self, vector: int) -> list["CompletionQueue"]:
        return [cq for cq in self.ctrl.engine.cqs if cq is not None and cq.ien and cq.vector == vector]

    def _vector_empty(self, vector: int) -> bool:
        return all(cq.head == cq.tail for cq in self._vector_cqs(vector))

    def _arm_shadow(self, vector: int) -> None:
        doorbells = self.ctrl.doorbells
        if doorbells.shadow is None:
            return
        for cq in self._vector_cqs(vector):
            if cq.qid and cq.head != cq.tail:
                doorbells.arm_cq_head(cq)

    def _update_pin(self) -> None:
        """Drive the INTx request: any unmasked status bit (never in MSI or MSI-X mode)."""
        level = bool(self.status & ~self.intms) and self.mode in (IrqMode.INTX, IrqMode.NONE)
        pci = self.ctrl.pci
        if level and not pci.intx_level:
            self.intx_asserts += 1
        pci.set_intx(level)
