"""Format NVM (80h): change a namespace's LBA format, which also erases it.

The namespace does the work (``ns.format(lbaf, mset=, pi=, pil=, ses=)``);
this handler decodes CDW10 (LBAF with its upper bits 13:12, MSET, PI, PIL, SES)
and picks the targets: NSID FFFFFFFFh formats every namespace attached to this
controller. SES 1 (user data erase) is offered; SES 2 (cryptographic erase) is
not (FNA.CES is 0), so it is Invalid Field. A format the namespace cannot take
(unknown LBAF, PI without room in the metadata, MSET without metadata) is
Invalid Format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device.nvme.commands import ADMIN, EFFECT_CSE_SINGLE, EFFECT_LBCC, EFFECT_NCC, Command
from nvshell.device.nvme import admin_pel, admin_selftest
from nvshell.device.nvme import nvm_uncorrectable as unc
from nvshell.device.nvme.spec import BROADCAST_NSID, AdminOpcode
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller



@ADMIN.command(AdminOpcode.FORMAT_NVM, nsid="optional",
               effects=EFFECT_LBCC | EFFECT_NCC | EFFECT_CSE_SINGLE)
def format_nvm(ctrl: "Controller", cmd: Command) -> None:
    dw10 = cmd.cdw10
    lbaf = (dw10 & 0xF) | (((dw10 >> 12) & 0x3) << 4)
    mset = (dw10 >> 4) & 1
    pi = (dw10 >> 5) & 0x7
    pil = (dw10 >> 8) & 1
    ses = (dw10 >> 9) & 0x7
    if ses > 1:
        raise NvmeError(Status.INVALID_FIELD, msg=f"secure erase setting {ses} not supported")
    if pi > 3:
        raise NvmeError(Status.INVALID_FIELD, msg=f"protection information type {pi}")
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
        admin_pel.format_start(ctrl, ns.nsid, dw10)
        try:
            ns.format(lbaf, mset=mset, pi=pi, pil=pil, ses=ses)
        except NvmeError as exc:
            admin_pel.format_completion(ctrl, ns.nsid, exc.status)
            raise
        except (ValueError, IndexError):
            admin_pel.format_completion(ctrl, ns.nsid, Status.INVALID_FORMAT)
            raise NvmeError(Status.INVALID_FORMAT) from None
        admin_pel.format_completion(ctrl, ns.nsid, 0)
        unc.erased(ns)          # every LBA has new content: nothing uncorrectable or tracked
        admin_selftest.namespace_formatted(ctrl, ns.nsid)
        # The other controllers' hosts see a namespace whose format changed under them.
        if ctrl.subsystem is not None:
            ctrl.subsystem.namespace_changed(ns.nsid, except_ctrl=ctrl)
