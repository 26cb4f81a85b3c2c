"""NVMe structures and constants shared by the controller, its tests and the tools.

Only what several modules need lives here; a structure used by a single command
handler (an Identify data structure, a log page) is declared beside it, still as
a ``Layout``.
"""

from __future__ import annotations

import enum

from nvshell.device.layout import Layout

PAGE_SIZE = 4096  # CC.MPS = 0; MPSMIN = MPSMAX = 0

#: Submission Queue Entry (64 bytes). ``dptr1``/``dptr2`` are PRP1/PRP2, or
#: together the first SGL descriptor (16 bytes) when PSDT != 0.
SQE = Layout("SQE", [
    ("opcode", "B"), ("flags", "B"), ("cid", "H"), ("nsid", "I"),
    ("cdw2", "I"), ("cdw3", "I"), ("mptr", "Q"), ("dptr1", "Q"), ("dptr2", "Q"),
    ("cdw10", "I"), ("cdw11", "I"), ("cdw12", "I"), ("cdw13", "I"), ("cdw14", "I"), ("cdw15", "I"),
])
assert SQE.size == 64

#: Completion Queue Entry (16 bytes). ``status`` holds the phase tag in bit 0.
CQE = Layout("CQE", [
    ("dw0", "I"), ("dw1", "I"), ("sqhd", "H"), ("sqid", "H"), ("cid", "H"), ("status", "H"),
])
assert CQE.size == 16


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
    NS_MANAGEMENT = 0x0D
    FIRMWARE_COMMIT = 0x10
    FIRMWARE_DOWNLOAD = 0x11
    NS_ATTACHMENT = 0x15
    KEEP_ALIVE = 0x18
    DOORBELL_BUFFER_CONFIG = 0x7C
    FORMAT_NVM = 0x80


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
    ERROR = 0x01
    SMART = 0x02
    FW_SLOT = 0x03
    CHANGED_NS_LIST = 0x04
    CMD_EFFECTS = 0x05
