"""NVMe structures and constants shared by the controller, its tests and the tools.

Only what several modules need lives here; a structure used by a single command
handler (an Identify data structure, a log page) is declared beside it, still as
a ``Layout``.
"""

from __future__ import annotations

import enum

from nvshell.device.layout import Layout

PAGE_SIZE = 4096  # CC.MPS = 0; MPSMIN = MPSMAX = 0

#: Version register (VS) and Identify Controller VER: NVMe 2.0.0.
NVME_VERSION = 0x00020000
#: The NSID meaning "all namespaces" (FFFFFFFFh).
BROADCAST_NSID = 0xFFFFFFFF
#: Every Identify data structure (and the Namespace Management host buffer) is 4 KiB.
IDENTIFY_SIZE = 4096
#: Supported LBA formats: index (FLBAS format number) -> (LBADS, metadata bytes per block).
#: QEMU's order, so ``nvme format --lbaf=N`` means the same on both devices.
LBA_FORMATS: tuple[tuple[int, int], ...] = tuple((lbads, ms) for lbads in (9, 12) for ms in (0, 8, 16, 64))


def lbaf_entry(lbads: int, metadata_size: int = 0) -> int:
    """One LBA Format dword: MS (15:0), LBADS (23:16, log2 of the block size), RP (25:24)."""
    return metadata_size | (lbads << 16)


def mdts_bytes(mdts: int) -> int:
    """Identify MDTS (a power of two in units of CAP.MPSMIN) in bytes; 0 means no limit."""
    return PAGE_SIZE << mdts if mdts else 0


#: Submission Queue Entry (64 bytes). ``dptr1``/``dptr2`` are PRP1/PRP2, or
#: together the first SGL descriptor (16 bytes) when PSDT != 0.
SQE = Layout("SQE", [
    ("opcode", "B"), ("flags", "B"), ("cid", "H"), ("nsid", "I"),
    ("cdw2", "I"), ("cdw3", "I"), ("mptr", "Q"), ("dptr1", "Q"), ("dptr2", "Q"),
    ("cdw10", "I"), ("cdw11", "I"), ("cdw12", "I"), ("cdw13", "I"), ("cdw14", "I"), ("cdw15", "I"),
])
assert SQE.size == 64
#: CC.IOSQES / SQES: log2 of the submission entry size.
SQE_SIZE_LOG2 = SQE.size.bit_length() - 1

#: Completion Queue Entry (16 bytes). ``status`` holds the phase tag in bit 0.
CQE = Layout("CQE", [
    ("dw0", "I"), ("dw1", "I"), ("sqhd", "H"), ("sqid", "H"), ("cid", "H"), ("status", "H"),
])
assert CQE.size == 16
#: CC.IOCQES / CQES: log2 of the completion entry size.
CQE_SIZE_LOG2 = CQE.size.bit_length() - 1

#: Identify Namespace data structure (CNS 00h), NVM command set; offsets as in
#: the NVM Command Set specification, figure "Identify Namespace Data Structure".
#: The namespace builds it, Identify reads parts of it (CNS 08h), Namespace
#: Management reads the host's copy of it.
ID_NS = Layout("IdNamespace", [
    (0, "nsze", "Q"), (8, "ncap", "Q"), (16, "nuse", "Q"),
    (24, "nsfeat", "B"), (25, "nlbaf", "B"), (26, "flbas", "B"), (27, "mc", "B"),
    (28, "dpc", "B"), (29, "dps", "B"), (30, "nmic", "B"), (31, "rescap", "B"),
    (32, "fpi", "B"), (33, "dlfeat", "B"), (34, "nawun", "H"), (36, "nawupf", "H"),
    (38, "nacwu", "H"), (40, "nabsn", "H"), (42, "nabo", "H"), (44, "nabspf", "H"),
    (46, "noiob", "H"), (48, "nvmcap", "16s"), (64, "npwg", "H"), (66, "npwa", "H"),
    (68, "npdg", "H"), (70, "npda", "H"), (72, "nows", "H"), (74, "mssrl", "H"),
    (76, "mcl", "I"), (80, "msrc", "B"), (82, "nulbaf", "B"), (92, "anagrpid", "I"),
    (99, "nsattr", "B"), (100, "nvmsetid", "H"), (102, "endgid", "H"),
    (104, "nguid", "16s"), (120, "eui64", "8s"),
    *((128 + 4 * i, f"lbaf{i}", "I") for i in range(len(LBA_FORMATS))),
], size=IDENTIFY_SIZE)


class Reg(enum.IntEnum):
    """Controller register offsets in BAR0."""
    CAP = 0x00
    VS = 0x08
    INTMS = 0x0C
    INTMC = 0x10
    CC = 0x14
    CSTS = 0x1C
    NSSR = 0x20
    AQA = 0x24
    ASQ = 0x28
    ACQ = 0x30
    CMBLOC = 0x38
    CMBSZ = 0x3C
    CRTO = 0x68
    DOORBELLS = 0x1000


BAR0_SIZE = 0x4000
DOORBELL_PAGE_OFFSET = 0x1000
DOORBELL_PAGE_SIZE = 0x1000


class AdminOpcode(enum.IntEnum):
    DELETE_IO_SQ = 0x00
    CREATE_IO_SQ = 0x01
    GET_LOG_PAGE = 0x02
    DELETE_IO_CQ = 0x04
    CREATE_IO_CQ = 0x05
    IDENTIFY = 0x06
    ABORT = 0x08
    SET_FEATURES = 0x09
    GET_FEATURES = 0x0A
    ASYNC_EVENT_REQUEST = 0x0C
    NAMESPACE_MANAGEMENT = 0x0D
    FIRMWARE_COMMIT = 0x10
    FIRMWARE_DOWNLOAD = 0x11
    DEVICE_SELF_TEST = 0x14
    NAMESPACE_ATTACHMENT = 0x15
    KEEP_ALIVE = 0x18
    DOORBELL_BUFFER_CONFIG = 0x7C
    FORMAT_NVM = 0x80
    SANITIZE = 0x84
    GET_LBA_STATUS = 0x86


class NvmOpcode(enum.IntEnum):
    FLUSH = 0x00
    WRITE = 0x01
    READ = 0x02
    WRITE_UNCORRECTABLE = 0x04
    COMPARE = 0x05
    WRITE_ZEROES = 0x08
    DATASET_MANAGEMENT = 0x09
    VERIFY = 0x0C
    COPY = 0x19
    # Zoned Namespace command set (CSI 02h) I/O commands.
    ZONE_MANAGEMENT_SEND = 0x79
    ZONE_MANAGEMENT_RECEIVE = 0x7A
    ZONE_APPEND = 0x7D


def opcode_name(op: enum.IntEnum) -> str:
    """The one user-facing name of an opcode ("read", "namespace-management"):
    command tables, traces, fault rules and completion all use it."""
    return op.name.lower().replace("_", "-")


#: Opcode number -> name, per queue kind.
ADMIN_OPCODE_NAMES: dict[int, str] = {int(op): opcode_name(op) for op in AdminOpcode}
IO_OPCODE_NAMES: dict[int, str] = {int(op): opcode_name(op) for op in NvmOpcode}


def opcode_label(qid: int, opcode: int) -> str:
    """'read', 'identify', or '0x99' for an opcode without a name (admin on queue 0)."""
    return (ADMIN_OPCODE_NAMES if qid == 0 else IO_OPCODE_NAMES).get(opcode) or f"{opcode:#04x}"


#: I/O commands whose CDW10-11 hold the (starting) LBA: error log LBA, fault LBA ranges.
LBA_OPCODES = frozenset({NvmOpcode.READ, NvmOpcode.WRITE, NvmOpcode.WRITE_UNCORRECTABLE, NvmOpcode.COMPARE,
                         NvmOpcode.WRITE_ZEROES, NvmOpcode.VERIFY, NvmOpcode.ZONE_APPEND})
#: SMART "Host Read Commands": the NVM commands that read the medium.
HOST_READ_OPCODES = frozenset({NvmOpcode.READ, NvmOpcode.COMPARE, NvmOpcode.VERIFY})
#: SMART "Host Write Commands": the NVM commands that write the medium.
HOST_WRITE_OPCODES = frozenset({NvmOpcode.WRITE, NvmOpcode.WRITE_UNCORRECTABLE, NvmOpcode.WRITE_ZEROES,
                                NvmOpcode.COPY, NvmOpcode.ZONE_APPEND})


class CSI(enum.IntEnum):
    """Command Set Identifiers."""
    NVM = 0x00
    ZONED = 0x02


class AsyncEventType(enum.IntEnum):
    ERROR = 0
    SMART = 1
    NOTICE = 2
    IO_COMMAND_SET = 6
    VENDOR = 7


class NoticeInfo(enum.IntEnum):
    NS_ATTRIBUTE_CHANGED = 0x00
    FIRMWARE_ACTIVATION = 0x01
    TELEMETRY = 0x02
    ANA_CHANGE = 0x03


class LogPage(enum.IntEnum):
    SUPPORTED_LOG_PAGES = 0x00
    ERROR = 0x01
    SMART = 0x02
    FW_SLOT = 0x03
    CHANGED_NS_LIST = 0x04
    CMD_EFFECTS = 0x05
    DEVICE_SELF_TEST = 0x06
    TELEMETRY_HOST = 0x07
    TELEMETRY_CONTROLLER = 0x08
    PERSISTENT_EVENT = 0x0D
    LBA_STATUS = 0x0E
    SANITIZE_STATUS = 0x81
    OCP_SMART_EXTENDED = 0xC0
