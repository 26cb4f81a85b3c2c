"""Interrupts backed by the eventfds a vfio-user client passed with SET_IRQS.

MSI-X and MSI (``MsixEventfds``): QEMU emulates masking itself and hands us one
eventfd per vector in use; firing a vector is one ``eventfd_write``. The client
may swap or withdraw a vector's eventfd at any time, so lookups happen on every
trigger (a dict get).

INTx (``IntxLine``) is a level, with vfio's semantics (VFIO_IRQ_INFO_MASKABLE |
AUTOMASKED, as the kernel's vfio-pci reports it): when the line rises and is
unmasked, the trigger eventfd is written once and the line masks itself; the
client (QEMU's vfio-pci, after the guest's EOI, or KVM through the "unmask"
eventfd of SET_IRQS DATA_EVENTFD|ACTION_UNMASK) unmasks it, and a level still high
is signalled again. So a guest that returns from its handler with completions
still unacknowledged is interrupted again, as with a real level-triggered pin.

An interrupt write must never block the IOThread: a client could pass an eventfd
opened without EFD_NONBLOCK whose counter it filled, and the controller would
never be served again. So only eventfds are accepted (``check_eventfd``) and each
is switched to O_NONBLOCK when assigned; a full counter (EAGAIN) means an
interrupt is already pending, which is all a vector can say anyway. QEMU creates
its eventfds non-blocking already, so the flag changes nothing for it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class MsixEventfds:
    """``InterruptSink`` implementation: vector -> eventfd (owned by this object)."""

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def trigger(self, vector: int) -> bool:
        """Signal ``vector``; False when no eventfd is assigned (interrupt lost)."""
        fd = self._fds.get(vector)
        if fd is None:
            return False
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the client has a pending event anyway
        except OSError as exc:
            log.warning("MSI-X vector %d: eventfd write failed: %s", vector, exc)
            return False
        return True

    def assign(self, vector: int, fd: int) -> None:
        """Take ownership of ``fd`` (an eventfd, see ``check_eventfd``) for ``vector``
        (closing any previous one); it is made non-blocking."""
        os.set_blocking(fd, False)
        old = self._fds.get(vector)
        self._fds[vector] = fd
        if old is not None and old != fd:
            _close(old)

    def deassign(self, vector: int) -> None:
        fd = self._fds.pop(vector, None)
        if fd is not None:
            _close(fd)

    def assigned(self, vector: int) -> bool:
        return vector in self._fds

    @property
    def vectors(self) -> list[int]:
        return sorted(self._fds)

    def close_all(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            _close(fd)


def check_eventfd(fd: int) -> None:
    """Raise ValueError unless ``fd`` is an eventfd (a pipe, socket or file could block
    or grow without bound on every interrupt)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            text = info.read(4096)
    except OSError as exc:
        raise ValueError(f"cannot inspect file descriptor: {exc}") from None
    if b"eventfd-count:" not in text:
        raise ValueError("interrupt file descriptor is not an eventfd")


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class IntxLine:
    """The INTx line as the client sees it (see module docstring). IOThread only."""

    def __init__(self) -> None:
        self.fd: int | None = None
        #: KVM's resample eventfd (SET_IRQS DATA_EVENTFD|ACTION_UNMASK): readable = unmask.
        self.unmask_fd: int | None = None
        #: The level the device drives.
        self.level = False
        #: Masked by the client, or automatically after a signal until the client unmasks.
        self.masked = False
        #: Times the trigger eventfd was written (statistics, tests).
        self.signals = 0

    def set_level(self, level: bool) -> None:
        self.level = level
        if level:
            self._signal()

    def mask(self) -> None:
        self.masked = True

    def unmask(self) -> None:
        """The client unmasked: a level still high is signalled again."""
        self.masked = False
        if self.level:
            self._signal()

    def _signal(self) -> None:
        if self.masked or self.fd is None:
            return
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: the client has a pending event anyway
        except OSError as exc:
            log.warning("INTx: eventfd write failed: %s", exc)
            return
        self.masked = True
        self.signals += 1

    def assign(self, fd: int) -> None:
        """Take ``fd`` (an eventfd) as the trigger; a level already high is signalled."""
        os.set_blocking(fd, False)
        old, self.fd = self.fd, fd
        if old is not None and old != fd:
            _close(old)
        self.masked = False
        if self.level:
            self._signal()

    def deassign(self) -> None:
        """No trigger eventfd any more (INTx disabled by the client): the mask state goes too."""
        fd, self.fd = self.fd, None
        if fd is not None:
            _close(fd)
        self.masked = False

    def close_all(self) -> None:
        self.deassign()
        fd, self.unmask_fd = self.unmask_fd, None
        if fd is not None:
            _close(fd)


class ClientInterrupts:
    """The ``InterruptSink`` the server hands its device: MSI-X, MSI and INTx together."""

    def __init__(self, msix: MsixEventfds, msi: MsixEventfds, intx: IntxLine) -> None:
        self.msix = msix
        self.msi = msi
        self.intx = intx
        self.trigger = msix.trigger
        self.trigger_msi = msi.trigger

    def set_intx(self, level: bool) -> None:
        self.intx.set_level(level)
