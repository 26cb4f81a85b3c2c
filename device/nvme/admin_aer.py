"""Asynchronous Event Request (0Ch) and Abort (08h).

An AER is the one command that is normally outstanding for a long time: the
controller keeps it (DEFERRED) and completes it when an event is posted (see
``Controller.post_async_event``). Abort can only catch commands that are still
held like that; everything else has completed synchronously before the Abort
is even fetched, so the answer is "not aborted" (DW0 bit 0 = 1), as the spec
allows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.nvme.status import Status

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
    sq = ctrl.sq(sqid)
    if sq is None:
        return
    target = sq.deferred.get(cid)
    if target is None or target is cmd:
        return
    if ctrl.complete(target, Status.ABORT_REQUESTED):
        cmd.result = 0
