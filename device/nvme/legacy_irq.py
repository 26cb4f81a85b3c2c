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

QEMU (without KVM's resample eventfd) takes any BAR access while INTx is pending
for the guest's EOI: it deasserts and unmasks. An SQ doorbell written before the
guest's handler ran is such an access. Signalling again at once would be
stale once the handler runs: QEMU asserts the line again, the handler finds
nothing and does no BAR access, so the line stays asserted (an interrupt storm
until the next doorbell, "nobody cared" if none comes). So an UNMASK re-signals
at once only if the guest acknowledged completions (moved a CQ head) since the
last signal, i.e. its handler ran and left some; otherwise the pin is held
(the request still shows in Status.Interrupt Status) and signalled again only if
nothing is acknowledged within ``RESIGNAL_DELAY`` (the interrupt may really have
been lost: a level-triggered IO-APIC input dropped before delivery is not
delivered). With KVM the EOI is the guest's real one and none of this matters.
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
    from nvshell.device.iothread import TimerHandle
    from nvshell.device.nvme.controller import Controller
    from nvshell.device.nvme.queues import CompletionQueue

#: The MSI message every vector uses (one message, see the module docstring).
MSI_MESSAGE = 0
#: How long a held INTx waits for the guest's handler before it is signalled again (seconds).
RESIGNAL_DELAY = 0.005


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
        #: The guest acknowledged completions since the pin was last signalled.
        self._acked = True
        #: INTx held after an UNMASK that came before any acknowledgement (see the module docstring).
        self._held = False
        self._resignal: "TimerHandle | None" = None

    @property
    def intms(self) -> int:
        return self.ctrl.regs.intms

    def clear(self) -> None:
        """Controller reset: no status, the pin deasserted."""
        self.status = 0
        self.msi_pending = 0
        self._release()
        self._update_pin()

    def set_mode(self, mode: IrqMode) -> None:
        """MSI, INTx or none from now on. Between INTx and none (Interrupt Disable) the status
        stays: a request made while disabled drives the pin once enabled (PCI's Interrupt
        Status). Any other change drops the previous mode's state."""
        pin = (IrqMode.INTX, IrqMode.NONE)
        if not (self.mode in pin and mode in pin):
            self.status = 0
            self.msi_pending = 0
        self._release()
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
        if not self.status & bit:
            return
        if self.mode is IrqMode.MSI:
            if cq.head == cq.tail and self._vector_empty(cq.vector):
                self.status &= ~bit
                self.msi_pending &= ~bit
            return
        self._acked = True          # the guest's handler ran: what is left needs a new signal
        self._release()
        if cq.head == cq.tail and self._vector_empty(cq.vector):
            self.status &= ~bit
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
                    doorbells.refresh_cq(cq)
                if self._vector_empty(vector):
                    self.status &= ~(1 << vector)
                else:
                    self._arm_shadow(vector)
            vector += 1
        if self.status & ~self.intms:
            if not self._acked and self.ctrl.iothread is not None:
                # Nothing acknowledged since the last signal: the guest's handler may be on its way.
                self._held = True
                if self._resignal is None:
                    self._resignal = self.ctrl.iothread.call_later(RESIGNAL_DELAY, self._resignal_now)
            else:
                self._acked = False     # the server signals the level again right after this
        self._update_pin()

    def _resignal_now(self) -> None:
        """RESIGNAL_DELAY after a held UNMASK with completions still unacknowledged: signal again."""
        self._resignal = None
        if self._held:
            self._held = False
            self._update_pin()

    def _release(self) -> None:
        self._held = False
        if self._resignal is not None:
            self._resignal.cancel()
            self._resignal = None

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
        if level and not self._held and not pci.pin_driven:
            self.intx_asserts += 1
            self._acked = False     # the client is signalled now (or at its next UNMASK)
        pci.set_intx(level, hold=self._held)
