"""Interrupts: one per vector per batch of completions, coalesced as Feature 08h asks.

The engine hands over the CQs that got entries in a round; each CQ with
interrupts enabled contributes its new entries to its vector, and each vector
fires once. Interrupt Coalescing (Feature 08h: THR = entries, 0's based; TIME
in 100 us units) applies to I/O vectors whose Interrupt Vector Configuration
(Feature 09h) does not set Coalescing Disable: the vector fires once THR+1
entries have gathered, or TIME after the first of them -- whichever comes
first. TIME = 0 means "no delay" (the spec's wording), so it disables
coalescing. The admin vector (0) is never coalesced.

A fired vector goes to the PCI function as an MSI-X message; when the host
has not enabled MSI-X it goes to ``legacy_irq.LegacyInterrupts`` (INTx level,
MSI, INTMS masking) instead. The mode follows the PCI config space
(``set_mode``, from ``Controller.irq_mode_changed``); with MSI-X the only extra
cost is one attribute test per interrupt fired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device import trace as T
from nvshell.device.nvme.legacy_irq import LegacyInterrupts
from nvshell.device.pci.config import IrqMode

if TYPE_CHECKING:
    from nvshell.device.iothread import TimerHandle
    from nvshell.device.nvme.controller import Controller
    from nvshell.device.nvme.queues import CompletionQueue

#: Aggregation Time unit (seconds).
COALESCING_TIME_UNIT = 0.0001


class Interrupts:
    """Vector signalling and coalescing of one controller (IOThread only)."""

    def __init__(self, ctrl: "Controller"):
        self.ctrl = ctrl
        #: vector -> entries gathered but not yet signalled (coalescing).
        self._gathered: dict[int, int] = {}
        self._timers: dict[int, "TimerHandle"] = {}
        #: Interrupts fired, per vector (statistics, tests).
        self.fired: dict[int, int] = {}
        #: INTx and MSI (used while MSI-X is off: ``msix`` False). The function starts
        #: with MSI-X disabled, so in INTx mode; the CQ head hook watches acknowledgements.
        self.legacy = LegacyInterrupts(ctrl)
        self.msix = False
        ctrl.engine.on_cq_head = self.legacy.cq_head_moved

    def set_mode(self, mode: IrqMode) -> None:
        """The PCI function's interrupt mode changed (config space write or reset)."""
        self.msix = mode is IrqMode.MSIX
        self.legacy.set_mode(mode)
        self.ctrl.engine.on_cq_head = None if self.msix else self.legacy.cq_head_moved

    def cq_deleted(self, cq: "CompletionQueue") -> None:
        """A deleted CQ no longer holds its vector's INTx/MSI status."""
        if not self.msix:
            self.legacy.cq_deleted(cq)

    def clear(self) -> None:
        """Controller reset: nothing gathered, no timer left."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._gathered.clear()
        self.legacy.clear()

    def signal(self, cqs: list["CompletionQueue"]) -> None:
        ctrl = self.ctrl
        hook = ctrl.hooks.on_interrupt
        live = ctrl.engine.cqs
        if len(cqs) == 1 and hook is None and not ctrl.features.int_coalescing & 0xFF00:
            # One CQ got entries and nothing coalesces (every round of a one-queue workload).
            cq = cqs[0]
            cq.irq_pending = False
            cq.unsignalled = 0
            if cq.ien and live[cq.qid] is cq:
                self._fire(cq.vector)
            return
        vectors: dict[int, int] = {}
        for cq in cqs:
            cq.irq_pending = False
            n, cq.unsignalled = cq.unsignalled, 0
            if not cq.ien or live[cq.qid] is not cq:
                continue
            if hook is not None and hook(cq.qid, cq.vector) is False:
                continue
            vectors[cq.vector] = vectors.get(cq.vector, 0) + n
        if not vectors:
            return
        coalescing = ctrl.features.int_coalescing
        aggr_time = (coalescing >> 8) & 0xFF
        for vector, n in vectors.items():
            if aggr_time and vector and not ctrl.features.int_vector_cd.get(vector, False):
                self._gather(vector, n, (coalescing & 0xFF) + 1, aggr_time)
            else:
                self._fire(vector)

    def _gather(self, vector: int, n: int, threshold: int, aggr_time: int) -> None:
        total = self._gathered.get(vector, 0) + n
        if total >= threshold:
            self._fire(vector)
            return
        self._gathered[vector] = total
        if vector not in self._timers and self.ctrl.iothread is not None:
            self._timers[vector] = self.ctrl.iothread.call_later(
                aggr_time * COALESCING_TIME_UNIT, lambda: self._expire(vector))

    def _expire(self, vector: int) -> None:
        self._timers.pop(vector, None)
        if self._gathered.get(vector):
            self._fire(vector)

    def _fire(self, vector: int) -> None:
        if self._gathered:
            self._gathered.pop(vector, None)
        if self._timers:
            timer = self._timers.pop(vector, None)
            if timer is not None:
                timer.cancel()
        fired = self.fired
        fired[vector] = fired.get(vector, 0) + 1
        if T.NVME_IRQ.enabled:
            T.NVME_IRQ.emit(ctrl=self.ctrl.name, vector=vector)
        if self.msix:
            self.ctrl.pci.trigger(vector)
        else:
            self.legacy.fire(vector)
