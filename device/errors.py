"""Errors raised by the device model and the run-time API.

Why a hierarchy of our own: the QMP monitor, the HMP shell and the command line all
report the same failures, and each needs to know *how* to report them (QMP error
class) without parsing message text.  Every exception carries ``error_class``, the
QMP class the monitor should answer with, and a message worded like QEMU's so that
users and scripts written for QEMU recognise it.
"""

from __future__ import annotations


class NvshellError(Exception):
    """Root of every error nvshell reports to a user (QMP ``GenericError``)."""

    error_class: str = "GenericError"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message


class ObjectNotFound(NvshellError):
    """A device, object or QOM path does not exist (QMP ``DeviceNotFound``).

    Messages follow QEMU: "Device 'x' not found", "object 'x' not found",
    "Path '/x' not found".
    """

    error_class = "DeviceNotFound"


class PropertyError(NvshellError):
    """A property is unknown, read-only, immutable, or its value is invalid."""


class ObjectError(NvshellError):
    """An object cannot be created, changed or deleted in its current state."""


class TypeNotFound(NvshellError):
    """An unknown QOM type name ("invalid object type: x")."""
