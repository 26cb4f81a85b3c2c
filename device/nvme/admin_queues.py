"""Create / Delete I/O Submission and Completion Queue (admin 00h, 01h, 04h, 05h), Doorbell Buffer Config (7Ch).

Checks follow the NVMe base spec's status codes in the order QEMU's hw/nvme
applies them, so a host (or a compliance suite) sees the status it expects:
QID 0, above the allocated count (max-ioqpairs) or in use -> Invalid Queue
Identifier, size 0 or above CAP.MQES -> Invalid Queue Size, base not page
aligned -> PRP Offset Invalid, not physically contiguous -> Invalid Field,
vector beyond the MSI-X table (or nonzero while MSI-X is off: INTx and MSI have one
vector, as in QEMU) -> Invalid Interrupt Vector, Delete CQ with SQs
-> Invalid Queue Deletion.

Create I/O SQ's CQID is read as the spec's field description says (and as
SPDK's target splits it): 0 or above the allocated count is Invalid Queue
Identifier; Completion Queue Invalid is kept for a valid identifier whose CQ
does not exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.spec import AdminOpcode
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller


def _valid_io_qid(ctrl: "Controller", qid: int) -> bool:
    """An identifier the host may use for an I/O queue: 1..allocated (max-ioqpairs)."""
    return 0 < qid <= ctrl.config.max_ioqpairs


def _check_common(ctrl: "Controller", qid: int, qsize: int, base: int, exists: bool) -> None:
    if not _valid_io_qid(ctrl, qid) or exists:
        raise NvmeError(Status.INVALID_QID)
    if not qsize or qsize > ctrl.config.mqes:
        raise NvmeError(Status.INVALID_QUEUE_SIZE)
    if not base or base & (ctrl.page_size - 1):
        raise NvmeError(Status.PRP_OFFSET_INVALID)


def _check_mapped(ctrl: "Controller", base: int, nbytes: int) -> None:
    if not ctrl.mapped(base, nbytes):
        raise NvmeError(Status.DATA_TRANSFER_ERROR)


@ADMIN.command(AdminOpcode.CREATE_IO_CQ)
def create_io_cq(ctrl: "Controller", cmd: Command) -> None:
    qid = cmd.cdw10 & 0xFFFF
    qsize = cmd.cdw10 >> 16          # 0-based
    pc = cmd.cdw11 & 1
    ien = bool(cmd.cdw11 & 2)
    vector = cmd.cdw11 >> 16
    _check_common(ctrl, qid, qsize, cmd.dptr1, ctrl.cq(qid) is not None)
    if vector >= ctrl.config.max_intr_vectors:
        raise NvmeError(Status.INVALID_INTERRUPT_VECTOR)
    if vector and not ctrl.interrupts.msix:
        # INTx and MSI have one vector (as QEMU's nvme: nonzero only with MSI-X enabled).
        raise NvmeError(Status.INVALID_INTERRUPT_VECTOR)
    if not pc:
        raise NvmeError(Status.INVALID_FIELD)
    _check_mapped(ctrl, cmd.dptr1, (qsize + 1) * 16)
    ctrl.create_cq(qid, cmd.dptr1, qsize + 1, ien, vector)


@ADMIN.command(AdminOpcode.CREATE_IO_SQ)
def create_io_sq(ctrl: "Controller", cmd: Command) -> None:
    qid = cmd.cdw10 & 0xFFFF
    qsize = cmd.cdw10 >> 16
    pc = cmd.cdw11 & 1
    qprio = (cmd.cdw11 >> 1) & 3     # accepted, ignored: round robin only (CAP.AMS = 0)
    cqid = cmd.cdw11 >> 16
    if not _valid_io_qid(ctrl, qid) or ctrl.sq(qid) is not None:
        raise NvmeError(Status.INVALID_QID)
    if not _valid_io_qid(ctrl, cqid):
        raise NvmeError(Status.INVALID_QID)
    cq = ctrl.cq(cqid)
    if cq is None:
        raise NvmeError(Status.INVALID_CQ)
    _check_common(ctrl, qid, qsize, cmd.dptr1, False)
    if not pc:
        raise NvmeError(Status.INVALID_FIELD)
    _check_mapped(ctrl, cmd.dptr1, (qsize + 1) * 64)
    ctrl.create_sq(qid, cmd.dptr1, qsize + 1, cq, qprio)


@ADMIN.command(AdminOpcode.DELETE_IO_SQ)
def delete_io_sq(ctrl: "Controller", cmd: Command) -> None:
    qid = cmd.cdw10 & 0xFFFF
    if not _valid_io_qid(ctrl, qid) or ctrl.sq(qid) is None:
        raise NvmeError(Status.INVALID_QID)
    ctrl.delete_sq(qid)


@ADMIN.command(AdminOpcode.DELETE_IO_CQ)
def delete_io_cq(ctrl: "Controller", cmd: Command) -> None:
    qid = cmd.cdw10 & 0xFFFF
    cq = ctrl.cq(qid) if _valid_io_qid(ctrl, qid) else None
    if cq is None:
        raise NvmeError(Status.INVALID_QID)
    if cq.sqs:
        raise NvmeError(Status.INVALID_QUEUE_DELETION)
    ctrl.delete_cq(qid)


@ADMIN.command(AdminOpcode.DOORBELL_BUFFER_CONFIG)
def doorbell_buffer_config(ctrl: "Controller", cmd: Command) -> None:
    """PRP1 = Shadow Doorbell buffer, PRP2 = EventIdx buffer, each page aligned and in
    guest memory (else Invalid Field). Applies to existing and future I/O queues until
    the controller resets."""
    if cmd.psdt:
        raise NvmeError(Status.INVALID_FIELD)
    ctrl.configure_doorbell_buffers(cmd.dptr1, cmd.dptr2)
