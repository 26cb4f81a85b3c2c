"""The root of every error nvshell reports to a user, and the device model's errors.

Why one rooted hierarchy: the QMP monitor, the HMP shell and the command line all
report the same failures, and each needs to know *how* to report them (QMP error
class) without parsing message text.  Every ``NvshellError`` carries ``error_class``,
the QMP class the monitor answers with, and a message worded like QEMU's so that
users and scripts written for QEMU recognise it.  The monitor's own errors
(``monitor/errors.py``) and the command line's derive from ``NvshellError`` too:
anything else reaching the monitor is a bug.
"""

from __future__ import annotations


class NvshellError(Exception):
    """Root of every error nvshell reports to a user (QMP ``GenericError``)."""

    error_class: str = "GenericError"

    def __init__(self, message: str, error_class: str | None = None):
        super().__init__(message)
        self.message = message
        if error_class is not None:
            self.error_class = error_class

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
