"""Identify (admin opcode 06h): every CNS value the Linux driver and nvme-cli use.

The data structures are declared as ``Layout`` with the byte offsets of the NVMe
base specification 2.0 (Figure "Identify Controller Data Structure" etc.), so a
reviewer can check them line by line. Namespace-specific structures (CNS 00, 03,
05) come from the namespace itself (``ns.identify_ns()``...); this module decides
which namespace a command may see and what an inactive or unallocated NSID
returns:

* CNS 00/05/0x11/0x1B on an NSID that is valid but not active (or not allocated)
  return a zero-filled structure, as the spec requires and QEMU does;
* NSID 0, or above NN, is Invalid Namespace or Format; the broadcast NSID is
  only meaningful for CNS 00 (capabilities common to all namespaces, which
  nvme-cli's ``create-ns --block-size`` reads).
"""

from __future__ import annotations

import struct
import weakref
from typing import TYPE_CHECKING, Any, Iterable

from nvshell.device.layout import Layout
from nvshell.device.nvme.commands import ADMIN, NVM, Command
from nvshell.device.nvme.spec import (BROADCAST_NSID, CSI, ID_NS, IDENTIFY_SIZE, LBA_FORMATS, NVME_VERSION, PAGE_SIZE,
                                      AdminOpcode, NvmOpcode, lbaf_entry)
from nvshell.device.nvme.lbaf import DPC_ALL, MC_BOTH
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.nvme.subsystem import DEFAULT_MAX_NSID
from nvshell.device.nvme.zoned import identify_controller_zoned

if TYPE_CHECKING:
    from nvshell.device.nvme.context import ControllerContext, Namespace


# CNS values (Identify command, CDW10 bits 7:0)
CNS_NS = 0x00
CNS_CTRL = 0x01
CNS_ACTIVE_NS_LIST = 0x02
CNS_NS_DESCRIPTORS = 0x03
CNS_CS_NS = 0x05
CNS_CS_CTRL = 0x06
CNS_CS_ACTIVE_NS_LIST = 0x07
CNS_NS_INDEPENDENT = 0x08
CNS_ALLOCATED_NS_LIST = 0x10
CNS_ALLOCATED_NS = 0x11
CNS_NS_CTRL_LIST = 0x12
CNS_CTRL_LIST = 0x13
CNS_CS_ALLOCATED_NS_LIST = 0x1A
CNS_CS_ALLOCATED_NS = 0x1B
CNS_IO_COMMAND_SETS = 0x1C

# Identify Controller bit fields
CMIC_MULTI_CONTROLLER = 1 << 1
OAES_NS_ATTRIBUTE = 1 << 8
OAES_FIRMWARE_ACTIVATION = 1 << 9
OAES_TELEMETRY = 1 << 10
LPA_SMART_PER_NS = 1 << 0
LPA_CMD_EFFECTS = 1 << 1
LPA_EXTENDED_DATA = 1 << 2
FRMW_SLOT1_RO = 1 << 0
FRMW_ONE_SLOT = 1 << 1
VWC_PRESENT = 1 << 0
VWC_FLUSH_BROADCAST = 0b11 << 1
SGLS_SUPPORTED = 1 << 0            # 01b: SGLs supported, no alignment requirement
SGLS_BIT_BUCKET = 1 << 16
#: Bit 19 (MSDS): MPTR may hold the address of one qword-aligned SGL descriptor (PSDT 10b),
#: ``dataxfer.map_metadata``. Bit 20 (SGL Address field as offset) stays clear: not offered.
SGLS_MPTR_SGL = 1 << 19
CNTRLTYPE_IO = 1
#: CTRATT bit 15: Extended LBA Formats Supported (CNS 05's ELBAF list, hence the 64b guard).
CTRATT_ELBAS = 1 << 15

#: ONCS bit per optional NVM command, advertised only if the NVM table has it.
ONCS_BY_OPCODE = {
    NvmOpcode.COMPARE: 1 << 0,
    NvmOpcode.WRITE_UNCORRECTABLE: 1 << 1,
    NvmOpcode.DATASET_MANAGEMENT: 1 << 2,
    NvmOpcode.WRITE_ZEROES: 1 << 3,
    NvmOpcode.VERIFY: 1 << 7,
    NvmOpcode.COPY: 1 << 8,
}
#: OACS bit per optional admin command, advertised only if the admin table has it
#: (a command set is advertised once its handler is registered, never before).
OACS_BY_OPCODE = {
    0x80: 1 << 1,   # Format NVM
    0x11: 1 << 2,   # Firmware Image Download (and Commit)
    0x0D: 1 << 3,   # Namespace Management (and Attachment)
    0x14: 1 << 4,   # Device Self-test
    0x7C: 1 << 8,   # Doorbell Buffer Config
    0x86: 1 << 9,   # Get LBA Status
}
#: ONCS bits for features (Get Features SEL = saved/default/supported, Timestamp):
#: implemented by admin_features.py.
ONCS_FEATURES = (1 << 4) | (1 << 6)

ID_CTRL = Layout("IdentifyController", [
    (0, "vid", "H"), (2, "ssvid", "H"), (4, "sn", "20s"), (24, "mn", "40s"), (64, "fr", "8s"),
    (72, "rab", "B"), (73, "ieee", "3s"), (76, "cmic", "B"), (77, "mdts", "B"),
    (78, "cntlid", "H"), (80, "ver", "I"), (84, "rtd3r", "I"), (88, "rtd3e", "I"),
    (92, "oaes", "I"), (96, "ctratt", "I"), (100, "rrls", "H"), (111, "cntrltype", "B"),
    (112, "fguid", "16s"), (128, "crdt1", "H"), (130, "crdt2", "H"), (132, "crdt3", "H"),
    (253, "nvmsr", "B"), (254, "vwci", "B"), (255, "mec", "B"),
    (256, "oacs", "H"), (258, "acl", "B"), (259, "aerl", "B"), (260, "frmw", "B"),
    (261, "lpa", "B"), (262, "elpe", "B"), (263, "npss", "B"), (264, "avscc", "B"),
    (265, "apsta", "B"), (266, "wctemp", "H"), (268, "cctemp", "H"), (270, "mtfa", "H"),
    (272, "hmpre", "I"), (276, "hmmin", "I"), (280, "tnvmcap", "16s"), (296, "unvmcap", "16s"),
    (312, "rpmbs", "I"), (316, "edstt", "H"), (318, "dsto", "B"), (319, "fwug", "B"),
    (320, "kas", "H"), (322, "hctma", "H"), (324, "mntmt", "H"), (326, "mxtmt", "H"),
    (328, "sanicap", "I"), (332, "hmminds", "I"), (336, "hmmaxd", "H"), (338, "nsetidmax", "H"),
    (340, "endgidmax", "H"), (342, "anatt", "B"), (343, "anacap", "B"), (344, "anagrpmax", "I"),
    (348, "nanagrpid", "I"), (352, "pels", "I"), (356, "domainid", "H"),
    (512, "sqes", "B"), (513, "cqes", "B"), (514, "maxcmd", "H"), (516, "nn", "I"),
    (520, "oncs", "H"), (522, "fuses", "H"), (524, "fna", "B"), (525, "vwc", "B"),
    (526, "awun", "H"), (528, "awupf", "H"), (530, "icsvscc", "B"), (531, "nwpc", "B"),
    (532, "acwu", "H"), (534, "ocfs", "H"), (536, "sgls", "I"), (540, "mnan", "I"),
    (544, "maxdna", "16s"), (560, "maxcna", "I"),
    (768, "subnqn", "256s"),
    (2048, "psd0", "32s"),
], size=IDENTIFY_SIZE)

#: Power State Descriptor (32 bytes); one operational state, 25 W like QEMU's.
PSD = Layout("PowerStateDescriptor", [
    (0, "mp", "H"), (3, "flags", "B"), (4, "enlat", "I"), (8, "exlat", "I"),
    (12, "rrt", "B"), (13, "rrl", "B"), (14, "rwt", "B"), (15, "rwl", "B"),
    (16, "idlp", "H"), (18, "ips", "B"), (20, "actp", "H"), (22, "apw_aps", "B"),
], size=32)

#: I/O Command Set Specific Identify Controller for the NVM command set (CNS 06, CSI 0).
ID_CTRL_NVM = Layout("IdentifyControllerNvm", [
    (0, "vsl", "B"), (1, "wzsl", "B"), (2, "wusl", "B"), (3, "dmrl", "B"),
    (4, "dmrsl", "I"), (8, "dmsl", "Q"),
], size=IDENTIFY_SIZE)

#: I/O Command Set Independent Identify Namespace (CNS 08).
ID_NS_INDEPENDENT = Layout("IdentifyNamespaceIndependent", [
    (0, "nsfeat", "B"), (1, "nmic", "B"), (2, "rescap", "B"), (3, "fpi", "B"),
    (4, "anagrpid", "I"), (8, "nsattr", "B"), (10, "nvmsetid", "H"), (12, "endgid", "H"),
    (14, "nstat", "B"),
], size=IDENTIFY_SIZE)

# ---------------------------------------------------------------- helpers
def subsystem_of(ctrl: "ControllerContext") -> Any:
    return ctrl.subsystem


def max_nsid(ctrl: "ControllerContext") -> int:
    subsys = subsystem_of(ctrl)
    # A Controller may be built without a subsystem (controller unit tests); the
    # NSID range is then the subsystem default.
    return subsys.max_nsid if subsys is not None else DEFAULT_MAX_NSID


def check_nsid(ctrl: "ControllerContext", nsid: int, *, broadcast: bool = False) -> None:
    """NSID 0 or above NN (or the broadcast NSID where not allowed): Invalid NSID."""
    if nsid == BROADCAST_NSID and broadcast:
        return
    if not 1 <= nsid <= max_nsid(ctrl):
        raise NvmeError(Status.INVALID_NSID)


def active_ns(ctrl: "ControllerContext", nsid: int) -> Any | None:
    return ctrl.namespaces.get(nsid)


def allocated_ns(ctrl: "ControllerContext", nsid: int) -> Any | None:
    return subsystem_of(ctrl).namespaces.get(nsid)


def fixed(text: str, width: int) -> bytes:
    """ASCII, space padded, as the spec wants SN, MN and FR (never NUL padded)."""
    data = text.encode("ascii", "replace")[:width]
    return data.ljust(width, b" ")


def nsid_list(nsids: Iterable[int], after: int) -> bytes:
    """Namespace List: up to 1024 ascending NSIDs greater than ``after``, zero padded."""
    chosen = sorted(n for n in nsids if n > after)[:IDENTIFY_SIZE // 4]
    return struct.pack(f"<{len(chosen)}I", *chosen).ljust(IDENTIFY_SIZE, b"\0")


def controller_list(cntlids: Iterable[int], first: int) -> bytes:
    """Controller List: count (u16) then up to 2047 ascending IDs >= ``first``."""
    chosen = sorted(c for c in cntlids if c >= first)[:IDENTIFY_SIZE // 2 - 1]
    return struct.pack(f"<H{len(chosen)}H", len(chosen), *chosen).ljust(IDENTIFY_SIZE, b"\0")


def _pad(data: bytes) -> bytes:
    return bytes(data[:IDENTIFY_SIZE]).ljust(IDENTIFY_SIZE, b"\0")


def _oui_bytes(oui: int) -> bytes:
    """IEEE OUI, least significant byte first (as QEMU stores 52:54:00)."""
    return oui.to_bytes(3, "little")


def _u128(value: int) -> bytes:
    return int(value).to_bytes(16, "little")


def oacs(table: Any = ADMIN) -> int:
    return sum(bit for opcode, bit in OACS_BY_OPCODE.items() if opcode in table)


#: LPA bits contributed by log pages other modules register (admin_log.LOG_PAGES).
def lpa() -> int:
    from nvshell.device.nvme import admin_log
    return LPA_CMD_EFFECTS | LPA_EXTENDED_DATA | admin_log.lpa_bits()


def oncs(table: Any = NVM) -> int:
    bits = ONCS_FEATURES
    for opcode, bit in ONCS_BY_OPCODE.items():
        if opcode in table:
            bits |= bit
    return bits



def _optional(module: str, name: str) -> int:
    """A constant of an optional admin module (FWUG, MTFA, PELS): 0 if it is not loaded."""
    import sys
    mod = sys.modules.get(f"nvshell.device.nvme.{module}")
    return int(getattr(mod, name)) if mod is not None else 0


def _firmware_revision(ctrl: Any) -> bytes:
    """FR: the active firmware slot's revision (Firmware Commit changes it)."""
    if AdminOpcode.FIRMWARE_COMMIT not in ADMIN:
        return fixed(ctrl.config.firmware, 8)
    from nvshell.device.nvme.admin_firmware import active_revision
    return active_revision(ctrl)


def _frmw() -> int:
    if AdminOpcode.FIRMWARE_COMMIT not in ADMIN:
        return FRMW_SLOT1_RO | FRMW_ONE_SLOT
    from nvshell.device.nvme.admin_firmware import FRMW
    return FRMW


def _edstt() -> int:
    """EDSTT (extended self-test minutes) once Device Self-test is registered."""
    if AdminOpcode.DEVICE_SELF_TEST not in ADMIN:
        return 0
    from nvshell.device.nvme.admin_selftest import EDSTT_MINUTES
    return EDSTT_MINUTES


def _kas() -> int:
    """KAS once the Keep Alive command is registered (0 = Keep Alive unsupported)."""
    if 0x18 not in ADMIN:
        return 0
    from nvshell.device.nvme.admin_keepalive import KAS
    return KAS


def identify_controller(ctrl: "ControllerContext") -> bytes:
    """The 4096-byte Identify Controller data structure of ``ctrl``."""
    cfg = ctrl.config
    subsys = subsystem_of(ctrl)
    allocated = subsys.allocated_bytes()
    unallocated = subsys.unallocated_bytes()
    psd0 = PSD.pack(mp=2500, enlat=16, exlat=4)  # MP in 0.01 W units: 25 W
    return ID_CTRL.pack(
        vid=cfg.vid,
        ssvid=cfg.ssvid,
        sn=fixed(cfg.serial, 20),
        mn=fixed(cfg.model, 40),
        fr=_firmware_revision(ctrl),
        rab=6,
        ieee=_oui_bytes(cfg.oui),
        cmic=CMIC_MULTI_CONTROLLER,
        mdts=cfg.mdts,
        cntlid=ctrl.cntlid,
        ver=NVME_VERSION,
        oaes=OAES_NS_ATTRIBUTE | (OAES_FIRMWARE_ACTIVATION if AdminOpcode.FIRMWARE_COMMIT in ADMIN else 0)
        | (OAES_TELEMETRY if _optional("admin_telemetry", "LPA_TELEMETRY") else 0),
        ctratt=CTRATT_ELBAS,
        cntrltype=CNTRLTYPE_IO,
        oacs=oacs(),
        acl=3,
        aerl=cfg.aerl,
        frmw=_frmw(),
        fwug=_optional("admin_firmware", "FWUG"),
        mtfa=_optional("admin_firmware", "MTFA"),
        pels=_optional("admin_pel", "PELS"),
        lpa=lpa(),
        elpe=ctrl.error_log.capacity - 1,
        npss=0,
        wctemp=0x157,
        cctemp=0x175,
        tnvmcap=_u128(allocated + unallocated),
        unvmcap=_u128(unallocated),
        kas=_kas(),
        edstt=_edstt(),
        sanicap=_optional("admin_sanitize", "SANICAP"),
        sqes=0x66,
        cqes=0x44,
        maxcmd=min(cfg.mqes + 1, 0xFFFF),
        nn=max_nsid(ctrl),
        oncs=oncs(),
        vwc=VWC_PRESENT | VWC_FLUSH_BROADCAST,
        ocfs=0b1111 if NvmOpcode.COPY in NVM else 0,   # descriptor formats 0/2 (16b guard), 1/3 (64b guard)
        sgls=SGLS_SUPPORTED | SGLS_BIT_BUCKET | SGLS_MPTR_SGL,
        mnan=max_nsid(ctrl),
        subnqn=subsys.subnqn.encode()[:255],
        psd0=psd0,
    )


def identify_controller_nvm(ctrl: "ControllerContext") -> bytes:
    """CNS 06 for CSI NVM. Zero means "no limit beyond MDTS" for VSL/WZSL/WUSL,
    which lets the Linux driver size Write Zeroes by MDTS; DMRL bounds the ranges
    per Dataset Management command (nvm.py refuses more)."""
    from nvshell.device.nvme.nvm import DSM_MAX_RANGES
    return ID_CTRL_NVM.pack(dmrl=DSM_MAX_RANGES)


def common_namespace_capabilities() -> bytes:
    """CNS 00 with the broadcast NSID: what every namespace created by Namespace
    Management can be, i.e. the LBA formats (nvme-cli create-ns picks FLBAS here)."""
    return ID_NS.pack(nlbaf=len(LBA_FORMATS) - 1, mc=MC_BOTH, dpc=DPC_ALL,
                      **{f"lbaf{i}": lbaf_entry(lbads, ms) for i, (lbads, ms) in enumerate(LBA_FORMATS)})


#: CNS 08 as last built per namespace: (its Identify Namespace, shared, ready, result).
_INDEPENDENT: "weakref.WeakKeyDictionary[Any, tuple[bytes, bool, bool, bytes]]" = weakref.WeakKeyDictionary()


def independent_namespace(ns: "Namespace") -> bytes:
    """CNS 08, derived from the namespace's own Identify Namespace so both agree (and built
    again only when that, the sharing or the readiness changed: scans ask for it often)."""
    ident = ns.identify_ns()
    got = _INDEPENDENT.get(ns)
    if got is not None and got[0] is ident and got[1] == ns.shared and got[2] == ns.ready:
        return got[3]
    data = _build_independent(ns, ident)
    _INDEPENDENT[ns] = (ident, ns.shared, ns.ready, data)
    return data


def _build_independent(ns: "Namespace", ident: bytes) -> bytes:
    full = ID_NS.unpack(_pad(ident))
    nmic = full.nmic | int(ns.shared)
    return ID_NS_INDEPENDENT.pack(nmic=nmic, rescap=full.rescap, fpi=full.fpi,
                                  anagrpid=full.anagrpid, nsattr=full.nsattr,
                                  nvmsetid=full.nvmsetid, endgid=full.endgid, nstat=int(ns.ready))


def io_command_sets() -> bytes:
    """CNS 1Ch: I/O Command Set vector 0 (the only combination) = NVM and Zoned
    Namespace (bit n = CSI n); feature 19h selects index 0."""
    return struct.pack("<Q", (1 << CSI.NVM) | (1 << CSI.ZONED)).ljust(IDENTIFY_SIZE, b"\0")


# ---------------------------------------------------------------- handler
@ADMIN.command(AdminOpcode.IDENTIFY, nsid="none", direction="to-host")
def identify(ctrl: "ControllerContext", cmd: Command) -> None:
    cns = cmd.cdw10 & 0xFF
    cntid = (cmd.cdw10 >> 16) & 0xFFFF
    csi = (cmd.cdw11 >> 24) & 0xFF
    build = _CNS.get(cns)
    if build is None:
        raise NvmeError(Status.INVALID_FIELD)
    data = _pad(build(ctrl, cmd, cntid, csi))
    ctrl.transfer(cmd, IDENTIFY_SIZE, allow_sgl=False).to_guest(data)


def _cns_ns(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    if cmd.nsid == BROADCAST_NSID:
        return common_namespace_capabilities()
    check_nsid(ctrl, cmd.nsid)
    ns = active_ns(ctrl, cmd.nsid)
    return ns.identify_ns() if ns is not None else b""


def _cns_ctrl(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    return identify_controller(ctrl)


def _cns_active_list(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    if cmd.nsid >= 0xFFFFFFFE:
        raise NvmeError(Status.INVALID_NSID)
    return nsid_list(ctrl.namespaces, cmd.nsid)


def _cns_descriptors(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    check_nsid(ctrl, cmd.nsid)
    ns = active_ns(ctrl, cmd.nsid)
    if ns is None:
        raise NvmeError(Status.INVALID_FIELD)  # as QEMU: no descriptors for an inactive NSID
    return ns.id_descriptors()


def _cs_ns(ns: "Namespace", csi: int) -> bytes:
    if ns is None:
        return b""
    if csi == ns.csi:
        return ns.identify_ns_csi()
    if csi == CSI.NVM and ns.csi == CSI.ZONED:   # zoned namespaces are NVM namespaces too
        return ns.identify_ns_nvm()
    raise NvmeError(Status.INVALID_FIELD)


def _cns_cs_ns(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    check_nsid(ctrl, cmd.nsid)
    return _cs_ns(active_ns(ctrl, cmd.nsid), csi)


def _cns_cs_ctrl(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    if csi == CSI.NVM:
        return identify_controller_nvm(ctrl)
    if csi == CSI.ZONED:
        return identify_controller_zoned(ctrl)
    raise NvmeError(Status.INVALID_FIELD)


def _check_csi(csi: int) -> None:
    if csi not in (CSI.NVM, CSI.ZONED):
        raise NvmeError(Status.INVALID_FIELD)


def _cns_cs_active_list(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    if cmd.nsid >= 0xFFFFFFFE:
        raise NvmeError(Status.INVALID_NSID)
    _check_csi(csi)
    return nsid_list((n for n, ns in ctrl.namespaces.items() if ns.csi == csi), cmd.nsid)


def _cns_independent(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    check_nsid(ctrl, cmd.nsid)
    ns = active_ns(ctrl, cmd.nsid)
    return independent_namespace(ns) if ns is not None else b""


def _cns_allocated_list(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    if cmd.nsid >= 0xFFFFFFFE:
        raise NvmeError(Status.INVALID_NSID)
    return nsid_list(list(subsystem_of(ctrl).namespaces), cmd.nsid)


def _cns_allocated_ns(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    check_nsid(ctrl, cmd.nsid)
    ns = allocated_ns(ctrl, cmd.nsid)
    return ns.identify_ns() if ns is not None else b""


def _cns_ns_ctrl_list(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    check_nsid(ctrl, cmd.nsid)
    return controller_list(subsystem_of(ctrl).attached_controllers(cmd.nsid), cntid)


def _cns_ctrl_list(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    return controller_list(list(subsystem_of(ctrl).controllers), cntid)


def _cns_cs_allocated_list(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    if cmd.nsid >= 0xFFFFFFFE:
        raise NvmeError(Status.INVALID_NSID)
    _check_csi(csi)
    namespaces = dict(subsystem_of(ctrl).namespaces)
    return nsid_list((n for n, ns in namespaces.items() if ns.csi == csi), cmd.nsid)


def _cns_cs_allocated_ns(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    check_nsid(ctrl, cmd.nsid)
    return _cs_ns(allocated_ns(ctrl, cmd.nsid), csi)


def _cns_io_command_sets(ctrl: "ControllerContext", cmd: Command, cntid: int, csi: int) -> bytes:
    return io_command_sets()


_CNS = {
    CNS_NS: _cns_ns,
    CNS_CTRL: _cns_ctrl,
    CNS_ACTIVE_NS_LIST: _cns_active_list,
    CNS_NS_DESCRIPTORS: _cns_descriptors,
    CNS_CS_NS: _cns_cs_ns,
    CNS_CS_CTRL: _cns_cs_ctrl,
    CNS_CS_ACTIVE_NS_LIST: _cns_cs_active_list,
    CNS_NS_INDEPENDENT: _cns_independent,
    CNS_ALLOCATED_NS_LIST: _cns_allocated_list,
    CNS_ALLOCATED_NS: _cns_allocated_ns,
    CNS_NS_CTRL_LIST: _cns_ns_ctrl_list,
    CNS_CTRL_LIST: _cns_ctrl_list,
    CNS_CS_ALLOCATED_NS_LIST: _cns_cs_allocated_list,
    CNS_CS_ALLOCATED_NS: _cns_cs_allocated_ns,
    CNS_IO_COMMAND_SETS: _cns_io_command_sets,
}

assert PAGE_SIZE == IDENTIFY_SIZE
