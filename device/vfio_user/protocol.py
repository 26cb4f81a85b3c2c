"""vfio-user wire format: every message layout, command number and flag, once.

The server (``server.py``) and the test client (``client.py``) both build and
parse messages with these declarations, so the two sides cannot disagree about
a field offset. Layouts follow QEMU ``docs/interop/vfio-user.rst`` (host byte
order, which is little-endian everywhere we run).

Sizes here are part of the protocol contract with QEMU: its reply buffers are
exactly as large as the spec says, and a larger reply desyncs its stream.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from nvshell.device.layout import Layout, LayoutError


class Command(enum.IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    DIRTY_PAGES = 14
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


def command_name(command: int) -> str:
    try:
        return Command(command).name
    except ValueError:
        return f"command-{command}"


class MsgFlag(enum.IntFlag):
    """Header ``flags``: the low nibble is the message type."""

    COMMAND = 0x0
    REPLY = 0x1
    NO_REPLY = 0x10
    ERROR = 0x20


TYPE_MASK = 0xF
ERROR_REPLY_FLAGS = MsgFlag.REPLY | MsgFlag.ERROR  # 0x21


class DmaMapFlag(enum.IntFlag):
    READ = 1
    WRITE = 2


class DmaUnmapFlag(enum.IntFlag):
    GET_DIRTY_PAGE_INFO = 1
    ALL = 2


class DeviceFlag(enum.IntFlag):
    RESET = 1
    PCI = 2


class IrqInfoFlag(enum.IntFlag):
    EVENTFD = 1
    MASKABLE = 2
    AUTOMASKED = 4
    NORESIZE = 8


class IrqSetFlag(enum.IntFlag):
    DATA_NONE = 0x1
    DATA_BOOL = 0x2
    DATA_EVENTFD = 0x4
    ACTION_MASK = 0x8
    ACTION_UNMASK = 0x10
    ACTION_TRIGGER = 0x20


# Masks of defined bits, as plain ints. Why not the IntFlag values: on Python 3.11
# ``~`` of an IntFlag complements within the declared members only (``~READ`` is
# ``WRITE``), so ``flags & ~FLAG`` never sees an undeclared bit. Reserved-bit
# checks are ``flags & ~MASK`` with these ints.
IRQ_SET_DATA_MASK = int(IrqSetFlag.DATA_NONE | IrqSetFlag.DATA_BOOL | IrqSetFlag.DATA_EVENTFD)
IRQ_SET_ACTION_MASK = int(IrqSetFlag.ACTION_MASK | IrqSetFlag.ACTION_UNMASK | IrqSetFlag.ACTION_TRIGGER)
#: DMA_MAP flags the server accepts.
DMA_MAP_VALID_FLAGS = int(DmaMapFlag.READ | DmaMapFlag.WRITE)
#: DMA_UNMAP flags the server accepts (no dirty page tracking).
DMA_UNMAP_VALID_FLAGS = int(DmaUnmapFlag.ALL)


class RegionCap(enum.IntEnum):
    SPARSE_MMAP = 1
    TYPE = 2


SPARSE_MMAP_VERSION = 1

# ----------------------------------------------------------------- layouts
HEADER = Layout("VfioUserHeader", [("msg_id", "H"), ("command", "H"), ("size", "I"), ("flags", "I"), ("error", "I")])
HEADER_SIZE = HEADER.size  # 16

VERSION = Layout("VfioUserVersion", [("major", "H"), ("minor", "H")])
DMA_MAP = Layout("VfioUserDmaMap", [("argsz", "I"), ("flags", "I"), ("offset", "Q"), ("addr", "Q"), ("size", "Q")])
DMA_UNMAP = Layout("VfioUserDmaUnmap", [("argsz", "I"), ("flags", "I"), ("addr", "Q"), ("size", "Q")])
DEVICE_INFO = Layout("VfioUserDeviceInfo", [("argsz", "I"), ("flags", "I"), ("num_regions", "I"), ("num_irqs", "I")])
REGION_INFO = Layout(
    "VfioUserRegionInfo",
    [("argsz", "I"), ("flags", "I"), ("index", "I"), ("cap_offset", "I"), ("size", "Q"), ("offset", "Q")],
)
CAP_HEADER = Layout("VfioInfoCapHeader", [("id", "H"), ("version", "H"), ("next", "I")])
SPARSE_MMAP = Layout(
    "VfioRegionInfoCapSparseMmap",
    [("id", "H"), ("version", "H"), ("next", "I"), ("nr_areas", "I"), ("reserved", "I")],
)
SPARSE_AREA = Layout("VfioRegionSparseMmapArea", [("offset", "Q"), ("size", "Q")])
IRQ_INFO = Layout("VfioUserIrqInfo", [("argsz", "I"), ("flags", "I"), ("index", "I"), ("count", "I")])
IRQ_SET = Layout("VfioUserIrqSet", [("argsz", "I"), ("flags", "I"), ("index", "I"), ("start", "I"), ("count", "I")])
REGION_RW = Layout("VfioUserRegionRW", [("offset", "Q"), ("region", "I"), ("count", "I")])

# ------------------------------------------------------- negotiated limits
#: What this server accepts and advertises in its VERSION reply.
MAX_MSG_FDS = 8
MAX_DATA_XFER_SIZE = 1 << 20
PGSIZES = 4096
MAX_DMA_MAPS = 65535
#: Largest message the server takes: a maximal REGION_WRITE plus slack. Anything
#: larger cannot be resynchronised (we would have to buffer it), so the client is dropped.
MAX_MESSAGE_SIZE = HEADER_SIZE + MAX_DATA_XFER_SIZE + 4096

#: Defaults the spec gives for capabilities a peer does not state.
DEFAULT_CAPS: dict[str, Any] = {"max_msg_fds": 1, "max_data_xfer_size": MAX_DATA_XFER_SIZE, "pgsizes": 4096,
                                "max_dma_maps": 65535}


def server_capabilities() -> dict[str, Any]:
    """The capabilities object the server replies with (no ``write_multiple``:
    a QEMU 10.1 flag bug would force queued writes)."""
    return {
        "capabilities": {
            "max_msg_fds": MAX_MSG_FDS,
            "max_data_xfer_size": MAX_DATA_XFER_SIZE,
            "pgsizes": PGSIZES,
            "max_dma_maps": MAX_DMA_MAPS,
        }
    }


def encode_version(major: int, minor: int, caps: dict[str, Any] | None) -> bytes:
    """VERSION payload: major, minor, then compact JSON terminated by NUL."""
    text = b"" if caps is None else json.dumps(caps, separators=(",", ":")).encode() + b"\0"
    return VERSION.pack(major=major, minor=minor) + text


def decode_version_json(data: bytes) -> dict[str, Any]:
    """Parse the JSON part of a VERSION payload (empty -> {}); raises ValueError."""
    text = bytes(data).rstrip(b"\0")
    if not text:
        return {}
    try:
        obj = json.loads(text.decode("utf-8"))
    except RecursionError:
        # json's C scanner recurses per nesting level: 100k '[' must be one refusal, not a traceback.
        raise ValueError("VERSION capabilities nest too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("VERSION capabilities are not a JSON object")
    return obj


_pack_header = HEADER.struct.pack
if HEADER.names != ("msg_id", "command", "size", "flags", "error"):
    raise LayoutError("pack_header packs the header's fields in declaration order")


def pack_header(msg_id: int, command: int, payload_len: int, flags: int = 0, error: int = 0) -> bytes:
    # positional (HEADER's order, checked above): every reply passes here, and the
    # keyword form of Layout.pack costs microseconds
    return _pack_header(msg_id, command, HEADER_SIZE + payload_len, flags, error)


# ------------------------------------------------------------ region info
@dataclass
class RegionInfoReply:
    """A decoded DEVICE_GET_REGION_INFO reply (client side)."""

    index: int
    argsz: int
    flags: int
    size: int
    offset: int
    cap_offset: int
    areas: list[tuple[int, int]] = field(default_factory=list)
    fd: int | None = None


def encode_region_info(index: int, flags: int, size: int, offset: int, areas: list[tuple[int, int]]) -> bytes:
    """The full region-info payload: 32-byte info, then a sparse mmap capability
    right after it (cap_offset 32) when there are areas."""
    if not areas:
        return REGION_INFO.pack(argsz=REGION_INFO.size, flags=flags, index=index, cap_offset=0, size=size,
                                offset=offset)
    cap = SPARSE_MMAP.pack(id=RegionCap.SPARSE_MMAP, version=SPARSE_MMAP_VERSION, next=0, nr_areas=len(areas))
    cap += b"".join(SPARSE_AREA.pack(offset=o, size=s) for o, s in areas)
    full = REGION_INFO.size + len(cap)
    return REGION_INFO.pack(argsz=full, flags=flags, index=index, cap_offset=REGION_INFO.size, size=size,
                            offset=offset) + cap


def decode_region_info(payload: bytes) -> RegionInfoReply:
    """Parse a region-info reply, walking the capability chain for sparse areas."""
    info = REGION_INFO.unpack(payload)
    reply = RegionInfoReply(info.index, info.argsz, info.flags, info.size, info.offset, info.cap_offset)
    cap_off = info.cap_offset if info.flags & 8 else 0  # RegionFlag.CAPS
    seen = set()
    while cap_off and cap_off + CAP_HEADER.size <= len(payload) and cap_off not in seen:
        seen.add(cap_off)
        cap = CAP_HEADER.unpack(payload, cap_off)
        if cap.id == RegionCap.SPARSE_MMAP and cap_off + SPARSE_MMAP.size <= len(payload):
            sparse = SPARSE_MMAP.unpack(payload, cap_off)
            pos = cap_off + SPARSE_MMAP.size
            for _ in range(sparse.nr_areas):
                if pos + SPARSE_AREA.size > len(payload):
                    break
                area = SPARSE_AREA.unpack(payload, pos)
                reply.areas.append((area.offset, area.size))
                pos += SPARSE_AREA.size
        cap_off = cap.next
    return reply
