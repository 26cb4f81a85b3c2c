"""MSI-X vectors backed by the eventfds a vfio-user client passed with SET_IRQS.

QEMU emulates MSI-X masking itself and hands us one eventfd per vector in use;
firing a vector is one ``eventfd_write``. The client may swap or withdraw a
vector's eventfd at any time, so lookups happen on every trigger (a dict get).
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
        """Take ownership of ``fd`` for ``vector`` (closing any previous one)."""
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


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
