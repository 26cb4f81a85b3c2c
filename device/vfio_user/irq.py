"""MSI-X vectors backed by the eventfds a vfio-user client passed with SET_IRQS.

QEMU emulates MSI-X masking itself and hands us one eventfd per vector in use;
firing a vector is one ``eventfd_write``. The client may swap or withdraw a
vector's eventfd at any time, so lookups happen on every trigger (a dict get).

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
