"""Errors of the monitor, shaped like QEMU's QMP errors.

Why one rooted hierarchy: every layer that executes commands (QMP sessions, the HMP
layer, the shell) needs to turn any failure into a QMP ``{"class", "desc"}`` pair.
All of them derive from ``nvshell.device.errors.NvshellError``, which carries the
class; ``to_qmp_error`` maps anything else (a bug) onto GenericError so that no bad
input can crash a session.
"""

from __future__ import annotations

import logging

from nvshell.device.errors import NvshellError

log = logging.getLogger("nvshell.monitor")

GENERIC_ERROR = "GenericError"
#: ``qmp_capabilities`` after negotiation (QEMU's wording); the session and the command both use it.
ALREADY_NEGOTIATED = "Capabilities negotiation is already complete, command ignored"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"


class MonitorError(NvshellError):
    """An error of the monitor itself (server setup, addresses)."""


class QMPError(MonitorError):
    """A command failed; ``error_class`` and ``desc`` go on the wire unchanged."""

    def __init__(self, error_class: str, desc: str):
        super().__init__(desc, error_class)

    @property
    def desc(self) -> str:
        return self.message

    def to_json(self) -> dict[str, str]:
        """The value of the ``error`` member of a QMP reply."""
        return {"class": self.error_class, "desc": self.desc}


class GenericError(QMPError):
    """QEMU's catch-all error class."""

    def __init__(self, desc: str):
        super().__init__(GENERIC_ERROR, desc)


class CommandNotFound(QMPError):
    """Unknown command, or a command refused in the current negotiation state."""

    def __init__(self, desc: str):
        super().__init__(COMMAND_NOT_FOUND, desc)


class DeviceNotFound(QMPError):
    """A device, object or QOM path does not exist."""

    def __init__(self, desc: str):
        super().__init__(DEVICE_NOT_FOUND, desc)


class ArgumentError(GenericError):
    """A command's arguments do not match its declaration (missing/unexpected/wrong type)."""


class AddressError(MonitorError, ValueError):
    """A ``-qmp`` address string cannot be understood."""


def to_qmp_error(exc: BaseException) -> QMPError:
    """Map any exception raised by a command onto a ``QMPError``.

    Every ``NvshellError`` carries its QMP class; anything else is a bug, logged
    with its traceback and reported as a GenericError rather than taking the
    session down.
    """
    if isinstance(exc, QMPError):
        return exc
    if isinstance(exc, NvshellError):
        return QMPError(exc.error_class, str(exc))
    log.error("internal error in monitor command", exc_info=exc)
    return GenericError(f"internal error: {type(exc).__name__}: {exc}")
