"""The NVM data path for namespaces with metadata: extended LBAs or a separate
metadata buffer, and end-to-end protection (PRACT insert/strip, PRCHK checks).

``nvm.py`` hands a command here when its namespace has metadata (``ns.ms``);
namespaces without metadata never enter this module.

Streaming, no bounce buffer: the data still goes straight between the guest's
memoryviews and the backend. Blocks are walked over those views (``blocks``),
a block that straddles two data segments being a list of two views; guard CRCs
are computed on the guest memory while it is being moved. Only the metadata
(``ms`` bytes per block: 1/64 of the data or less) is gathered in a buffer,
because it is stored apart from the data.

Order of work on a write: every block is checked (or its PI generated) first,
then data and metadata are stored, so a failing check leaves the media as it
was. A check failure completes the command with the spec's status (Guard /
Application Tag / Reference Tag Check Error) and the error log entry names the
failing LBA (``cmd.extra["error_lba"]``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from nvshell.device.backends import BackendError
from nvshell.device import trace as T
from nvshell.device.nvme.dataxfer import PSDT_SGL_MPTR_SGL, map_metadata
from nvshell.device.nvme.dif import PRCHK_MASK, PRINFO_PRACT, PiError, Protection, command_reftag
from nvshell.device.nvme.status import NvmeError, Status

PRINFO_SHIFT = 26


def prinfo(cmd: Any) -> int:
    """PRINFO of a Read/Write/Compare/Verify/Write Zeroes (CDW12 bits 29:26)."""
    return (cmd.cdw12 >> PRINFO_SHIFT) & 0xF


class PiFields:
    """The protection fields of one command: PRINFO, ILBRT (CDW14 [+ CDW3]), LBAT/LBATM (CDW15)."""

    __slots__ = ("prinfo", "prchk", "pract", "reftag", "apptag", "appmask")

    def __init__(self, prot: Protection, cmd: Any, info: int | None = None):
        self.prinfo = prinfo(cmd) if info is None else info
        self.prchk = self.prinfo & PRCHK_MASK
        self.pract = bool(self.prinfo & PRINFO_PRACT)
        self.reftag = command_reftag(prot.pif, cmd.cdw3, cmd.cdw14)
        self.apptag = cmd.cdw15 & 0xFFFF
        self.appmask = cmd.cdw15 >> 16


def strips(ns: Any, cmd: Any) -> bool:
    """PRACT with metadata that is only the PI tuple: no metadata crosses the bus."""
    prot = ns.protection
    return prot is not None and prot.strips(prinfo(cmd))


def transfer_length(ns: Any, cmd: Any, nlb: int) -> int:
    """Bytes the data pointer describes: data, plus interleaved metadata for extended LBAs."""
    n = nlb << ns.lbads
    if ns.fmt.extended and not strips(ns, cmd):
        n += nlb * ns.ms
    return n


# ------------------------------------------------------------------ walking blocks
def blocks(views: Iterable[memoryview], size: int) -> Iterator[list[memoryview]]:
    """Cut a stream of views into blocks of ``size`` bytes, each a list of views (one, unless it straddles)."""
    pending: list[memoryview] = []
    need = size
    for v in views:
        pos, n = 0, len(v)
        if pending:
            take = min(need, n)
            pending.append(v[:take])
            pos, need = take, need - take
            if need:
                continue
            yield pending
            pending, need = [], size
        while n - pos >= size:
            yield [v[pos:pos + size]]
            pos += size
        if pos < n:
            pending, need = [v[pos:]], size - (n - pos)
    if pending:
        raise NvmeError(Status.INTERNAL_ERROR, msg="transfer is not a whole number of blocks")


def split(pieces: list[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``n`` bytes of a block's views, and the rest."""
    head: list[memoryview] = []
    for i, p in enumerate(pieces):
        if len(p) <= n:
            head.append(p)
            n -= len(p)
            if not n:
                return head, pieces[i + 1:]
        else:
            head.append(p[:n])
            return head, [p[n:]] + pieces[i + 1:]
    return head, []


def _gather(pieces: list[memoryview], out: memoryview) -> None:
    pos = 0
    for p in pieces:
        out[pos:pos + len(p)] = p
        pos += len(p)


def _scatter(src: memoryview, pieces: list[memoryview]) -> None:
    pos = 0
    for p in pieces:
        p[:] = src[pos:pos + len(p)]
        pos += len(p)


def _fail(cmd: Any, slba: int, err: PiError) -> NvmeError:
    cmd.extra["error_lba"] = slba + err.index
    return NvmeError(err.status, msg=f"LBA {slba + err.index:#x}: {err}")


def _media(exc: BackendError, write: bool) -> NvmeError:
    return NvmeError(Status.WRITE_FAULT if write else Status.UNRECOVERED_READ_ERROR, msg=str(exc))


def _metadata_map(ctrl: Any, cmd: Any, length: int) -> Any:
    """The separate metadata buffer: MPTR as a contiguous buffer, or as a metadata SGL (PSDT 10b)."""
    dmap = map_metadata(ctrl.memory, cmd, length)
    if cmd.psdt == PSDT_SGL_MPTR_SGL and length > 0:
        T.NVME_METADATA_SGL.emit(ctrl=ctrl.name, qid=cmd.sqid, cid=cmd.cid, nsid=cmd.nsid, length=length,
                                 pieces=len(dmap.segments))
    return dmap


def _command_pi(ns: Any, cmd: Any, slba: int) -> tuple[Protection | None, PiFields | None, bool]:
    """The namespace's protection, the command's PI fields (checked against the command's own
    rules) and whether PRACT strips the metadata: what Read, Write and Compare start from."""
    prot = ns.protection
    pi = PiFields(prot, cmd) if prot is not None else None
    _check_command(prot, pi, slba)
    return prot, pi, pi is not None and prot is not None and prot.strips(pi.prinfo)


def _check_command(prot: Protection | None, pi: PiFields | None, slba: int) -> None:
    if prot is None or pi is None:
        return
    status = prot.check_command(pi.prinfo, slba, pi.reftag)
    if status is not None:
        raise NvmeError(status, msg=f"PRINFO {pi.prinfo:#x} with ILBRT {pi.reftag:#x} at LBA {slba:#x}")


def check_blocks(prot: Protection, pi: PiFields, cmd: Any, slba: int, data_blocks: Iterable[list[memoryview]],
                 md: memoryview, ms: int) -> None:
    """PRCHK over blocks (data views per block) and their metadata ``md``."""
    if not pi.prchk:
        return
    try:
        prot.check_run(data_blocks, md, pi.prchk, pi.apptag, pi.appmask, pi.reftag)
    except PiError as err:
        raise _fail(cmd, slba, err) from None


# ------------------------------------------------------------------ read / write
def read(ctrl: Any, cmd: Any, ns: Any, slba: int, nlb: int, data: Any) -> None:
    """Read with metadata: data to the data pointer (interleaved for extended LBAs), metadata to MPTR."""
    ms, lba = ns.ms, ns.lba_size
    prot, pi, stripped = _command_pi(ns, cmd, slba)
    md = memoryview(bytearray(nlb * ms))
    offset = slba << ns.lbads
    try:
        ns.metadata.read(slba, md)
        if ns.fmt.extended and not stripped:
            readinto = ns.backend.readinto
            data_blocks = []
            for i, pieces in enumerate(blocks(data.views(True), lba + ms)):
                dpieces, mpieces = split(pieces, lba)
                for p in dpieces:
                    readinto(offset, p)
                    offset += len(p)
                _scatter(md[i * ms:(i + 1) * ms], mpieces)
                data_blocks.append(dpieces)
        else:
            readinto = ns.backend.readinto
            for view in data.views(True):
                readinto(offset, view)
                offset += len(view)
            data_blocks = None
    except BackendError as exc:
        raise _media(exc, False) from None
    if prot is not None and pi is not None and pi.prchk:
        if data_blocks is None:
            data_blocks = list(_read_side_blocks(ns, slba, nlb, data))
        check_blocks(prot, pi, cmd, slba, data_blocks, md, ms)
    if not ns.fmt.extended and not stripped:
        _metadata_map(ctrl, cmd, nlb * ms).to_guest(md)


def _read_side_blocks(ns: Any, slba: int, nlb: int, data: Any) -> Iterator[list[memoryview]]:
    """The blocks a read just delivered, for checking: the guest views, or (bit buckets
    dropped some) the blocks read again from the backend one at a time."""
    if not data.has_bit_bucket:
        yield from blocks(data.views(True), ns.lba_size)
        return
    buf = memoryview(bytearray(ns.lba_size))
    for i in range(nlb):
        ns.backend.readinto((slba + i) << ns.lbads, buf)
        yield [buf]


def write(ctrl: Any, cmd: Any, ns: Any, slba: int, nlb: int, data: Any) -> None:
    """Write with metadata: check or generate PI for every block, then store data and metadata."""
    ms, lba = ns.ms, ns.lba_size
    prot, pi, stripped = _command_pi(ns, cmd, slba)
    md = memoryview(bytearray(nlb * ms))
    extended = ns.fmt.extended and not stripped
    if extended:
        data_blocks: list[list[memoryview]] = []
        for i, pieces in enumerate(blocks(data.views(False), lba + ms)):
            dpieces, mpieces = split(pieces, lba)
            _gather(mpieces, md[i * ms:(i + 1) * ms])
            data_blocks.append(dpieces)
    else:
        if not stripped:
            md[:] = _metadata_map(ctrl, cmd, nlb * ms).from_guest()
        data_blocks = None  # type: ignore[assignment]
    if prot is not None and pi is not None:
        source = data_blocks if data_blocks is not None else blocks(data.views(False), lba)
        if pi.pract:
            reftag = pi.reftag
            for i, pieces in enumerate(source):
                prot.insert(pieces, md[i * ms:(i + 1) * ms], pi.apptag, reftag)
                reftag = prot.next_reftag(reftag)
        else:
            check_blocks(prot, pi, cmd, slba, source, md, ms)
    offset = slba << ns.lbads
    try:
        if extended:
            bwrite = ns.backend.write
            for dpieces in data_blocks:
                for p in dpieces:
                    bwrite(offset, p)
                    offset += len(p)
        else:
            bwrite = ns.backend.write
            for view in data.views(False):
                bwrite(offset, view)
                offset += len(view)
        ns.metadata.write(slba, md)
    except BackendError as exc:
        raise _media(exc, True) from None


def compare(ctrl: Any, cmd: Any, ns: Any, slba: int, nlb: int, data: Any) -> None:
    """Compare host data (and metadata unless stripped) with the media; stored PI checked per PRCHK."""
    ms, lba = ns.ms, ns.lba_size
    prot, pi, stripped = _command_pi(ns, cmd, slba)
    md = memoryview(bytearray(nlb * ms))
    scratch = memoryview(bytearray(lba))
    host_md = None
    try:
        ns.metadata.read(slba, md)
        if not ns.fmt.extended and not stripped:
            host_md = memoryview(_metadata_map(ctrl, cmd, nlb * ms).from_guest())
        size = lba + ms if ns.fmt.extended and not stripped else lba
        reftag = pi.reftag if pi is not None else 0
        for i, pieces in enumerate(blocks(data.views(False), size)):
            dpieces, mpieces = split(pieces, lba)
            ns.backend.readinto((slba + i) << ns.lbads, scratch)
            mine = md[i * ms:(i + 1) * ms]
            if prot is not None and pi is not None and pi.prchk:
                try:
                    prot.check([scratch], mine, pi.prchk, pi.apptag, pi.appmask, reftag, i)
                except PiError as err:
                    raise _fail(cmd, slba, err) from None
                reftag = prot.next_reftag(reftag)
            pos = 0
            for p in dpieces:
                if scratch[pos:pos + len(p)] != p:
                    raise NvmeError(Status.COMPARE_FAILURE, msg=f"compare mismatch in LBA {slba + i:#x}")
                pos += len(p)
            theirs = host_md[i * ms:(i + 1) * ms] if host_md is not None else (
                b"".join(bytes(p) for p in mpieces) if mpieces else None)
            if theirs is not None and bytes(theirs) != bytes(mine):
                raise NvmeError(Status.COMPARE_FAILURE, msg=f"metadata compare mismatch in LBA {slba + i:#x}")
    except BackendError as exc:
        raise _media(exc, False) from None


def verify(cmd: Any, ns: Any, slba: int, nlb: int, chunk: int) -> None:
    """Verify: read the range back and check its PI per PRCHK (nothing is transferred)."""
    prot = ns.protection
    pi = PiFields(prot, cmd) if prot is not None else None
    _check_command(prot, pi, slba)
    ms, lba = ns.ms, ns.lba_size
    per = max(1, chunk // lba)
    buf = memoryview(bytearray(per * lba))
    md = memoryview(bytearray(per * ms))
    reftag = pi.reftag if pi is not None else 0
    done = 0
    try:
        while done < nlb:
            n = min(per, nlb - done)
            ns.backend.readinto((slba + done) << ns.lbads, buf[:n * lba])
            ns.metadata.read(slba + done, md[:n * ms])
            if prot is not None and pi is not None and pi.prchk:
                for i in range(n):
                    try:
                        prot.check([buf[i * lba:(i + 1) * lba]], md[i * ms:(i + 1) * ms], pi.prchk,
                                   pi.apptag, pi.appmask, reftag, done + i)
                    except PiError as err:
                        raise _fail(cmd, slba, err) from None
                    reftag = prot.next_reftag(reftag)
            done += n
    except BackendError as exc:
        raise _media(exc, False) from None


def write_zeroes(cmd: Any, ns: Any, slba: int, nlb: int) -> None:
    """Metadata side of Write Zeroes (the data is zeroed by the caller).

    With PI, PRCHK must be clear (Invalid Protection Information); PRACT writes a
    tuple for the zeroed data (guard of zeroes, LBAT, ILBRT per block); without
    PRACT (or without PI) the metadata reads as unwritten (all ones) afterwards.
    """
    prot = ns.protection
    ms = ns.ms
    if prot is not None:
        pi = PiFields(prot, cmd)
        if pi.prchk:
            raise NvmeError(Status.INVALID_PROTECTION_INFORMATION, msg="Write Zeroes with PRCHK set")
        if pi.pract:
            _check_command(prot, pi, slba)
            block_md = memoryview(bytearray(ms))
            guard = prot.guard([bytes(ns.lba_size)], block_md)
            md = bytearray(nlb * ms)
            reftag = pi.reftag
            for i in range(nlb):
                start = i * ms + prot.offset
                md[start:start + prot.size] = prot.pack(guard, pi.apptag, reftag)
                reftag = prot.next_reftag(reftag)
            try:
                ns.metadata.write(slba, md)
            except BackendError as exc:
                raise _media(exc, True) from None
            return
    deallocate(ns, slba, nlb)


def deallocate(ns: Any, slba: int, nlb: int) -> None:
    if ns.metadata is None:
        return
    try:
        ns.metadata.deallocate(slba, nlb)
    except BackendError as exc:
        raise _media(exc, True) from None


# ------------------------------------------------------------------ copy
COPY_PRINFOR_SHIFT = 12


def copy(cmd: Any, ns: Any, sources: list[tuple[Any, int, int, int, int, int]], data: memoryview, sdlba: int) -> None:
    """Metadata side of Copy, after the source data was read into ``data``.

    ``sources`` are ``(source namespace, slba, nlb, eilbrt, elbat, elbatm)``. The sources' PI is checked
    per PRINFOR (CDW12 15:12) with each range's expected tags; the destination gets
    the metadata as read, with PI regenerated when PRINFOW (29:26) has PRACT (ILBRT
    CDW14, LBAT CDW15), or else checked per PRINFOW's PRCHK against ILBRT/LBAT/LBATM.
    """
    ms, lba = ns.ms, ns.lba_size
    total = sum(s[2] for s in sources)
    md = memoryview(bytearray(total * ms))
    prot = ns.protection
    pos = 0
    try:
        for src, slba, nlb, eilbrt, elbat, elbatm in sources:
            src.metadata.read(slba, md[pos * ms:(pos + nlb) * ms])
            if prot is not None:
                info = (cmd.cdw12 >> COPY_PRINFOR_SHIFT) & 0xF
                if info & PRCHK_MASK:
                    pi = _range_fields(prot, info, eilbrt, elbat, elbatm)
                    _check_command(prot, pi, slba)
                    check_blocks(prot, pi, cmd, slba, ([data[(pos + i) * lba:(pos + i + 1) * lba]] for i in range(nlb)),
                                 md[pos * ms:(pos + nlb) * ms], ms)
            pos += nlb
        if prot is not None:
            pi = PiFields(prot, cmd)
            _check_command(prot, pi, sdlba)
            dest_blocks = ([data[i * lba:(i + 1) * lba]] for i in range(total))
            if pi.pract:
                reftag = pi.reftag
                for i, pieces in enumerate(dest_blocks):
                    prot.insert(pieces, md[i * ms:(i + 1) * ms], pi.apptag, reftag)
                    reftag = prot.next_reftag(reftag)
            else:
                check_blocks(prot, pi, cmd, sdlba, dest_blocks, md, ms)
        ns.metadata.write(sdlba, md)
    except BackendError as exc:
        raise _media(exc, True) from None


def _range_fields(prot: Protection, info: int, eilbrt: int, elbat: int, elbatm: int) -> PiFields:
    pi = PiFields.__new__(PiFields)
    pi.prinfo, pi.prchk, pi.pract = info, info & PRCHK_MASK, bool(info & PRINFO_PRACT)
    pi.reftag, pi.apptag, pi.appmask = eilbrt & prot.reftag_mask, elbat, elbatm
    return pi
