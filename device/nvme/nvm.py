"""NVM command set I/O handlers: Flush, Write, Read, Compare, Write Zeroes, DSM, Verify, Copy.

Each handler runs on the controller's IOThread with ``cmd.ns`` already looked
up (attached, active, ready). The order of checks follows QEMU's hw/nvme so
hosts see the same status for the same mistake: transfer size against MDTS
(Invalid Field), then the LBA range (LBA Out of Range), then the data pointer
(PRP/SGL statuses from ``ctrl.transfer``), then the I/O.

Data goes between guest memory and the backend without bounce buffers: Read
fills ``DataMap.views(write=True)`` with ``backend.readinto``, Write passes
``views(write=False)`` to ``backend.write``. Backend failures become media
errors (Unrecovered Read Error / Write Fault), never a Python exception.

The helpers (``rw_fields``, ``check_range``, ``check_mdts``, ``read_blocks``,
``write_blocks``) are public so a zoned command set can reuse them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nvshell.device.backends import BackendError
from nvshell.device.layout import Layout
from nvshell.device.nvme import nvm_meta
# Importing it registers Write Uncorrectable in the NVM table, beside the others.
from nvshell.device.nvme import nvm_uncorrectable as unc
from nvshell.device.nvme.admin_smart_ns import count_read, count_write
from nvshell.device.nvme.commands import EFFECT_LBCC, NVM, Command
from nvshell.device.nvme.spec import BROADCAST_NSID, NvmOpcode, mdts_bytes
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.context import ControllerContext, Namespace


CDW12_FUA = 1 << 30
CDW12_DEAC = 1 << 25
DSM_ATTR_AD = 1 << 2

#: Dataset Management range (16 bytes).
DSM_RANGE = Layout("DsmRange", [("cattr", "I"), ("nlb", "I"), ("slba", "Q")])
#: Copy source range entry, descriptor format 0 (32 bytes): for the 16b guard (or no PI).
_COPY_F0_FIELDS = [(8, "slba", "Q"), (16, "nlb", "H"), (20, "eilbrt", "I"), (24, "elbat", "H"), (26, "elbatm", "H")]
COPY_RANGE_F0 = Layout("CopySourceRangeF0", _COPY_F0_FIELDS, size=32)
#: Descriptor format 1 (40 bytes): for the 64b guard; bytes 26..35 are the storage tag
#: and reference tag (big-endian, the 48-bit reference tag in the last six bytes).
_COPY_F1_FIELDS = [(8, "slba", "Q"), (16, "nlb", "H"), (30, "eilbrt", "6s"), (36, "elbat", "H"),
                   (38, "elbatm", "H")]
COPY_RANGE_F1 = Layout("CopySourceRangeF1", _COPY_F1_FIELDS, size=40)
#: Formats 2 and 3: formats 0 and 1 with the source namespace (SNSID) in bytes 3:0, for a copy
#: between namespaces (enabled per format by the host: Host Behavior Support CDFE).
COPY_RANGE_F2 = Layout("CopySourceRangeF2", [(0, "snsid", "I"), *_COPY_F0_FIELDS], size=32)
COPY_RANGE_F3 = Layout("CopySourceRangeF3", [(0, "snsid", "I"), *_COPY_F1_FIELDS], size=40)
#: Descriptor formats this device takes: layout, the guard format they belong to, and whether
#: they name a source namespace (OCFS bits 0..3).
COPY_FORMATS = {0: (COPY_RANGE_F0, 0, False), 1: (COPY_RANGE_F1, 2, False),
                2: (COPY_RANGE_F2, 0, True), 3: (COPY_RANGE_F3, 2, True)}
#: Host Behavior Support: Copy Descriptor Formats Enable, bit N enables format N (bytes 5:4).
HBS_CDFE_OFFSET = 4

#: Verify reads the range in pieces of this size (it is not bounded by MDTS).
VERIFY_CHUNK = 1 << 20
#: Ranges one Dataset Management command may carry: Identify DMRL (a byte, so at
#: most 255; the 256th range NR allows is refused).
DSM_MAX_RANGES = 255


# ------------------------------------------------------------------ helpers
def rw_fields(cmd: Command) -> tuple[int, int]:
    """(SLBA, NLB 1-based) of a Read/Write-style command."""
    return (cmd.cdw11 << 32) | cmd.cdw10, (cmd.cdw12 & 0xFFFF) + 1


def check_range(ns: "Namespace", slba: int, nlb: int) -> None:
    if slba + nlb > ns.nlbas:
        raise NvmeError(Status.LBA_OUT_OF_RANGE, msg=f"LBA {slba:#x}+{nlb} beyond {ns.nlbas:#x}")


def check_mdts(ctrl: "ControllerContext", nbytes: int) -> None:
    limit = mdts_bytes(ctrl.config.mdts)
    if limit and nbytes > limit:
        raise NvmeError(Status.INVALID_FIELD, msg=f"transfer of {nbytes} bytes exceeds MDTS ({limit})")


def _read_error(exc: BackendError) -> NvmeError:
    return NvmeError(Status.UNRECOVERED_READ_ERROR, msg=str(exc))


def _write_error(exc: BackendError) -> NvmeError:
    return NvmeError(Status.WRITE_FAULT, msg=str(exc))


def read_blocks(ns: "Namespace", offset: int, data: Any) -> None:
    """Backend -> guest: fill every view of ``data`` (a DataMap) from byte ``offset``."""
    readinto = ns.backend.readinto
    try:
        for view in data.views(True):
            readinto(offset, view)
            offset += len(view)
    except BackendError as exc:
        raise _read_error(exc) from None


def write_blocks(ns: "Namespace", offset: int, data: Any) -> None:
    """Guest -> backend: store every view of ``data`` (a DataMap) at byte ``offset``."""
    write = ns.backend.write
    try:
        for view in data.views(False):
            write(offset, view)
            offset += len(view)
    except BackendError as exc:
        raise _write_error(exc) from None


def flush_ns(ns: "Namespace") -> None:
    try:
        ns.backend.flush()
    except BackendError as exc:
        raise _write_error(exc) from None


def make_durable(ctrl: "ControllerContext", cmd: Command, ns: "Namespace") -> None:
    """After a write: with FUA, or with the volatile write cache turned off (Set
    Features 06h), the data must be on stable storage before the CQE."""
    if cmd.cdw12 & CDW12_FUA or not ctrl.features.volatile_wc:
        flush_ns(ns)


# ------------------------------------------------------------------ handlers
@NVM.command(NvmOpcode.FLUSH, nsid="optional")
def flush(ctrl: "ControllerContext", cmd: Command) -> object:
    """Flush one namespace, or every attached one for NSID FFFFFFFFh. A file backend's
    fdatasync runs off the IOThread (``ctrl.offload``)."""
    if cmd.nsid == BROADCAST_NSID:
        namespaces = list(ctrl.namespaces.values())
        if any(ns.backend.blocking for ns in namespaces):
            return ctrl.offload(cmd, lambda: [flush_ns(ns) for ns in namespaces])
        for ns in namespaces:
            flush_ns(ns)
        return None
    ns = cmd.ns
    if ns is None:
        raise NvmeError(Status.INVALID_NSID, msg=f"flush of nsid {cmd.nsid}")
    if ns.backend.blocking:
        return ctrl.offload(cmd, lambda: flush_ns(ns))
    flush_ns(ns)
    return None


def map_blocks(ctrl: "ControllerContext", cmd: Command) -> tuple[Any, int, int, Any]:
    """The checks every data-moving block command makes, in QEMU's order (MDTS, LBA
    range, data pointer): ``(namespace, byte offset, byte count, DataMap)``.

    A one-range map is checked by the view that moves its data (``DataMap.lazy``); the
    metadata and worker-pool paths move data in pieces or later, so theirs is checked here."""
    ns = cmd.ns
    slba = (cmd.cdw11 << 32) | cmd.cdw10
    nlb = (cmd.cdw12 & 0xFFFF) + 1
    nbytes = nlb << ns.lbads
    if ns.ms:
        # Extended LBAs: the data pointer also carries the interleaved metadata (MDTS counts it).
        xfer = nvm_meta.transfer_length(ns, cmd, nlb)
        check_mdts(ctrl, xfer)
        check_range(ns, slba, nlb)
        data = ctrl.transfer(cmd, xfer)
        data.resolve()
        return ns, slba << ns.lbads, nbytes, data
    check_mdts(ctrl, nbytes)
    check_range(ns, slba, nlb)
    data = ctrl.transfer(cmd, nbytes)
    if ns.backend.blocking:
        data.resolve()
    return ns, slba << ns.lbads, nbytes, data


@NVM.command(NvmOpcode.WRITE, nsid="required", effects=EFFECT_LBCC, direction="from-host")
def write(ctrl: "ControllerContext", cmd: Command) -> object:
    ns, offset, nbytes, data = map_blocks(ctrl, cmd)
    # One guest range on an in-thread backend (every 4 KiB write): its view, taken before
    # anything changes, is both the data pointer's check and the buffer.
    view = None if ns.ms or ns.backend.blocking else data.single_view(False)
    ctrl.stats.add_write(nbytes, cmd)
    count_write(ns, nbytes)
    if unc.TRACKING:
        unc.written(ns, offset >> ns.lbads, nbytes >> ns.lbads)
    if view is not None:
        try:
            ns.backend.write(offset, view)
        except BackendError as exc:
            raise _write_error(exc) from None
    elif ns.ms:
        nvm_meta.write(ctrl, cmd, ns, offset >> ns.lbads, nbytes >> ns.lbads, data)
    elif ns.backend.blocking:               # a file: off the IOThread (device/nvme/offload.py)
        def work() -> None:
            write_blocks(ns, offset, data)
            make_durable(ctrl, cmd, ns)
        return ctrl.offload(cmd, work)
    else:
        write_blocks(ns, offset, data)
    make_durable(ctrl, cmd, ns)
    return None


@NVM.command(NvmOpcode.READ, nsid="required", direction="to-host")
def read(ctrl: "ControllerContext", cmd: Command) -> object:
    ns, offset, nbytes, data = map_blocks(ctrl, cmd)
    view = None if ns.ms or ns.backend.blocking else data.single_view(True)   # as in write
    if unc.ANY:
        unc.check_readable(ns, offset >> ns.lbads, nbytes >> ns.lbads)
    ctrl.stats.add_read(nbytes, cmd)
    count_read(ns, nbytes)
    if view is not None:
        try:
            ns.backend.readinto(offset, view)
        except BackendError as exc:
            raise _read_error(exc) from None
    elif ns.ms:
        nvm_meta.read(ctrl, cmd, ns, offset >> ns.lbads, nbytes >> ns.lbads, data)
    elif ns.backend.blocking:
        return ctrl.offload(cmd, lambda: read_blocks(ns, offset, data))
    else:
        read_blocks(ns, offset, data)
    return None


@NVM.command(NvmOpcode.COMPARE, nsid="required", direction="from-host")
def compare(ctrl: "ControllerContext", cmd: Command) -> None:
    """Compare host data with the media; Compare Failure on the first difference."""
    ns, offset, nbytes, data = map_blocks(ctrl, cmd)
    if unc.ANY:
        unc.check_readable(ns, offset >> ns.lbads, nbytes >> ns.lbads)
    if ns.ms:
        nvm_meta.compare(ctrl, cmd, ns, offset >> ns.lbads, nbytes >> ns.lbads, data)
        ctrl.stats.add_read(nbytes, cmd)
        return
    scratch = bytearray(min(nbytes, VERIFY_CHUNK))
    media = memoryview(scratch)
    try:
        for view in data.views(False):
            pos = 0
            while pos < len(view):
                n = min(len(view) - pos, len(media))
                ns.backend.readinto(offset, media[:n])
                if media[:n] != view[pos:pos + n]:
                    raise NvmeError(Status.COMPARE_FAILURE, msg=f"compare mismatch in LBA {offset >> ns.lbads:#x}")
                pos += n
                offset += n
    except BackendError as exc:
        raise _read_error(exc) from None
    ctrl.stats.add_read(nbytes, cmd)


@NVM.command(NvmOpcode.WRITE_ZEROES, nsid="required", effects=EFFECT_LBCC)
def write_zeroes(ctrl: "ControllerContext", cmd: Command) -> None:
    """Zero a range; with DEAC the blocks are deallocated (they read as zeroes: DLFEAT)."""
    ns = cmd.ns
    slba, nlb = rw_fields(cmd)
    check_range(ns, slba, nlb)
    offset, length = slba << ns.lbads, nlb << ns.lbads
    if ns.ms:  # first: it refuses PRCHK before anything changes
        nvm_meta.write_zeroes(cmd, ns, slba, nlb)
    try:
        if cmd.cdw12 & CDW12_DEAC:
            ns.backend.discard(offset, length)
        else:
            ns.backend.write_zeroes(offset, length)
    except BackendError as exc:
        raise _write_error(exc) from None
    make_durable(ctrl, cmd, ns)
    if unc.TRACKING:
        unc.written(ns, slba, nlb)


@NVM.command(NvmOpcode.DATASET_MANAGEMENT, nsid="required", effects=EFFECT_LBCC,
             direction="from-host")
def dataset_management(ctrl: "ControllerContext", cmd: Command) -> None:
    """Deallocate (AD) the listed ranges; the other attributes are hints we ignore."""
    ns = cmd.ns
    if not cmd.cdw11 & DSM_ATTR_AD:
        return
    nr = (cmd.cdw10 & 0xFF) + 1
    if nr > DSM_MAX_RANGES:
        raise NvmeError(Status.COMMAND_SIZE_LIMIT_EXCEEDED, msg=f"{nr} ranges > DMRL {DSM_MAX_RANGES}")
    raw = ctrl.transfer(cmd, nr * DSM_RANGE.size).from_guest()
    ranges = []
    for i in range(nr):
        r = DSM_RANGE.unpack(raw, i * DSM_RANGE.size)
        if r.nlb == 0:
            continue
        check_range(ns, r.slba, r.nlb)  # all checked before anything is deallocated
        ranges.append((r.slba << ns.lbads, r.nlb << ns.lbads))
    try:
        for offset, length in ranges:
            ns.backend.discard(offset, length)
            if ns.ms:
                nvm_meta.deallocate(ns, offset >> ns.lbads, length >> ns.lbads)
    except BackendError as exc:
        raise _write_error(exc) from None
    if not ctrl.features.volatile_wc:
        flush_ns(ns)
    if unc.TRACKING:
        for offset, length in ranges:
            unc.written(ns, offset >> ns.lbads, length >> ns.lbads)


@NVM.command(NvmOpcode.VERIFY, nsid="required")
def verify(ctrl: "ControllerContext", cmd: Command) -> None:
    """Check that the range is readable, and its protection information per PRCHK."""
    ns = cmd.ns
    slba, nlb = rw_fields(cmd)
    check_range(ns, slba, nlb)
    if unc.ANY:
        unc.check_readable(ns, slba, nlb)
    if ns.ms:
        nvm_meta.verify(cmd, ns, slba, nlb, VERIFY_CHUNK)
        return
    offset, length = slba << ns.lbads, nlb << ns.lbads
    scratch = memoryview(bytearray(min(length, VERIFY_CHUNK)))
    try:
        pos = 0
        while pos < length:
            n = min(length - pos, len(scratch))
            ns.backend.readinto(offset + pos, scratch[:n])
            pos += n
    except BackendError as exc:
        raise _read_error(exc) from None


def _copy_source(ctrl: Any, ns: Any, snsid: int) -> Any:
    """The source namespace of a format 2/3 range: attached to this controller, formatted like the
    destination (block size, metadata, protection), else Incompatible Namespace or Format."""
    src = ns if snsid == ns.nsid else ctrl.namespaces.get(snsid)
    if src is None or not getattr(src, "ready", True):
        raise NvmeError(Status.INCOMPATIBLE_NAMESPACE_OR_FORMAT, msg=f"copy source namespace {snsid} not attached")
    if src is not ns and (src.lba_size, src.ms, src.fmt.pi, src.fmt.pif, src.fmt.first) != \
            (ns.lba_size, ns.ms, ns.fmt.pi, ns.fmt.pif, ns.fmt.first):
        raise NvmeError(Status.INCOMPATIBLE_NAMESPACE_OR_FORMAT,
                        msg=f"copy source namespace {snsid} is formatted unlike namespace {ns.nsid}")
    return src


@NVM.command(NvmOpcode.COPY, nsid="required", effects=EFFECT_LBCC, direction="from-host")
def copy(ctrl: "ControllerContext", cmd: Command) -> None:
    """Simple Copy within the namespace: descriptor format 0 (16b guard or no PI) or 1 (64b guard)."""
    ns = cmd.ns
    sdlba = (cmd.cdw11 << 32) | cmd.cdw10
    nr = (cmd.cdw12 & 0xFF) + 1
    desc_format = (cmd.cdw12 >> 8) & 0xF
    if desc_format not in COPY_FORMATS:
        raise NvmeError(Status.INVALID_FIELD, msg=f"copy descriptor format {desc_format} not supported")
    layout, pif, cross = COPY_FORMATS[desc_format]
    if cross:
        hbs = ctrl.features.host_behavior
        cdfe = int.from_bytes(hbs[HBS_CDFE_OFFSET:HBS_CDFE_OFFSET + 2], "little")
        if not cdfe & (1 << desc_format):
            raise NvmeError(Status.INVALID_FIELD, msg=f"copy descriptor format {desc_format} not enabled (CDFE)")
    if pif != ns.fmt.pif:
        raise NvmeError(Status.INVALID_FORMAT, msg=f"copy descriptor format {desc_format} does not match "
                                                   f"the namespace's guard format (PIF {ns.fmt.pif})")
    if nr > ns.msrc:
        raise NvmeError(Status.COMMAND_SIZE_LIMIT_EXCEEDED, msg=f"{nr} source ranges > MSRC {ns.msrc}")
    raw = ctrl.transfer(cmd, nr * layout.size).from_guest()
    sources = []
    total = 0
    for i in range(nr):
        r = layout.unpack(raw, i * layout.size)
        nlb = r.nlb + 1
        if nlb > ns.mssrl:
            raise NvmeError(Status.COMMAND_SIZE_LIMIT_EXCEEDED, msg=f"source range of {nlb} blocks > MSSRL")
        total += nlb
        if total > ns.mcl:
            raise NvmeError(Status.COMMAND_SIZE_LIMIT_EXCEEDED, msg=f"copy of {total}+ blocks > MCL {ns.mcl}")
        src = _copy_source(ctrl, ns, r.snsid) if cross else ns
        check_range(src, r.slba, nlb)
        eilbrt = int.from_bytes(r.eilbrt, "big") if isinstance(r.eilbrt, bytes) else r.eilbrt
        sources.append((src, r.slba, nlb, eilbrt, r.elbat, r.elbatm))
    check_range(ns, sdlba, total)
    if unc.ANY:
        for src, slba, nlb, *_ in sources:
            unc.check_readable(src, slba, nlb)
    # Read every source first: the destination may overlap a source range.
    buf = bytearray(total << ns.lbads)
    view = memoryview(buf)
    pos = 0
    try:
        for src, slba, nlb, *_ in sources:
            n = nlb << ns.lbads
            src.backend.readinto(slba << ns.lbads, view[pos:pos + n])
            pos += n
    except BackendError as exc:
        raise _read_error(exc) from None
    if ns.ms:  # checks the sources' PI and builds the destination's before any write
        nvm_meta.copy(cmd, ns, sources, view, sdlba)
    try:
        ns.backend.write(sdlba << ns.lbads, view)
    except BackendError as exc:
        raise _write_error(exc) from None
    make_durable(ctrl, cmd, ns)
    if unc.TRACKING:
        unc.written(ns, sdlba, total)
