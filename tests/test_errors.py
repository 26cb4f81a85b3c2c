"""One error hierarchy: everything reported to a user is an NvshellError carrying its QMP class."""

from __future__ import annotations

import pytest

from nvshell.device.errors import NvshellError, ObjectNotFound, PropertyError
from nvshell.device.nvme.namespace import NamespaceError
from nvshell.device.nvme.subsystem import SubsystemError
from nvshell.device.trace import TraceError
from nvshell.monitor.errors import AddressError, CommandNotFound, QMPError, to_qmp_error
from nvshell.monitor.hmp import HMPError, error_text
from nvshell.cmdline import CmdlineError


@pytest.mark.parametrize("cls", [QMPError, CommandNotFound, AddressError, HMPError, CmdlineError, TraceError,
                                 SubsystemError, NamespaceError, ObjectNotFound, PropertyError])
def test_every_user_facing_error_has_one_root(cls: type) -> None:
    assert issubclass(cls, NvshellError)


def test_qmp_class_travels_with_the_exception() -> None:
    assert to_qmp_error(ObjectNotFound("Device 'x' not found")).to_json() == {
        "class": "DeviceNotFound", "desc": "Device 'x' not found"}
    assert to_qmp_error(NamespaceError("Parameter 'lba-size' expects 512 or 4096")).error_class == "GenericError"
    assert to_qmp_error(NvshellError("gone", "DeviceNotActive")).error_class == "DeviceNotActive"
    bug = to_qmp_error(KeyError("k"))                        # not ours: a bug, reported, never raised
    assert bug.error_class == "GenericError" and "internal error: KeyError" in bug.desc


def test_hmp_prints_any_nvshell_error_as_one_line() -> None:
    assert error_text(ObjectNotFound("Device 'x' not found")) == "Error: Device 'x' not found"
    assert error_text(CommandNotFound("The command x has not been found")) == "Error: The command x has not been found"
    assert error_text(ZeroDivisionError("division by zero")) == "Error: ZeroDivisionError: division by zero"
