"""Format NVM (80h): change a namespace's LBA format, which also erases it.

The namespace does the work (``ns.format(lbaf)``); this handler validates
the command: Secure Erase and Protection Information are not supported
(Invalid Field), an LBA format the namespace lacks is Invalid Format, and NSID
FFFFFFFFh formats every namespace attached to this controller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device.nvme.commands import ADMIN, EFFECT_CSUPP, EFFECT_LBCC, EFFECT_NCC, EFFECT_NIC, Command
from nvshell.device.nvme.spec import BROADCAST_NSID, AdminOpcode
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller



@ADMIN.command(AdminOpcode.FORMAT_NVM, nsid="optional",
               effects=EFFECT_CSUPP | EFFECT_LBCC | EFFECT_NCC | EFFECT_NIC)
def format_nvm(ctrl: "Controller", cmd: Command) -> None:
    dw10 = cmd.cdw10
    lbaf = (dw10 & 0xF) | (((dw10 >> 12) & 0x3) << 4)
    mset = (dw10 >> 4) & 1
    pi = (dw10 >> 5) & 0x7
    ses = (dw10 >> 9) & 0x7
    if ses or pi or mset:
        raise NvmeError(Status.INVALID_FIELD)
    if cmd.nsid == BROADCAST_NSID:
        targets = [ctrl.namespaces[n] for n in sorted(ctrl.namespaces)]
    elif cmd.ns is not None:
        targets = [cmd.ns]
    else:
        raise NvmeError(Status.INVALID_NSID)
    for ns in targets:
        if not getattr(ns, "ready", True):
            raise NvmeError(Status.NS_NOT_READY, dnr=False)
    for ns in targets:
        try:
            ns.format(lbaf)
        except NvmeError:
            raise
        except (ValueError, IndexError):
            raise NvmeError(Status.INVALID_FORMAT) from None
