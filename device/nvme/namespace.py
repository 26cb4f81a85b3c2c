"""An NVM command set namespace: a backend seen as logical blocks, and its Identify data.

The namespace owns what the host learns about it (Identify Namespace CNS 00,
the NVM command set specific CNS 05, the identification descriptors CNS 03)
and the LBA geometry the I/O handlers in ``nvm.py`` use. It belongs to a
subsystem, not a controller: several controllers (several IOThreads) may issue
I/O to it at once, which the backends allow.

Identifiers (UUID, NGUID, EUI-64) must stay stable across host rescans, or
Linux treats the namespace as a new device. When not given they are derived
deterministically from the UUID, so persisting the UUID persists them all.
"""

from __future__ import annotations

import hashlib
import uuid as uuid_mod
from typing import Any, Callable

from nvshell.device.backends import Backend
from nvshell.device.errors import PropertyError
from nvshell.device.layout import Layout
from nvshell.device.metadata import MetadataStore
from nvshell.device.nvme import commands
from nvshell.device.nvme.lbaf import DPC_ALL, FORMATS, LBA_SIZES, MC_BOTH, METADATA_SIZES, NsFormat, lbaf_index
from nvshell.device.nvme import nvm as _nvm  # noqa: F401  (registers the NVM I/O handlers on commands.NVM)
from nvshell.device.nvme.spec import CSI, ID_NS, IDENTIFY_SIZE, LBA_FORMATS
from nvshell.device.nvme.status import NvmeError, Status

#: I/O Command Set specific Identify Namespace for the NVM command set (CNS 05h,
#: CSI 00h): storage tag mask (none), PI capabilities, and one extended LBA format
#: per LBA format: storage tag size (6:0, none) and the guard format PIF (8:7).
ID_NS_NVM = Layout("IdNamespaceNvm", [
    (0, "lbstm", "Q"), (8, "pic", "B"),
] + [(12 + 4 * i, f"elbaf{i}", "I") for i in range(len(LBA_FORMATS))], size=IDENTIFY_SIZE)
ELBAF_PIF_SHIFT = 7

#: One Namespace Identification Descriptor header (CNS 03h); the NID follows.
NS_ID_DESC = Layout("NsIdDescriptor", [("nidt", "B"), ("nidl", "B"), ("rsvd", "H")])

NIDT_EUI64 = 1
NIDT_NGUID = 2
NIDT_UUID = 3
NIDT_CSI = 4

NSFEAT_THINP = 1 << 0
NSFEAT_OPTPERF = 1 << 4
#: Deallocated blocks read as zeroes (bits 2:0 = 001b); Write Zeroes with DEAC deallocates (bit 3).
DLFEAT = 0x09
NMIC_SHARED = 1 << 0

DEFAULT_MSSRL = 128 * 1024
DEFAULT_MCL = 128 * 1024
DEFAULT_MSRC = 128


class NamespaceError(PropertyError, ValueError):
    """A namespace property is invalid (the object model reports it to the user)."""


def _parse_id(value: Any, size: int, what: str) -> bytes | None:
    """Accept bytes, an int (big-endian, as QEMU's eui64 property) or a hex string."""
    if value is None or value == "" or value == "auto":
        return None
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    elif isinstance(value, int):
        if value < 0 or value >= 1 << (8 * size):
            raise NamespaceError(f"{what} {value:#x} does not fit in {size} bytes")
        raw = value.to_bytes(size, "big")
    elif isinstance(value, str):
        text = value.replace(":", "").replace("-", "").strip()
        if text.lower().startswith("0x"):
            text = text[2:]
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise NamespaceError(f"{what} '{value}' is not {size} hex bytes") from None
    else:
        raise NamespaceError(f"{what} must be bytes, an integer or a hex string, not {type(value).__name__}")
    if len(raw) != size:
        raise NamespaceError(f"{what} '{value}' must be exactly {size} bytes")
    return raw


def _parse_uuid(value: Any) -> uuid_mod.UUID:
    if value is None or value == "" or value == "auto":
        return uuid_mod.uuid4()
    if isinstance(value, uuid_mod.UUID):
        return value
    try:
        return uuid_mod.UUID(bytes=value) if isinstance(value, (bytes, bytearray)) else uuid_mod.UUID(str(value))
    except ValueError:
        raise NamespaceError(f"uuid '{value}' is not a valid UUID") from None


class NvmNamespace:
    """A namespace of the NVM command set over a ``Backend``.

    ``mssrl``/``mcl`` are the Copy limits in bytes (converted to blocks of the
    current format for Identify); ``msrc`` is the maximum number of source
    ranges per Copy (1-based here, 0-based in Identify).
    """

    csi = CSI.NVM
    commands = commands.NVM
    kind = "nvm"

    def __init__(self, backend: Backend, *, lba_size: int = 512, uuid: Any = None, eui64: Any = None,
                 nguid: Any = None, mssrl: int = DEFAULT_MSSRL, mcl: int = DEFAULT_MCL,
                 msrc: int = DEFAULT_MSRC, shared: bool = True, ms: int = 0, mset: int = 0, pi: int = 0,
                 pil: int = 0, pif: int = 0):
        if lba_size not in LBA_SIZES:
            raise NamespaceError(f"Parameter 'lba-size' expects {' or '.join(str(s) for s in LBA_SIZES)}")
        if ms not in METADATA_SIZES:
            raise NamespaceError(f"Parameter 'ms' expects {', '.join(str(m) for m in METADATA_SIZES)}")
        for name, value in (("mset", mset), ("pil", pil)):
            if value not in (0, 1, False, True):
                raise NamespaceError(f"Parameter '{name}' expects 0 or 1, not {value!r}")
        if pil and not pi:
            raise NamespaceError("Parameter 'pil' needs protection information ('pi' 1, 2 or 3)")
        try:
            fmt = NsFormat.make(lbaf_index(lba_size, ms), extended=bool(mset), pi=pi, first=bool(pil), pif=pif)
        except ValueError as exc:
            raise NamespaceError(str(exc)) from None
        if backend.size < lba_size:
            raise NamespaceError(f"backend of {backend.size} bytes is smaller than one {lba_size}-byte block")
        if not 1 <= msrc <= 256:
            raise NamespaceError(f"msrc (maximum source ranges) must be 1..256, not {msrc}")
        for name, value in (("mssrl", mssrl), ("mcl", mcl)):
            if not isinstance(value, int) or value <= 0:
                raise NamespaceError(f"{name} must be a positive number of bytes, not {value!r}")
        if mcl < mssrl:
            raise NamespaceError(f"mcl ({mcl}) must not be smaller than mssrl ({mssrl})")
        self.backend = backend
        self.nsid = 0
        self.ready = True
        self.shared = bool(shared)
        self.uuid = _parse_uuid(uuid)
        digest = hashlib.sha256(b"nvshell-ns:" + self.uuid.bytes).digest()
        #: Derived EUI-64 uses a locally administered OUI-like prefix (0x02 bit set).
        self.eui64 = _parse_id(eui64, 8, "eui64") or bytes([0x02 | (digest[0] & 0xFC)]) + digest[1:8]
        self.nguid = _parse_id(nguid, 16, "nguid") or digest[8:24]
        self.mssrl_bytes = mssrl
        self.mcl_bytes = mcl
        self.msrc = msrc
        self.metadata: MetadataStore | None = None
        #: Identify structures already built: name -> (the inputs they were built from, bytes).
        #: The Linux driver rescans every namespace on every change (four Identify commands
        #: each), so with hundreds of namespaces building them again is most of the device's
        #: work; a changed input (format, sharing) builds them afresh.
        self._built: dict[str, tuple[tuple[Any, ...], bytes]] = {}
        self._set_format(fmt)

    # ------------------------------------------------------------ geometry
    def _set_format(self, fmt: NsFormat) -> None:
        """Switch the geometry (and the metadata store) to ``fmt``; callers erase data first."""
        self.fmt = fmt
        self.lba_size = fmt.lba_size
        self.lbads = fmt.lbaf.lbads
        self.lbaf = fmt.index
        self.ms = fmt.ms
        #: The PI arithmetic of this format (None without protection information).
        self.protection = fmt.protection
        self.nlbas = self.backend.size >> self.lbads
        old, self.metadata = self.metadata, None
        if old is not None:
            old.close()
        if fmt.ms:
            self.metadata = MetadataStore(self.backend, self.nlbas, fmt.ms)
        #: Copy limits in blocks of the current format (at least one block).
        self.mssrl = max(1, min(0xFFFF, self.mssrl_bytes >> self.lbads))
        self.mcl = max(1, min(0xFFFFFFFF, self.mcl_bytes >> self.lbads))

    @property
    def size(self) -> int:
        """Usable bytes (whole blocks)."""
        return self.nlbas << self.lbads

    # ------------------------------------------------------------ identify
    def _memo(self, name: str, key: tuple[Any, ...], build: Callable[[], bytes]) -> bytes:
        """``build()``, or what it returned last time for the same ``key``."""
        got = self._built.get(name)
        if got is not None and got[0] == key:
            return got[1]
        data = build()
        self._built[name] = (key, data)
        return data

    def identify_ns(self) -> bytes:
        """Identify Namespace (CNS 00h)."""
        key = (self.fmt, self.nlbas, self.shared, self.mssrl, self.mcl, self.msrc, self.nguid, self.eui64)
        return self._memo("identify_ns", key, self._build_identify_ns)

    def _build_identify_ns(self) -> bytes:
        # Preferred granularities: 4 KiB (the MemoryBackend chunking is finer
        # than that, and Linux aligns to these for discard and io_opt).
        pref = max(0, (4096 >> self.lbads) - 1)
        nsze = self.nlbas
        return ID_NS.pack(
            nsze=nsze, ncap=nsze, nuse=nsze,
            nsfeat=NSFEAT_OPTPERF,
            nlbaf=len(LBA_FORMATS) - 1,
            flbas=self.fmt.flbas,
            mc=MC_BOTH, dpc=DPC_ALL, dps=self.fmt.dps,
            dlfeat=DLFEAT,
            nmic=NMIC_SHARED if self.shared else 0,
            nvmcap=self.size.to_bytes(16, "little"),
            npwg=pref, npwa=pref, npdg=pref, npda=pref, nows=pref,
            mssrl=self.mssrl, mcl=self.mcl, msrc=self.msrc - 1,
            nguid=self.nguid, eui64=self.eui64,
            **{f"lbaf{i}": f.entry() for i, f in enumerate(FORMATS)},
        )

    def identify_ns_csi(self) -> bytes:
        """I/O command set specific Identify Namespace for CSI NVM (CNS 05h)."""
        pif = self.fmt.pif << ELBAF_PIF_SHIFT
        return self._memo("identify_ns_csi", (pif,),
                          lambda: ID_NS_NVM.pack(**{f"elbaf{i}": pif for i in range(len(LBA_FORMATS))}))

    def id_descriptors(self) -> bytes:
        """Namespace Identification Descriptor list (CNS 03h)."""
        key = (self.eui64, self.nguid, self.uuid, int(self.csi))
        return self._memo("id_descriptors", key, self._build_id_descriptors)

    def _build_id_descriptors(self) -> bytes:
        out = bytearray(IDENTIFY_SIZE)
        pos = 0
        for nidt, nid in ((NIDT_EUI64, self.eui64), (NIDT_NGUID, self.nguid),
                          (NIDT_UUID, self.uuid.bytes), (NIDT_CSI, bytes([int(self.csi)]))):
            NS_ID_DESC.pack_into(out, pos, nidt=nidt, nidl=len(nid))
            pos += NS_ID_DESC.size
            out[pos:pos + len(nid)] = nid
            pos += len(nid)
        return bytes(out)

    # ------------------------------------------------------------ management
    def format(self, lbaf: int, *, mset: int = 0, pi: int = 0, pil: int = 0, ses: int = 0) -> None:
        """Format NVM: switch to LBA format ``lbaf`` with MSET/PI/PIL and destroy all data.

        The guard format stays the namespace's (it belongs to its LBA formats).
        ``ses`` 0 (no secure erase) and 1 (user data erase) both deallocate every
        block, data and metadata: afterwards everything reads as zeroes with
        all-ones metadata, which is what a user data erase promises.
        """
        if ses not in (0, 1):
            raise NvmeError(Status.INVALID_FIELD, msg=f"secure erase setting {ses} not supported")
        try:
            fmt = NsFormat.make(lbaf, extended=bool(mset), pi=pi, first=bool(pil), pif=self.fmt.pif)
        except ValueError as exc:
            raise NvmeError(Status.INVALID_FORMAT, msg=str(exc)) from None
        self.backend.discard(0, self.backend.size)
        if self.metadata is not None:
            self.metadata.erase()
        self._set_format(fmt)

    def close(self) -> None:
        self.ready = False
        if self.metadata is not None:
            self.metadata.close()
        self.backend.close()

    def info(self) -> dict[str, Any]:
        """For the monitor ('info namespaces')."""
        return {"nsid": self.nsid, "csi": int(self.csi), "kind": self.kind, "lba-size": self.lba_size,
                "lbaf": self.lbaf, "ms": self.ms, "mset": int(self.fmt.extended), "pi": self.fmt.pi,
                "pil": int(self.fmt.first), "pif": self.fmt.pif,
                "nlbas": self.nlbas, "size": self.size, "uuid": str(self.uuid),
                "eui64": self.eui64.hex(), "nguid": self.nguid.hex(), "shared": self.shared,
                "ready": self.ready, "backend": self.backend.describe()}

    def __repr__(self) -> str:
        return f"NvmNamespace(nsid={self.nsid}, {self.nlbas}x{self.lba_size}, {self.backend!r})"
