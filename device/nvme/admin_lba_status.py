"""Get LBA Status (admin 86h, OACS bit 9) and the LBA Status Information log page (0Eh).

Both report the LBAs ``nvm_uncorrectable`` tracks as potentially unrecoverable:
those Write Uncorrectable marked and those a fault rule answered with a media
error. Nothing goes bad on its own here, so a "scan" (ATYPE 10h) finds exactly
what is tracked (ATYPE 11h): the two answer the same descriptors.

Get LBA Status: SLBA (CDW10-11), MNDW (CDW12, 0's based dwords of data), RL
(CDW13 15:0, blocks; 0 = to the end of the namespace), ATYPE (CDW13 31:24).
The data is an 8-byte header (descriptor count, completion condition) and
16-byte LBA Status Descriptors; CMPC 1h says MNDW ran out before the range
did, 2h that the whole range was examined.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.layout import Layout
from nvshell.device.nvme import admin_log
from nvshell.device.nvme import nvm_uncorrectable as unc
from nvshell.device.nvme.commands import ADMIN, Command
from nvshell.device.nvme.spec import AdminOpcode, LogPage
from nvshell.device.nvme.status import NvmeError, Status

ATYPE_SCAN_UNTRACKED = 0x10
ATYPE_TRACKED = 0x11
CMPC_MNDW = 0x1
CMPC_RANGE = 0x2

LBA_STATUS_HEADER = Layout("LbaStatusHeader", [(0, "nlsd", "I"), (4, "cmpc", "B")], size=8)
LBA_STATUS_DESCRIPTOR = Layout("LbaStatusDescriptor", [(0, "dslba", "Q"), (8, "nlb", "I"), (13, "status", "B")],
                               size=16)
#: LBA Status Information log (0Eh): header, then one element per namespace with
#: its range descriptors.
LBA_STATUS_LOG_HEADER = Layout("LbaStatusLogHeader", [
    (0, "lslplen", "I"), (4, "nlslne", "I"), (8, "estulb", "I"), (14, "lsgc", "H"),
], size=16)
LBA_STATUS_NS_ELEMENT = Layout("LbaStatusNsElement", [(0, "neid", "I"), (4, "nlrd", "I"), (8, "ratype", "B")],
                               size=16)
LBA_RANGE_DESCRIPTOR = Layout("LbaRangeDescriptor", [(0, "rslba", "Q"), (8, "rnlb", "I")], size=16)
#: A descriptor's NLB is 32 bits: longer ranges are split.
MAX_DESCRIPTOR_NLB = 0xFFFFFFFF
#: Nominal size of log 0Eh for the offset check (it grows with the ranges).
LOG_MAX = 1 << 20


def _pieces(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for start, count in ranges:
        while count:
            n = min(count, MAX_DESCRIPTOR_NLB)
            out.append((start, n))
            start += n
            count -= n
    return out


@ADMIN.command(AdminOpcode.GET_LBA_STATUS, nsid="required", direction="to-host")
def get_lba_status(ctrl: Any, cmd: Command) -> None:
    ns = cmd.ns
    slba = cmd.cdw10 | (cmd.cdw11 << 32)
    mndw = cmd.cdw12
    rl = cmd.cdw13 & 0xFFFF
    atype = cmd.cdw13 >> 24
    if atype not in (ATYPE_SCAN_UNTRACKED, ATYPE_TRACKED):
        raise NvmeError(Status.INVALID_FIELD, msg=f"ATYPE {atype:#x}")
    if slba >= ns.nlbas:
        raise NvmeError(Status.LBA_OUT_OF_RANGE)
    length = (mndw + 1) * 4
    xfer = ctrl.transfer(cmd, length, allow_sgl=False)      # within MDTS before any work
    count = ns.nlbas - slba if rl == 0 else min(rl, ns.nlbas - slba)
    found = _pieces(unc.tracked(ns).within(slba, count))
    room = max(0, (length - LBA_STATUS_HEADER.size) // LBA_STATUS_DESCRIPTOR.size)
    shown = found[:room]
    cmpc = CMPC_MNDW if len(found) > room else CMPC_RANGE
    data = LBA_STATUS_HEADER.pack(nlsd=len(shown), cmpc=cmpc) + b"".join(
        LBA_STATUS_DESCRIPTOR.pack(dslba=s, nlb=n, status=0) for s, n in shown)
    xfer.to_guest(data[:length] + bytes(max(0, length - len(data))))


def lba_status_log(ctrl: Any, cmd: Command) -> bytes:
    """Log 0Eh: every attached namespace with tracked LBAs, its ranges (ATYPE 11h)."""
    elements = []
    estimate = 0
    for nsid in sorted(ctrl.namespaces):
        ns = ctrl.namespaces[nsid]
        ranges = _pieces(list(unc.tracked(ns)))
        if not ranges:
            continue
        estimate += sum(n for _, n in ranges)
        elements.append(LBA_STATUS_NS_ELEMENT.pack(neid=nsid, nlrd=len(ranges), ratype=ATYPE_TRACKED)
                        + b"".join(LBA_RANGE_DESCRIPTOR.pack(rslba=s, rnlb=n) for s, n in ranges))
    body = b"".join(elements)
    header = LBA_STATUS_LOG_HEADER.pack(lslplen=LBA_STATUS_LOG_HEADER.size + len(body), nlslne=len(elements),
                                        estulb=min(estimate, 0xFFFFFFFF), lsgc=unc.generation)
    return header + body


admin_log.register(LogPage.LBA_STATUS, "lba-status-information", lba_status_log, LOG_MAX)

