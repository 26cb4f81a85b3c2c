"""The zone model of a Zoned Namespace (NVMe ZNS command set): zones, their state
machine, open/active resource accounting, and persistence of the zone state.

Why a model apart from the commands: the same transitions are driven by the
host (Zone Management Send, writes, Zone Append in ``zns_commands.py``), by the
monitor (``info zones``) and by fault rules (a zone made read-only or offline),
and every one of them must keep the resource counters and the persisted table
right. So every state change goes through ``ZoneModel._set_state``.

States and transitions follow the ZNS specification (figure "Zone State
Machine"): Empty, Implicitly Opened, Explicitly Opened, Closed, Full, and the
controller-only Read Only and Offline. Open zones (ZSIO, ZSEO) count against
the Maximum Open Resources, open and closed zones against the Maximum Active
Resources. As QEMU does, a write that needs an open resource while all are
taken first closes the oldest implicitly opened zone (the spec allows it), so a
host that never opens zones explicitly never sees Too Many Open Zones.

Persistence: a file-backed namespace keeps its zone table in ``FILE.zones``, a
small file mapped with ``MAP_SHARED``: a state change or a write pointer move
is a store into the mapping, which the kernel writes back even if nvshell is
killed; ``sync()`` (Flush, shutdown, close) forces it to disk. On load, zones
that were open become closed (empty if nothing was written), as after a power
cycle. A table made for another geometry is refused with a message, never
silently reinterpreted.

All methods are thread safe (one lock per namespace): controllers of a
subsystem share a namespace from different IOThreads.
"""

from __future__ import annotations

import enum
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterator

from nvshell.device import trace as T
from nvshell.device.backends import Backend, BackendError
from nvshell.device.layout import Layout
from nvshell.device.nvme.namespace import NamespaceError, NvmNamespace
from nvshell.device.nvme.spec import CSI, IDENTIFY_SIZE, LBA_FORMATS
from nvshell.device.nvme.status import NvmeError, Status


class ZoneState(enum.IntEnum):
    """Zone State values (Zone Descriptor byte 1, bits 7:4)."""
    EMPTY = 0x1
    IMPLICITLY_OPENED = 0x2
    EXPLICITLY_OPENED = 0x3
    CLOSED = 0x4
    READ_ONLY = 0xD
    FULL = 0xE
    OFFLINE = 0xF

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


OPEN_STATES = frozenset({ZoneState.IMPLICITLY_OPENED, ZoneState.EXPLICITLY_OPENED})
ACTIVE_STATES = OPEN_STATES | {ZoneState.CLOSED}

#: Zone Type: the only one the ZNS command set defines.
ZONE_TYPE_SWR = 0x2
#: Zone Attributes (descriptor byte 2).
ZA_ZFC = 1 << 0        # zone finished by controller
ZA_FZR = 1 << 1        # finish zone recommended
ZA_RZR = 1 << 2        # reset zone recommended
ZA_ZDEV = 1 << 7       # zone descriptor extension valid
#: Optional Zoned Command Support: read across zone boundaries.
OZCS_RAZB = 1 << 0
#: MAR / MOR value for "no limit".
NO_LIMIT = 0xFFFFFFFF
#: Zone descriptor extension sizes are in units of 64 bytes.
ZDES_UNIT = 64

#: Zone Descriptor (64 bytes), as Zone Management Receive returns it.
ZONE_DESCRIPTOR = Layout("ZoneDescriptor", [
    (0, "zt", "B"), (1, "zs", "B"), (2, "za", "B"), (3, "zai", "B"),
    (8, "zcap", "Q"), (16, "zslba", "Q"), (24, "wp", "Q"),
], size=64)
#: Report Zones data structure header (64 bytes); descriptors follow.
REPORT_HEADER = Layout("ZoneReportHeader", [(0, "nr_zones", "Q")], size=64)

#: I/O Command Set specific Identify Namespace for the ZNS command set (CNS 05h,
#: CSI 02h); LBAFE[i] (16 bytes each, from byte 2816) gives zone size (in
#: logical blocks of LBA format i) and the descriptor extension size (64 B units).
LBAFE_OFFSET = 2816
ID_NS_ZONED = Layout("IdNamespaceZoned", [
    (0, "zoc", "H"), (2, "ozcs", "H"), (4, "mar", "I"), (8, "mor", "I"), (12, "rrl", "I"), (16, "frl", "I"),
    *[f for i in range(len(LBA_FORMATS))
      for f in ((LBAFE_OFFSET + 16 * i, f"zsze{i}", "Q"), (LBAFE_OFFSET + 16 * i + 8, f"zdes{i}", "B"))],
], size=IDENTIFY_SIZE)
#: I/O Command Set specific Identify Controller for ZNS (CNS 06h, CSI 02h).
ID_CTRL_ZONED = Layout("IdControllerZoned", [(0, "zasl", "B")], size=IDENTIFY_SIZE)

#: Persisted zone table: header, one record per zone, then the extensions.
STATE_MAGIC = b"NVSHZNS1"
STATE_HEADER = Layout("ZoneStateHeader", [
    (0, "magic", "8s"), (8, "lba_size", "I"), (12, "zdes", "I"),
    (16, "zone_size", "Q"), (24, "zone_cap", "Q"), (32, "nr_zones", "Q"),
], size=64)
STATE_RECORD = Layout("ZoneStateRecord", [(0, "wp", "Q"), (8, "state", "B"), (9, "za", "B")], size=16)
STATE_SUFFIX = ".zones"


@dataclass(slots=True)
class Zone:
    index: int
    zslba: int
    zcap: int
    state: ZoneState = ZoneState.EMPTY
    wp: int = 0
    za: int = 0

    @property
    def write_end(self) -> int:
        """First LBA past the writable part (ZSLBA + ZCAP)."""
        return self.zslba + self.zcap


class ZoneStore:
    """The bytes behind the zone table: a ``bytearray`` (memory/null backends) or a
    shared mapping of ``FILE.zones`` (file backends). Layout: ``STATE_HEADER``,
    ``STATE_RECORD`` x nr_zones, then nr_zones x zdes extension bytes."""

    def __init__(self, header: dict[str, Any], path: str | None = None):
        self.path = path
        nr, zdes = header["nr_zones"], header["zdes"]
        self.records_at = STATE_HEADER.size
        self.ext_at = self.records_at + nr * STATE_RECORD.size
        self.zdes = zdes
        size = self.ext_at + nr * zdes
        want = STATE_HEADER.pack(magic=STATE_MAGIC, **header)
        self.loaded = False
        self._fd: int | None = None
        self._map: mmap.mmap | None = None
        if path is None:
            self.buf: Any = bytearray(size)
            self.buf[:STATE_HEADER.size] = want
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise NamespaceError(f"cannot open zone state file '{path}': {exc.strerror}") from None
        try:
            current = os.fstat(fd).st_size
            if current:
                have = os.pread(fd, STATE_HEADER.size, 0)
                if have != want or current != size:
                    old = STATE_HEADER.unpack(have.ljust(STATE_HEADER.size, b"\0"))
                    what = (f"lba-size {old.lba_size}, zone size {old.zone_size} and capacity {old.zone_cap} "
                            f"blocks, {old.nr_zones} zones, extension {old.zdes} bytes"
                            if old.magic == STATE_MAGIC else "not a zone state file")
                    raise NamespaceError(f"zone state file '{path}' does not fit this namespace ({what}); "
                                         f"remove it to start with every zone empty")
                self.loaded = True
            else:
                os.ftruncate(fd, size)
                os.pwrite(fd, want, 0)
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise NamespaceError(f"cannot use zone state file '{path}': {exc.strerror}") from None
        except NamespaceError:
            os.close(fd)
            raise
        self._fd = fd
        self.buf = self._map

    def record(self, index: int) -> Any:
        return STATE_RECORD.unpack(self.buf, self.records_at + index * STATE_RECORD.size)

    def save(self, zone: Zone) -> None:
        STATE_RECORD.pack_into(self.buf, self.records_at + zone.index * STATE_RECORD.size,
                               wp=zone.wp, state=int(zone.state), za=zone.za)

    def extension(self, index: int) -> bytes:
        at = self.ext_at + index * self.zdes
        return bytes(self.buf[at:at + self.zdes])

    def set_extension(self, index: int, data: bytes) -> None:
        at = self.ext_at + index * self.zdes
        self.buf[at:at + self.zdes] = data[:self.zdes].ljust(self.zdes, b"\0")

    def sync(self) -> None:
        if self._map is not None:
            self._map.flush()

    def close(self) -> None:
        if self._map is not None:
            self._map.flush()
            self._map.close()
            self._map = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ZoneModel:
    """Zones of one namespace (see module docstring). LBAs are in the current format."""

    def __init__(self, *, nsid_of: Any, nr_zones: int, zone_size: int, zone_cap: int, max_open: int,
                 max_active: int, zdes: int, cross_read: bool, store: ZoneStore):
        self._nsid_of = nsid_of
        self.nr_zones = nr_zones
        self.zone_size = zone_size
        self.zone_cap = zone_cap
        self.max_open = max_open
        self.max_active = max_active
        self.zdes = zdes
        self.cross_read = cross_read
        self.store = store
        self.lock = threading.RLock()
        self.n_open = 0
        self.n_active = 0
        #: Implicitly opened zones, oldest first (the one closed to free a resource).
        self._implicit: dict[int, None] = {}
        self.zones = [Zone(i, i * zone_size, zone_cap, wp=i * zone_size) for i in range(nr_zones)]
        if store.loaded:
            self._load()
        else:
            for zone in self.zones:
                store.save(zone)

    # ------------------------------------------------------------ persistence
    def _load(self) -> None:
        for zone in self.zones:
            rec = self.store.record(zone.index)
            try:
                state = ZoneState(rec.state)
            except ValueError:
                state = ZoneState.OFFLINE        # a damaged record: never pretend it is writable
            wp = min(max(rec.wp, zone.zslba), zone.write_end)
            zone.za = rec.za
            if state in OPEN_STATES:             # a restart is a power cycle: open zones close
                state = ZoneState.EMPTY if wp == zone.zslba and not zone.za & ZA_ZDEV else ZoneState.CLOSED
            zone.state, zone.wp = state, wp
            if state in ACTIVE_STATES:
                self.n_active += 1
            self.store.save(zone)

    def sync(self) -> None:
        self.store.sync()

    def shutdown(self) -> None:
        self.store.close()

    # ------------------------------------------------------------ lookup
    def zone_of(self, lba: int) -> Zone:
        index = lba // self.zone_size
        if index >= self.nr_zones:
            raise NvmeError(Status.LBA_OUT_OF_RANGE, msg=f"LBA {lba:#x} beyond the last zone")
        return self.zones[index]

    def zone_at_start(self, slba: int) -> Zone:
        """The zone that starts at ``slba`` (Zone Management Send, Zone Append)."""
        zone = self.zone_of(slba)
        if zone.zslba != slba:
            raise NvmeError(Status.INVALID_FIELD, msg=f"LBA {slba:#x} is not the start of a zone")
        return zone

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in ZoneState}
        with self.lock:
            for zone in self.zones:
                out[zone.state.label] += 1
        return out

    # ------------------------------------------------------------ state changes
    def _set_state(self, zone: Zone, state: ZoneState, why: str) -> None:
        old = zone.state
        if old == state:
            self.store.save(zone)
            return
        self.n_open += (state in OPEN_STATES) - (old in OPEN_STATES)
        self.n_active += (state in ACTIVE_STATES) - (old in ACTIVE_STATES)
        if old == ZoneState.IMPLICITLY_OPENED:
            self._implicit.pop(zone.index, None)
        if state == ZoneState.IMPLICITLY_OPENED:
            self._implicit[zone.index] = None
        zone.state = state
        self.store.save(zone)
        if T.NVME_ZONE_STATE.enabled:
            T.NVME_ZONE_STATE.emit(nsid=self._nsid_of(), zone=zone.index, zslba=zone.zslba,
                                   old=old.label, new=state.label, why=why)

    def _check_resources(self, active: int, opened: int) -> None:
        if self.max_active and self.n_active + active > self.max_active:
            raise NvmeError(Status.TOO_MANY_ACTIVE_ZONES, msg=f"{self.n_active} of {self.max_active} zones active")
        if self.max_open and self.n_open + opened > self.max_open:
            raise NvmeError(Status.TOO_MANY_OPEN_ZONES, msg=f"{self.n_open} of {self.max_open} zones open")

    def _free_open_resource(self) -> None:
        """All open resources taken: close the oldest implicitly opened zone, if any."""
        if self.max_open and self.n_open >= self.max_open and self._implicit:
            victim = self.zones[next(iter(self._implicit))]
            self._set_state(victim, ZoneState.CLOSED, "implicit-close")

    def _open(self, zone: Zone, explicit: bool) -> None:
        state = zone.state
        if state in (ZoneState.EMPTY, ZoneState.CLOSED):
            active = int(state == ZoneState.EMPTY)
            self._free_open_resource()
            self._check_resources(active, 1)
            self._set_state(zone, ZoneState.EXPLICITLY_OPENED if explicit else ZoneState.IMPLICITLY_OPENED,
                            "open" if explicit else "write")
        elif state == ZoneState.IMPLICITLY_OPENED:
            if explicit:
                self._set_state(zone, ZoneState.EXPLICITLY_OPENED, "open")
        elif state != ZoneState.EXPLICITLY_OPENED:
            raise NvmeError(Status.INVALID_ZONE_STATE_TRANSITION, msg=f"open of a {state.label} zone")

    # -- host actions (Zone Management Send), called with the lock held by the caller
    def open_zone(self, zone: Zone) -> None:
        self._open(zone, explicit=True)

    def close_zone(self, zone: Zone) -> None:
        if zone.state in OPEN_STATES:
            self._set_state(zone, ZoneState.CLOSED, "close")
        elif zone.state != ZoneState.CLOSED:
            raise NvmeError(Status.INVALID_ZONE_STATE_TRANSITION, msg=f"close of a {zone.state.label} zone")

    def finish_zone(self, zone: Zone) -> None:
        if zone.state in ACTIVE_STATES or zone.state == ZoneState.EMPTY:
            zone.wp = zone.write_end
            self._set_state(zone, ZoneState.FULL, "finish")
        elif zone.state != ZoneState.FULL:
            raise NvmeError(Status.INVALID_ZONE_STATE_TRANSITION, msg=f"finish of a {zone.state.label} zone")

    def reset_zone(self, zone: Zone) -> bool:
        """Empty the zone; True if it held anything (the caller deallocates its blocks)."""
        if zone.state in (ZoneState.READ_ONLY, ZoneState.OFFLINE):
            raise NvmeError(Status.INVALID_ZONE_STATE_TRANSITION, msg=f"reset of a {zone.state.label} zone")
        if zone.state == ZoneState.EMPTY and not zone.za:
            return False
        zone.wp, zone.za = zone.zslba, 0
        if self.zdes:
            self.store.set_extension(zone.index, b"")
        self._set_state(zone, ZoneState.EMPTY, "reset")
        return True

    def offline_zone(self, zone: Zone) -> None:
        if zone.state == ZoneState.READ_ONLY:
            self._set_state(zone, ZoneState.OFFLINE, "offline")
        elif zone.state != ZoneState.OFFLINE:
            raise NvmeError(Status.INVALID_ZONE_STATE_TRANSITION, msg=f"offline of a {zone.state.label} zone")

    def set_extension(self, zone: Zone, data: bytes) -> None:
        """Set Zone Descriptor Extension: an empty zone becomes closed (it is active now)."""
        if zone.state != ZoneState.EMPTY:
            raise NvmeError(Status.INVALID_ZONE_STATE_TRANSITION,
                            msg=f"descriptor extension on a {zone.state.label} zone")
        self._check_resources(1, 0)
        self.store.set_extension(zone.index, data)
        zone.za |= ZA_ZDEV
        self._set_state(zone, ZoneState.CLOSED, "set-extension")

    # -- controller actions (fault injection, the monitor)
    def force_state(self, zone: Zone, state: ZoneState) -> None:
        """Move a zone to Read Only or Offline, as a failing medium would."""
        if state not in (ZoneState.READ_ONLY, ZoneState.OFFLINE):
            raise ValueError(f"a zone is forced only to read-only or offline, not {state.label}")
        with self.lock:
            if zone.state != ZoneState.OFFLINE:
                self._set_state(zone, state, "fault")

    # ------------------------------------------------------------ I/O rules
    def check_read(self, slba: int, nlb: int) -> None:
        """Zone rules for reads: no offline zone, no zone boundary unless RAZB."""
        zone = self.zone_of(slba)
        end = slba + nlb
        while True:
            if zone.state == ZoneState.OFFLINE:
                raise NvmeError(Status.ZONE_IS_OFFLINE, msg=f"zone {zone.index} is offline")
            boundary = zone.zslba + self.zone_size
            if end <= boundary:
                return
            if not self.cross_read:
                raise NvmeError(Status.ZONE_BOUNDARY_ERROR, msg=f"read crosses the end of zone {zone.index}")
            zone = self.zones[zone.index + 1]

    def begin_write(self, slba: int, nlb: int, append: bool = False) -> Zone:
        """Checks of a write of ``nlb`` blocks at ``slba`` (for an append: the zone's
        write pointer), then the implicit open. Call with ``self.lock`` held, and
        ``end_write`` once the data is stored."""
        zone = self.zone_at_start(slba) if append else self.zone_of(slba)
        state = zone.state
        if state == ZoneState.FULL:
            raise NvmeError(Status.ZONE_IS_FULL, msg=f"zone {zone.index} is full")
        if state == ZoneState.READ_ONLY:
            raise NvmeError(Status.ZONE_IS_READ_ONLY, msg=f"zone {zone.index} is read-only")
        if state == ZoneState.OFFLINE:
            raise NvmeError(Status.ZONE_IS_OFFLINE, msg=f"zone {zone.index} is offline")
        start = zone.wp if append else slba
        if start != zone.wp:
            raise NvmeError(Status.ZONE_INVALID_WRITE, msg=f"write at {slba:#x}, write pointer {zone.wp:#x}")
        if start + nlb > zone.write_end:
            raise NvmeError(Status.ZONE_BOUNDARY_ERROR, msg=f"write of {nlb} blocks at {start:#x} passes the "
                                                            f"zone capacity ({zone.write_end:#x})")
        self._open(zone, explicit=False)
        return zone

    def end_write(self, zone: Zone, nlb: int) -> None:
        zone.wp += nlb
        if zone.wp >= zone.write_end:
            self._set_state(zone, ZoneState.FULL, "write")
        else:
            self.store.save(zone)

    # ------------------------------------------------------------ reports
    def select(self, first: int, state: ZoneState | None) -> Iterator[Zone]:
        for zone in self.zones[first:]:
            if state is None or zone.state == state:
                yield zone

    def descriptor(self, zone: Zone) -> bytes:
        return ZONE_DESCRIPTOR.pack(zt=ZONE_TYPE_SWR, zs=int(zone.state) << 4, za=zone.za,
                                    zcap=zone.zcap, zslba=zone.zslba, wp=zone.wp)

    def report(self, slba: int, state: ZoneState | None, partial: bool, extended: bool, size: int) -> bytes:
        """Zone Management Receive data (``size`` bytes): header and descriptors of the
        zones from the one holding ``slba`` that match ``state``. NR_ZONES counts the
        descriptors returned (partial) or every matching zone (not partial)."""
        first = self.zone_of(slba).index
        entry = ZONE_DESCRIPTOR.size + (self.zdes if extended else 0)
        room = (size - REPORT_HEADER.size) // entry
        out = bytearray()
        count = 0
        with self.lock:
            for zone in self.select(first, state):
                if count < room:
                    out += self.descriptor(zone)
                    if extended:
                        out += self.store.extension(zone.index)
                elif partial:
                    break
                count += 1
        nr = min(count, room) if partial else count
        return (REPORT_HEADER.pack(nr_zones=nr) + bytes(out)).ljust(size, b"\0")

    def describe(self, start: int = 0, count: int | None = None) -> list[dict[str, Any]]:
        """Zones ``start..start+count`` for the monitor."""
        with self.lock:
            zones = self.zones[start:None if count is None else start + count]
            return [{"zone": z.index, "zslba": z.zslba, "state": z.state.label, "wp": z.wp, "zcap": z.zcap,
                     "attrs": z.za} for z in zones]


class ZonedNamespace(NvmNamespace):
    """A namespace of the Zoned Namespace command set (CSI 02h).

    Sizes are in bytes (as the object properties): ``zone_size`` and
    ``zone_capacity`` (0 = the zone size) must be multiples of the LBA size;
    ``zone_max_open``/``zone_max_active`` 0 = no limit; the usable capacity is
    the whole zones that fit the backend. ``zone_state_file`` persists the zone
    table (None: kept in memory).
    """

    csi = CSI.ZONED
    kind = "zoned"

    def __init__(self, backend: Backend, *, zone_size: int = 128 << 20, zone_capacity: int = 0,
                 zone_max_open: int = 0, zone_max_active: int = 0, zone_descriptor_extension_size: int = 0,
                 zone_cross_read: bool = False, zone_state_file: str | None = None, **kw: Any):
        from nvshell.device.nvme.zns_commands import ZONED
        self.commands = ZONED
        self.zone_size_bytes = int(zone_size)
        self.zone_cap_bytes = int(zone_capacity) or int(zone_size)
        self.max_open = int(zone_max_open)
        self.max_active = int(zone_max_active)
        self.zdes = int(zone_descriptor_extension_size)
        self.cross_read = bool(zone_cross_read)
        self.state_file = zone_state_file
        self.zones: ZoneModel | None = None
        if self.zone_cap_bytes > self.zone_size_bytes:
            raise NamespaceError(f"Parameter 'zone-capacity' ({self.zone_cap_bytes}) must not exceed "
                                 f"zone-size ({self.zone_size_bytes})")
        if self.zdes % ZDES_UNIT or self.zdes > 255 * ZDES_UNIT:
            raise NamespaceError(f"Parameter 'zone-descriptor-extension-size' expects a multiple of 64 up to "
                                 f"{255 * ZDES_UNIT}, not {self.zdes}")
        if self.max_open and self.max_active and self.max_open > self.max_active:
            raise NamespaceError(f"Parameter 'zone-max-open' ({self.max_open}) must not exceed "
                                 f"zone-max-active ({self.max_active})")
        if backend.size < self.zone_size_bytes:
            raise NamespaceError(f"Parameter 'zone-size' ({self.zone_size_bytes}) is larger than the namespace "
                                 f"({backend.size} bytes): not even one zone fits")
        super().__init__(backend, **kw)

    def _set_format(self, fmt: Any) -> None:
        if fmt.pi:
            # Zone Append would have to remap reference tags (PIREMAP): not done, so refused.
            raise NamespaceError("Parameter 'pi' must be 0 on a zoned namespace (metadata without "
                                 "protection information works)")
        lba_size = fmt.lba_size
        for name, value in (("zone-size", self.zone_size_bytes), ("zone-capacity", self.zone_cap_bytes)):
            if value % lba_size:
                raise NamespaceError(f"Parameter '{name}' ({value}) expects a multiple of the lba-size ({lba_size})")
        super()._set_format(fmt)
        zsze = self.zone_size_bytes // lba_size
        nr_zones = self.backend.size // self.zone_size_bytes
        if self.max_active > nr_zones or self.max_open > nr_zones:
            raise NamespaceError(f"Parameter 'zone-max-{'active' if self.max_active > nr_zones else 'open'}' "
                                 f"exceeds the number of zones ({nr_zones})")
        self.nlbas = nr_zones * zsze
        old = self.zones
        if old is not None:
            old.shutdown()
        header = {"lba_size": lba_size, "zdes": self.zdes, "zone_size": zsze,
                  "zone_cap": self.zone_cap_bytes // lba_size, "nr_zones": nr_zones}
        store = ZoneStore(header, self.state_file)
        self.zones = ZoneModel(nsid_of=lambda: self.nsid, nr_zones=nr_zones, zone_size=zsze,
                               zone_cap=header["zone_cap"], max_open=self.max_open, max_active=self.max_active,
                               zdes=self.zdes, cross_read=self.cross_read, store=store)

    # ------------------------------------------------------------ identify
    def identify_ns_nvm(self) -> bytes:
        """The NVM command set specific structure (a zoned namespace answers CSI 00h too)."""
        return NvmNamespace.identify_ns_csi(self)

    def identify_ns_csi(self) -> bytes:
        """CNS 05h, CSI 02h: resources, cross-zone read, zone size per LBA format."""
        lbafe: dict[str, int] = {}
        for i, (lbads, _ms) in enumerate(LBA_FORMATS):
            lbafe[f"zsze{i}"] = self.zone_size_bytes >> lbads
            lbafe[f"zdes{i}"] = self.zdes // ZDES_UNIT
        return ID_NS_ZONED.pack(
            zoc=0, ozcs=OZCS_RAZB if self.cross_read else 0,
            mar=self.max_active - 1 if self.max_active else NO_LIMIT,
            mor=self.max_open - 1 if self.max_open else NO_LIMIT,
            **lbafe)

    # ------------------------------------------------------------ management
    def format(self, lbaf: int, **kw: Any) -> None:
        """Format NVM: new LBA format, every zone empty (the zone table is rebuilt)."""
        if kw.get("pi"):
            raise NvmeError(Status.INVALID_FORMAT, msg="zoned namespaces carry no protection information")
        if 0 <= lbaf < len(LBA_FORMATS):
            lba_size = 1 << LBA_FORMATS[lbaf][0]
            if self.zone_size_bytes % lba_size or self.zone_cap_bytes % lba_size:
                # refused before anything is erased: the zones must hold whole blocks
                raise NvmeError(Status.INVALID_FORMAT, msg=f"zones of {self.zone_size_bytes} bytes do not hold "
                                                           f"whole {lba_size}-byte blocks")
        if self.state_file:
            try:
                os.unlink(self.state_file)
            except FileNotFoundError:
                pass
        super().format(lbaf, **kw)

    def sync(self) -> None:
        """Make the zone table durable (Flush, shutdown)."""
        if self.zones is not None:
            self.zones.sync()

    def close(self) -> None:
        try:
            if self.zones is not None:
                self.zones.shutdown()
        finally:
            super().close()

    def release_zone(self, zone: Zone) -> None:
        """Deallocate a reset zone's blocks and their metadata (memory backend: freed)."""
        from nvshell.device.nvme import nvm_uncorrectable
        nlb = self.zones.zone_size  # type: ignore[union-attr]
        try:
            self.backend.discard(zone.zslba << self.lbads, nlb << self.lbads)
            if self.metadata is not None:
                self.metadata.deallocate(zone.zslba, nlb)
        except BackendError as exc:
            raise NvmeError(Status.WRITE_FAULT, msg=str(exc)) from None
        nvm_uncorrectable.written(self, zone.zslba, nlb)   # new (empty) content: nothing uncorrectable

    def info(self) -> dict[str, Any]:
        out = super().info()
        zones = self.zones
        assert zones is not None
        out.update({"zone-size": zones.zone_size, "zone-capacity": zones.zone_cap, "zones": zones.nr_zones,
                    "zone-max-open": self.max_open, "zone-max-active": self.max_active,
                    "zone-descriptor-extension-size": self.zdes, "zone-cross-read": self.cross_read,
                    "zone-state-file": self.state_file})
        return out

    def zone_report(self, start: int = 0, count: int | None = None) -> dict[str, Any]:
        """For ``info zones`` / ``x-nvme-query-zones``: geometry, counts by state, zones."""
        zones = self.zones
        assert zones is not None
        if not 0 <= start < zones.nr_zones:
            raise ValueError(f"zone {start} does not exist (the namespace has {zones.nr_zones} zones)")
        with zones.lock:
            return {"nsid": self.nsid, "lba-size": self.lba_size, "zone-size": zones.zone_size,
                    "zone-capacity": zones.zone_cap, "nr-zones": zones.nr_zones,
                    "max-open": self.max_open, "max-active": self.max_active,
                    "open": zones.n_open, "active": zones.n_active, "counts": zones.counts(),
                    "zones": zones.describe(start, count)}


def state_file_for(path: str) -> str:
    """Where the zone table of a file-backed namespace lives."""
    return path + STATE_SUFFIX


def identify_controller_zoned(ctrl: Any) -> bytes:
    """CNS 06h, CSI 02h. ZASL 0: Zone Append may be as large as MDTS allows."""
    return ID_CTRL_ZONED.pack(zasl=0)
