"""Namespace Management (0Dh) and Namespace Attachment (15h) admin commands.

Identify Controller advertises OACS bit 3 (Namespace Management and Attachment)
because both work here: nvme-cli's test suite, seeing it, deletes every namespace
and creates its own, and the Linux driver rescans on the resulting AENs.

Guest-made changes go through the ``Subsystem`` (which owns namespaces and moves
each change onto the affected controller's IOThread, with the Namespace
Attribute Changed AEN and Changed Namespace List entry) and are then reported
to ``subsystem.listeners`` so the object model can mirror them in its QOM tree.

Checks happen before any change, so a command that fails changes nothing
(QEMU applies an attachment list controller by controller and can stop half way).
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any, Callable

from nvshell.device.nvme.admin_identify import max_nsid, subsystem_of
from nvshell.device.nvme import admin_pel
from nvshell.device.nvme.commands import ADMIN, EFFECT_NIC, Command
from nvshell.device.nvme.lbaf import DPS_FIRST, NsFormat, split_flbas
from nvshell.device.nvme.spec import BROADCAST_NSID, CSI, AdminOpcode, ID_NS, IDENTIFY_SIZE
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.nvme.subsystem import SubsystemError

if TYPE_CHECKING:
    from nvshell.device.nvme.context import ControllerContext, Namespace

log = logging.getLogger(__name__)

SEL_CREATE = 0
SEL_DELETE = 1
SEL_ATTACH = 0
SEL_DETACH = 1
CONTROLLER_LIST_MAX = IDENTIFY_SIZE // 2 - 1  # 2047 identifiers after the count


def _default_factory(size: int, lba_size: int, shared: bool, **fmt: int) -> Any:
    """A new in-memory NVM namespace (imported late: namespace.py is another module's).

    ``fmt`` carries the metadata and protection fields of the request: ``ms``,
    ``mset``, ``pi``, ``pil`` (the namespace's own keywords)."""
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.namespace import NvmNamespace
    return NvmNamespace(MemoryBackend(size), lba_size=lba_size, shared=shared, **fmt)


#: Builds the namespace for Namespace Management create: ``(size_bytes, lba_size,
#: shared, ms=, mset=, pi=, pil=) -> ns``. Replaceable (tests, or an object model
#: that wants file backends).
namespace_factory: Callable[..., Any] = _default_factory

#: Zone size of a zoned namespace created by the host (the command carries none):
#: this, or for a smaller namespace the largest power of two that fits.
CREATED_ZONE_SIZE = 64 << 20


def _default_zoned_factory(size: int, lba_size: int, shared: bool, **fmt: Any) -> Any:
    """A new in-memory zoned namespace (CSI 02h), no open/active limits; ``fmt`` as
    ``namespace_factory`` (ms, mset, pi, pil)."""
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.zoned import ZonedNamespace
    zone_size = min(CREATED_ZONE_SIZE, 1 << (size.bit_length() - 1))
    if zone_size < lba_size:
        raise NvmeError(Status.INVALID_FIELD, msg=f"{size} bytes hold no zone")
    if fmt.get("pi"):
        raise NvmeError(Status.INVALID_FORMAT, msg="zoned namespaces carry no protection information")
    return ZonedNamespace(MemoryBackend(size), lba_size=lba_size, shared=shared, zone_size=zone_size, **fmt)


#: The same for Namespace Management create with CSI 02h (Zoned Namespace).
zoned_namespace_factory: Callable[..., Any] = _default_zoned_factory


# -------------------------------------------------------------- management
@ADMIN.command(AdminOpcode.NAMESPACE_MANAGEMENT, nsid="none", effects=EFFECT_NIC, direction="from-host")
def namespace_management(ctrl: "ControllerContext", cmd: Command) -> None:
    sel = cmd.cdw10 & 0xF
    if sel == SEL_CREATE:
        _create(ctrl, cmd)
    elif sel == SEL_DELETE:
        _delete(ctrl, cmd)
    else:
        raise NvmeError(Status.INVALID_FIELD)


def _create(ctrl: "ControllerContext", cmd: Command) -> None:
    subsys = subsystem_of(ctrl)
    csi = (cmd.cdw11 >> 24) & 0xFF
    factories = {CSI.NVM: namespace_factory, CSI.ZONED: zoned_namespace_factory}
    if csi not in factories:
        raise NvmeError(Status.INVALID_IO_COMMAND_SET)
    data = bytes(ctrl.transfer(cmd, IDENTIFY_SIZE, allow_sgl=False).from_guest())
    req = ID_NS.unpack(data.ljust(IDENTIFY_SIZE, b"\0"))
    index, extended = split_flbas(req.flbas)
    pi, first = req.dps & 0x7, bool(req.dps & DPS_FIRST)
    if req.dps & ~0xF or pi > 3:
        raise NvmeError(Status.INVALID_FIELD, msg=f"DPS {req.dps:#x}: reserved bits or PI type set")
    try:
        fmt = NsFormat.make(index, extended=extended, pi=pi, first=first)
    except ValueError as exc:
        raise NvmeError(Status.INVALID_FORMAT, msg=str(exc)) from None
    lba_size = fmt.lba_size
    if req.nsze == 0 or req.ncap == 0 or req.ncap > req.nsze:
        raise NvmeError(Status.INVALID_FIELD)
    if req.ncap != req.nsze:
        raise NvmeError(Status.THIN_PROVISIONING_NOT_SUPPORTED)
    size = req.nsze * lba_size
    if size > subsys.unallocated_bytes():
        raise NvmeError(Status.NS_INSUFFICIENT_CAPACITY)
    if not subsys.free_nsid():
        raise NvmeError(Status.NSID_UNAVAILABLE)
    try:
        ns = factories[csi](size, lba_size, bool(req.nmic & 1), ms=fmt.ms, mset=int(fmt.extended),
                            pi=fmt.pi, pil=int(fmt.first))
    except NvmeError:
        raise
    except Exception as exc:
        log.error("namespace create (%d bytes) failed: %s", size, exc)
        raise NvmeError(Status.NS_INSUFFICIENT_CAPACITY) from exc
    try:
        nsid = subsys.add_namespace(ns)
    except SubsystemError as exc:  # lost a race for the last NSID
        _close(ns)
        raise NvmeError(exc.status) from exc
    cmd.result = nsid
    admin_pel.change_namespace(ctrl, cmd.cdw10, nsid, ns)
    subsys.notify("namespace-created", nsid, ns, ctrl)


def _delete(ctrl: "ControllerContext", cmd: Command) -> None:
    subsys = subsystem_of(ctrl)
    if cmd.nsid == BROADCAST_NSID:
        nsids = sorted(subsys.namespaces)
    else:
        if not 1 <= cmd.nsid <= max_nsid(ctrl):
            raise NvmeError(Status.INVALID_NSID)
        if cmd.nsid not in subsys.namespaces:
            raise NvmeError(Status.INVALID_FIELD)
        nsids = [cmd.nsid]
    for nsid in nsids:
        try:
            ns = subsys.remove_namespace(nsid, close=True)
        except SubsystemError as exc:  # deleted meanwhile by someone else
            if cmd.nsid != BROADCAST_NSID:
                raise NvmeError(exc.status) from exc
            continue
        admin_pel.change_namespace(ctrl, cmd.cdw10, nsid, ns)
        subsys.notify("namespace-deleted", nsid, ns, ctrl)


def _close(ns: "Namespace") -> None:
    try:
        ns.close()
    except Exception:
        log.exception("closing an unused namespace failed")


# -------------------------------------------------------------- attachment
@ADMIN.command(AdminOpcode.NAMESPACE_ATTACHMENT, nsid="none", effects=EFFECT_NIC, direction="from-host")
def namespace_attachment(ctrl: "ControllerContext", cmd: Command) -> None:
    subsys = subsystem_of(ctrl)
    sel = cmd.cdw10 & 0xF
    nsid = cmd.nsid
    if nsid == BROADCAST_NSID:
        raise NvmeError(Status.INVALID_FIELD)
    if not 1 <= nsid <= max_nsid(ctrl):
        raise NvmeError(Status.INVALID_NSID)
    ns = subsys.namespaces.get(nsid)
    if ns is None:
        raise NvmeError(Status.INVALID_FIELD)
    if sel not in (SEL_ATTACH, SEL_DETACH):
        raise NvmeError(Status.INVALID_FIELD)

    data = bytes(ctrl.transfer(cmd, IDENTIFY_SIZE, allow_sgl=False).from_guest()).ljust(IDENTIFY_SIZE, b"\0")
    count = min(struct.unpack_from("<H", data)[0], CONTROLLER_LIST_MAX)
    cntlids = list(struct.unpack_from(f"<{count}H", data, 2))
    if not cntlids or len(set(cntlids)) != len(cntlids):
        raise NvmeError(Status.CONTROLLER_LIST_INVALID)
    targets = []
    for cntlid in cntlids:
        target = subsys.controllers.get(cntlid)
        if target is None:
            raise NvmeError(Status.CONTROLLER_LIST_INVALID)
        targets.append(target)

    attached = set(subsys.attached_controllers(nsid))
    if sel == SEL_ATTACH:
        if any(c in attached for c in cntlids):
            raise NvmeError(Status.NS_ALREADY_ATTACHED)
        if not ns.shared and len(attached) + len(cntlids) > 1:
            raise NvmeError(Status.NS_IS_PRIVATE)
    elif any(c not in attached for c in cntlids):
        raise NvmeError(Status.NS_NOT_ATTACHED)

    for target in targets:
        try:
            if sel == SEL_ATTACH:
                subsys.attach(nsid, target)
            else:
                subsys.detach(nsid, target)
        except SubsystemError as exc:  # changed by another thread since the checks
            raise NvmeError(exc.status) from exc
        subsys.notify("attached" if sel == SEL_ATTACH else "detached", nsid, ns, target)
