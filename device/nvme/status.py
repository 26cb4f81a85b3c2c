"""NVMe completion status codes, one enum, and the exception handlers raise.

A status value is ``(SCT << 8) | SC`` as in the spec; ``status_field()`` turns it
into the 15-bit Status Field of a completion entry (with DNR and More bits).
Command handlers raise ``NvmeError(Status.X)``; one place (the controller's
completion path) turns it into a CQE. Any other exception escaping a handler
becomes ``Status.INTERNAL_ERROR`` there.
"""

from __future__ import annotations

import enum


class SCT(enum.IntEnum):
    GENERIC = 0
    COMMAND_SPECIFIC = 1
    MEDIA = 2
    PATH = 3
    VENDOR = 7


class Status(enum.IntEnum):
    # Generic command status (SCT 0)
    SUCCESS = 0x0000
    INVALID_OPCODE = 0x0001
    INVALID_FIELD = 0x0002
    CID_CONFLICT = 0x0003
    DATA_TRANSFER_ERROR = 0x0004
    POWER_LOSS_ABORT = 0x0005
    INTERNAL_ERROR = 0x0006
    ABORT_REQUESTED = 0x0007
    SQ_DELETION_ABORT = 0x0008
    FUSED_FAIL = 0x0009
    FUSED_MISSING = 0x000A
    INVALID_NSID = 0x000B
    COMMAND_SEQUENCE_ERROR = 0x000C
    INVALID_SGL_SEGMENT_DESCRIPTOR = 0x000D
    INVALID_NUMBER_OF_SGL_DESCRIPTORS = 0x000E
    DATA_SGL_LENGTH_INVALID = 0x000F
    METADATA_SGL_LENGTH_INVALID = 0x0010
    SGL_DESCRIPTOR_TYPE_INVALID = 0x0011
    INVALID_USE_OF_CMB = 0x0012
    PRP_OFFSET_INVALID = 0x0013
    SGL_OFFSET_INVALID = 0x0016
    HOST_ID_INCONSISTENT = 0x0018
    KEEP_ALIVE_EXPIRED = 0x0019
    INVALID_KATO = 0x001A
    COMMAND_ABORTED_PREEMPT = 0x001B
    SANITIZE_FAILED = 0x001C
    SANITIZE_IN_PROGRESS = 0x001D
    SGL_DATA_BLOCK_GRANULARITY_INVALID = 0x001E
    COMMAND_NOT_SUPPORTED_FOR_QUEUE_IN_CMB = 0x001F
    NS_WRITE_PROTECTED = 0x0020
    COMMAND_INTERRUPTED = 0x0021
    TRANSIENT_TRANSPORT_ERROR = 0x0022
    LBA_OUT_OF_RANGE = 0x0080
    CAPACITY_EXCEEDED = 0x0081
    NS_NOT_READY = 0x0082
    RESERVATION_CONFLICT = 0x0083
    FORMAT_IN_PROGRESS = 0x0084
    # Command specific status (SCT 1)
    INVALID_CQ = 0x0100
    INVALID_QID = 0x0101
    INVALID_QUEUE_SIZE = 0x0102
    ABORT_COMMAND_LIMIT_EXCEEDED = 0x0103
    ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED = 0x0105
    INVALID_FIRMWARE_SLOT = 0x0106
    INVALID_FIRMWARE_IMAGE = 0x0107
    INVALID_INTERRUPT_VECTOR = 0x0108
    INVALID_LOG_PAGE = 0x0109
    INVALID_FORMAT = 0x010A
    FIRMWARE_ACTIVATION_REQUIRES_CONVENTIONAL_RESET = 0x010B
    INVALID_QUEUE_DELETION = 0x010C
    FEATURE_ID_NOT_SAVEABLE = 0x010D
    FEATURE_NOT_CHANGEABLE = 0x010E
    FEATURE_NOT_NS_SPECIFIC = 0x010F
    FIRMWARE_ACTIVATION_REQUIRES_NVM_SUBSYSTEM_RESET = 0x0110
    FIRMWARE_ACTIVATION_REQUIRES_RESET = 0x0111
    FIRMWARE_ACTIVATION_REQUIRES_MAXIMUM_TIME_VIOLATION = 0x0112
    FIRMWARE_ACTIVATION_PROHIBITED = 0x0113
    OVERLAPPING_RANGE = 0x0114
    NS_INSUFFICIENT_CAPACITY = 0x0115
    NSID_UNAVAILABLE = 0x0116
    NS_ALREADY_ATTACHED = 0x0118
    NS_IS_PRIVATE = 0x0119
    NS_NOT_ATTACHED = 0x011A
    THIN_PROVISIONING_NOT_SUPPORTED = 0x011B
    CONTROLLER_LIST_INVALID = 0x011C
    DEVICE_SELF_TEST_IN_PROGRESS = 0x011D
    INVALID_CONTROLLER_ID = 0x011F
    NS_ATTACHMENT_LIMIT_EXCEEDED = 0x0127
    IO_COMMAND_SET_COMBINATION_REJECTED = 0x012B
    INVALID_IO_COMMAND_SET = 0x012C
    # NVM command set specific (SCT 1, 0x80..)
    CONFLICTING_ATTRIBUTES = 0x0180
    INVALID_PROTECTION_INFORMATION = 0x0181
    WRITE_TO_READ_ONLY_RANGE = 0x0182
    COMMAND_SIZE_LIMIT_EXCEEDED = 0x0183
    INCOMPATIBLE_NAMESPACE_OR_FORMAT = 0x0185
    # Zoned Namespace command set specific (SCT 1, 0xB8..)
    ZONE_BOUNDARY_ERROR = 0x01B8
    ZONE_IS_FULL = 0x01B9
    ZONE_IS_READ_ONLY = 0x01BA
    ZONE_IS_OFFLINE = 0x01BB
    ZONE_INVALID_WRITE = 0x01BC
    TOO_MANY_ACTIVE_ZONES = 0x01BD
    TOO_MANY_OPEN_ZONES = 0x01BE
    INVALID_ZONE_STATE_TRANSITION = 0x01BF
    # Media and data integrity errors (SCT 2)
    WRITE_FAULT = 0x0280
    UNRECOVERED_READ_ERROR = 0x0281
    GUARD_CHECK_ERROR = 0x0282
    APPLICATION_TAG_CHECK_ERROR = 0x0283
    REFERENCE_TAG_CHECK_ERROR = 0x0284
    COMPARE_FAILURE = 0x0285
    ACCESS_DENIED = 0x0286
    DEALLOCATED_OR_UNWRITTEN_BLOCK = 0x0287
    # Path related status (SCT 3)
    INTERNAL_PATH_ERROR = 0x0300
    ASYMMETRIC_ACCESS_INACCESSIBLE = 0x0302
    ASYMMETRIC_ACCESS_TRANSITION = 0x0303

    @property
    def sct(self) -> int:
        return self.value >> 8

    @property
    def sc(self) -> int:
        return self.value & 0xFF

    @property
    def label(self) -> str:
        """Lower-case, hyphenated name used by the shell and traces ('lba-out-of-range')."""
        return self.name.lower().replace("_", "-")


def status_field(status: int, dnr: bool = False, more: bool = False) -> int:
    """The CQE Status Field (DW3 bits 31:17) for ``status``, without the phase bit."""
    return (status & 0x7FF) | (int(more) << 13) | (int(dnr) << 14)


def status_name(status: int) -> str:
    try:
        return Status(status).label
    except ValueError:
        return f"sct{status >> 8:#x}-sc{status & 0xff:#04x}"


class NvmeError(Exception):
    """Raised by a command handler to complete the command with ``status``.

    ``dnr`` (Do Not Retry) defaults to True for errors the host cannot fix by
    retrying; handlers pass ``dnr=False`` for transient conditions.
    """

    def __init__(self, status: Status | int, dnr: bool = True, result: int = 0, msg: str = "",
                 more: bool = False):
        self.status = int(status)
        self.dnr = dnr
        self.more = more
        self.result = result
        super().__init__(msg or status_name(self.status))
