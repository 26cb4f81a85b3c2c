"""Asynchronous Event Request (0Ch) and Abort (08h).

An AER is the one command that is normally outstanding for a long time: the
controller keeps it (DEFERRED) and completes it when an event is posted (see
``Controller.post_async_event``). Abort can only catch commands that are still
held like that; everything else has completed synchronously before the Abort
is even fetched, so the answer is "not aborted" (DW0 bit 0 = 1), as the spec
allows.

Abort's SQID gets the queue-identifier reading used for the queue commands
(admin_queues): an identifier beyond the allocated count (max-ioqpairs, e.g.
0xFFFF) is Invalid Queue Identifier; an allocated identifier whose SQ does not
exist is Invalid Field in Command, as QEMU's hw/nvme answers it (nvme_abort's
nvme_check_sqid). Both with DNR and DW0 bit 0 set (nothing was aborted). SQID 0
is the admin SQ and always exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller


@ADMIN.command(AdminOpcode.ASYNC_EVENT_REQUEST)
def async_event_request(ctrl: "Controller", cmd: Command) -> object:
    return ctrl.queue_aer(cmd)


@ADMIN.command(AdminOpcode.ABORT)
def abort(ctrl: "Controller", cmd: Command) -> None:
    sqid = cmd.cdw10 & 0xFFFF
    cid = cmd.cdw10 >> 16
    cmd.result = 1                      # not aborted
    if sqid > ctrl.config.max_ioqpairs:
        raise NvmeError(Status.INVALID_QID, result=1)
    sq = ctrl.sq(sqid)
    if sq is None:
        raise NvmeError(Status.INVALID_FIELD, result=1)
    target = sq.deferred.get(cid)
    if target is None or target is cmd:
        return
    if ctrl.complete(target, Status.ABORT_REQUESTED):
        cmd.result = 0
