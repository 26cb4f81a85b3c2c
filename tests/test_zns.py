"""Zoned Namespace command set through the vfio-user client: the zone state machine
(every transition), the open/active limits, every zone status, Zone Append (PRP
lists, 64-bit LBAs), zone reports with every option, Identify/log/feature data for
CSI 02h, Namespace Management create with CSI 02h, persistence, and fault rules."""

from __future__ import annotations

import os
import random
import struct

import pytest

from nvshell.device.backends import FileBackend, MemoryBackend
from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme import fault_injector
from nvshell.device.nvme.namespace import NamespaceError
from nvshell.device.nvme.spec import AdminOpcode, CSI, NvmOpcode
from nvshell.device.nvme.status import Status
from nvshell.device.nvme.zoned import ZA_ZDEV, ZoneState, ZonedNamespace
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.testing import CSS_ALL, CSS_NVM, PAGE, NvmeTestHost, status

S = Status
Z = ZoneState
CLOSE, FINISH, OPEN, RESET, OFFLINE, SET_ZDE = 1, 2, 3, 4, 5, 0x10
ZSZE = 128          # zone size, blocks (64 KiB)
ZCAP = 96           # zone capacity, blocks


def zoned(nzones: int = 16, **kw) -> ZonedNamespace:
    args = dict(zone_size=ZSZE * 512, zone_capacity=ZCAP * 512, zone_descriptor_extension_size=64)
    args.update(kw)
    return ZonedNamespace(MemoryBackend(nzones * ZSZE * 512), **args)


def serve(tmp_path, **config) -> NvmeTestHost:
    """One controller with trapped doorbells in a subsystem with room for created namespaces."""
    return NvmeTestHost.serve(tmp_path, name="zctrl", subsystem=Subsystem(capacity=1 << 60), doorbells="trap",
                              max_ioqpairs=2, **config)


@pytest.fixture
def host(tmp_path):
    h = serve(tmp_path)
    yield h
    h.close()


def start(host: NvmeTestHost, css: int = CSS_ALL) -> None:
    """Enable with ``css`` and create I/O queue 1."""
    host.enable(css=css)
    host.create_io_queue(1, 32)


def setup(host: NvmeTestHost, ns: ZonedNamespace, css: int = CSS_ALL) -> int:
    nsid = host.target.add_namespace(ns)
    start(host, css)
    return nsid


# The tests judge statuses: these return them (and the data) instead of raising.
def zms(host: NvmeTestHost, nsid: int, slba: int, zsa: int, select_all: bool = False, data: bytes = b"") -> int:
    return status(host.zone_send(nsid, slba, zsa, select_all=select_all, data=data))


def zmr(host: NvmeTestHost, nsid: int, slba: int, size: int, zra: int = 0, zrasf: int = 0,
        partial: bool = False) -> tuple[int, bytes]:
    e, data = host.zone_receive(nsid, slba, size, action=zra, field=zrasf, partial=partial)
    return status(e), data


def append(host: NvmeTestHost, nsid: int, zslba: int, nlb: int, data: bytes = b"") -> tuple[int, int]:
    e = host.zone_append(nsid, zslba, nlb, data)
    return status(e), e.dw0 | (e.dw1 << 32)


def write_lba(host: NvmeTestHost, nsid: int, slba: int, nlb: int, data: bytes = b"") -> int:
    return status(host.nvm(NvmOpcode.WRITE, slba, nlb, nsid=nsid, data=data)[0])


def read_lba(host: NvmeTestHost, nsid: int, slba: int, nlb: int, lba_size: int = 512) -> tuple[int, bytes]:
    e, data = host.nvm(NvmOpcode.READ, slba, nlb, nsid=nsid, lba_size=lba_size)
    return status(e), data


def identify(host: NvmeTestHost, cns: int, nsid: int = 0, csi: int = 0) -> tuple[int, bytes]:
    e, data = host.admin(AdminOpcode.IDENTIFY, length=PAGE, nsid=nsid, cdw10=cns, cdw11=csi << 24)
    return status(e), data


def buffer(host: NvmeTestHost, data: bytes) -> tuple[int, int]:
    """Guest memory holding ``data``: its PRP1/PRP2."""
    addr = host.alloc(max(1, len(data)))
    host.ram.write(addr, data)
    return host.prp(addr, len(data))


def zstate(ns: ZonedNamespace, index: int) -> ZoneState:
    return ns.zones.zones[index].state


def descriptors(data: bytes, count: int, ext: int = 0) -> list[dict]:
    out = []
    for i in range(count):
        at = 64 + i * (64 + ext)
        zt, zs, za, zai, zcap, zslba, wp = struct.unpack_from("<BBBB4xQQQ", data, at)
        out.append(dict(zt=zt, state=ZoneState(zs >> 4), za=za, zcap=zcap, zslba=zslba, wp=wp,
                        ext=data[at + 64:at + 64 + ext]))
    return out


def nr_zones(data: bytes) -> int:
    return struct.unpack_from("<Q", data)[0]


# ------------------------------------------------------------------ controller side
def test_identify_log_feature_for_zoned(host):
    ns = zoned(zone_max_open=2, zone_max_active=3, zone_cross_read=True)
    nsid = setup(host, ns)
    st, data = identify(host, 0x05, nsid, CSI.ZONED)
    assert st == 0
    zoc, ozcs, mar, mor = struct.unpack_from("<HHII", data)
    assert (zoc, ozcs, mar, mor) == (0, 1, 2, 1)
    zsze0, zdes0 = struct.unpack_from("<QB", data, 2816)
    zsze1, zdes1 = struct.unpack_from("<QB", data, 2816 + 16 * 4)    # LBA format 4: 4096 bytes
    assert (zsze0, zdes0, zsze1, zdes1) == (ZSZE, 1, ZSZE // 8, 1)
    # a zoned namespace answers the NVM command set specific structure too
    assert identify(host, 0x05, nsid, CSI.NVM)[0] == 0
    assert identify(host, 0x05, nsid, 1)[0] == S.INVALID_FIELD
    st, data = identify(host, 0x06, 0, CSI.ZONED)
    assert st == 0 and data[0] == 0                              # ZASL 0: MDTS
    st, data = identify(host, 0x1C)
    assert st == 0 and struct.unpack_from("<Q", data)[0] == 0b101   # NVM + ZNS, combination 0
    st, data = identify(host, 0x03, nsid)
    assert st == 0 and b"\x04\x01\x00\x00\x02" in data[:64]     # NIDT_CSI = 02h
    st, data = identify(host, 0x00, nsid)
    nsze, ncap = struct.unpack_from("<QQ", data)
    assert nsze == ncap == 16 * ZSZE
    st, data = identify(host, 0x07, 0, CSI.ZONED)                 # active NSIDs of CSI 2
    assert struct.unpack_from("<I", data)[0] == nsid
    # Commands Supported and Effects, per CSI
    for csi, present in ((CSI.ZONED, True), (CSI.NVM, False)):
        buf = host.alloc(PAGE)
        e = host.cmd(AdminOpcode.GET_LOG_PAGE, dptr1=buf, cdw10=0x05 | (1023 << 16), cdw14=csi << 24)
        assert status(e) == 0
        iocs = struct.unpack_from("<256I", host.ram.read(buf, PAGE), 1024)
        for op in (0x79, 0x7A, 0x7D):
            assert bool(iocs[op] & 1) is present, (csi, op)
        assert iocs[0x01] & 0b11 == 0b11                          # write: CSUPP + LBCC
    assert iocs[0x7D] == 0 and identify(host, 0x1C)[0] == 0
    # I/O Command Set Profile (19h): one combination, index 0
    e = host.cmd(AdminOpcode.GET_FEATURES, cdw10=0x19)
    assert status(e) == 0 and e.dw0 == 0
    assert status(host.cmd(AdminOpcode.SET_FEATURES, cdw10=0x19, cdw11=0)) == 0
    assert status(host.cmd(AdminOpcode.SET_FEATURES, cdw10=0x19, cdw11=1)) == S.IO_COMMAND_SET_COMBINATION_REJECTED
    # CAP.CSS advertises I/O command sets
    assert host.ctrl.cap >> 37 & 0x41 == 0x41


def test_zone_commands_need_all_command_sets(tmp_path):
    h = serve(tmp_path)
    try:
        ns = zoned()
        nsid = setup(h, ns, CSS_NVM)
        assert zms(h, nsid, 0, OPEN) == S.INVALID_OPCODE
        assert zmr(h, nsid, 0, 4096)[0] == S.INVALID_OPCODE
        assert append(h, nsid, 0, 1)[0] == S.INVALID_OPCODE
        assert write_lba(h, nsid, 0, 1) == 0                       # NVM commands keep the zone rules
        assert write_lba(h, nsid, 5, 1) == S.ZONE_INVALID_WRITE
    finally:
        h.close()


# ------------------------------------------------------------------ the state machine
def _make(host: NvmeTestHost, nsid: int, ns: ZonedNamespace, index: int, state: ZoneState) -> None:
    zslba = index * ZSZE
    if state == Z.IMPLICITLY_OPENED:
        assert write_lba(host, nsid, zslba, 1) == 0
    elif state == Z.EXPLICITLY_OPENED:
        assert zms(host, nsid, zslba, OPEN) == 0
    elif state == Z.CLOSED:
        assert write_lba(host, nsid, zslba, 2) == 0 and zms(host, nsid, zslba, CLOSE) == 0
    elif state == Z.FULL:
        assert zms(host, nsid, zslba, FINISH) == 0
    elif state in (Z.READ_ONLY, Z.OFFLINE):
        ns.zones.force_state(ns.zones.zones[index], state)
    assert zstate(ns, index) == state


E = None  # Invalid Zone State Transition
#: action -> {from state: resulting state, or E}
TRANSITIONS = {
    OPEN: {Z.EMPTY: Z.EXPLICITLY_OPENED, Z.IMPLICITLY_OPENED: Z.EXPLICITLY_OPENED,
           Z.EXPLICITLY_OPENED: Z.EXPLICITLY_OPENED, Z.CLOSED: Z.EXPLICITLY_OPENED, Z.FULL: E, Z.READ_ONLY: E,
           Z.OFFLINE: E},
    CLOSE: {Z.EMPTY: E, Z.IMPLICITLY_OPENED: Z.CLOSED, Z.EXPLICITLY_OPENED: Z.CLOSED, Z.CLOSED: Z.CLOSED,
            Z.FULL: E, Z.READ_ONLY: E, Z.OFFLINE: E},
    FINISH: {Z.EMPTY: Z.FULL, Z.IMPLICITLY_OPENED: Z.FULL, Z.EXPLICITLY_OPENED: Z.FULL, Z.CLOSED: Z.FULL,
             Z.FULL: Z.FULL, Z.READ_ONLY: E, Z.OFFLINE: E},
    RESET: {Z.EMPTY: Z.EMPTY, Z.IMPLICITLY_OPENED: Z.EMPTY, Z.EXPLICITLY_OPENED: Z.EMPTY, Z.CLOSED: Z.EMPTY,
            Z.FULL: Z.EMPTY, Z.READ_ONLY: E, Z.OFFLINE: E},
    OFFLINE: {Z.EMPTY: E, Z.IMPLICITLY_OPENED: E, Z.EXPLICITLY_OPENED: E, Z.CLOSED: E, Z.FULL: E,
              Z.READ_ONLY: Z.OFFLINE, Z.OFFLINE: Z.OFFLINE},
}


def test_every_transition(host):
    ns = zoned(nzones=40)
    nsid = setup(host, ns)
    index = 0
    for action, table in TRANSITIONS.items():
        for start, result in table.items():
            zslba = index * ZSZE
            _make(host, nsid, ns, index, start)
            got = zms(host, nsid, zslba, action)
            zone = ns.zones.zones[index]
            if result is E:
                assert got == S.INVALID_ZONE_STATE_TRANSITION, (action, start)
                assert zone.state == start
            else:
                assert got == 0, (action, start, hex(got))
                assert zone.state == result, (action, start, zone.state)
                if result == Z.FULL:
                    assert zone.wp == zslba + ZCAP
                if result == Z.EMPTY:
                    assert zone.wp == zslba
            # resources always match the states
            states = [z.state for z in ns.zones.zones]
            assert ns.zones.n_open == sum(s in (Z.IMPLICITLY_OPENED, Z.EXPLICITLY_OPENED) for s in states)
            assert ns.zones.n_active == ns.zones.n_open + states.count(Z.CLOSED)
            index += 1
    # a zone operation addresses a zone by its first LBA, inside the namespace
    assert zms(host, nsid, 1, OPEN) == S.INVALID_FIELD
    assert zms(host, nsid, 40 * ZSZE, OPEN) == S.LBA_OUT_OF_RANGE
    assert zms(host, nsid, 0, 0x06) == S.INVALID_FIELD          # no such action
    assert zms(host, nsid, 0, 0x11) == S.INVALID_FIELD          # Flush Explicit ZRWA Range: no ZRWA


def test_select_all(host):
    ns = zoned(nzones=8)
    nsid = setup(host, ns)
    for i, st in enumerate((Z.IMPLICITLY_OPENED, Z.EXPLICITLY_OPENED, Z.CLOSED, Z.FULL, Z.READ_ONLY)):
        _make(host, nsid, ns, i, st)
    states = lambda: [zstate(ns, i) for i in range(8)]  # noqa: E731
    assert zms(host, nsid, 12345, CLOSE, select_all=True) == 0   # SLBA ignored
    assert states()[:5] == [Z.CLOSED, Z.CLOSED, Z.CLOSED, Z.FULL, Z.READ_ONLY] and states()[5] == Z.EMPTY
    assert zms(host, nsid, 0, OPEN, select_all=True) == 0
    assert states()[:5] == [Z.EXPLICITLY_OPENED] * 3 + [Z.FULL, Z.READ_ONLY] and states()[5] == Z.EMPTY
    assert zms(host, nsid, 0, FINISH, select_all=True) == 0
    assert states()[:5] == [Z.FULL] * 4 + [Z.READ_ONLY] and states()[5] == Z.EMPTY
    assert zms(host, nsid, 0, OFFLINE, select_all=True) == 0
    assert states()[4] == Z.OFFLINE
    assert zms(host, nsid, 0, RESET, select_all=True) == 0
    assert states() == [Z.EMPTY] * 4 + [Z.OFFLINE] + [Z.EMPTY] * 3
    assert ns.zones.n_open == ns.zones.n_active == 0
    assert zms(host, nsid, 0, SET_ZDE, select_all=True, data=bytes(64)) == S.INVALID_FIELD


# ------------------------------------------------------------------ limits
def test_open_and_active_limits(host):
    ns = zoned(nzones=8, zone_max_open=2, zone_max_active=3)
    nsid = setup(host, ns)
    zs = lambda i: i * ZSZE  # noqa: E731
    # implicit opens: the third one closes the oldest implicitly opened zone
    assert write_lba(host, nsid, zs(0), 1) == 0 and write_lba(host, nsid, zs(1), 1) == 0
    assert write_lba(host, nsid, zs(2), 1) == 0
    assert [zstate(ns, i) for i in range(3)] == [Z.CLOSED, Z.IMPLICITLY_OPENED, Z.IMPLICITLY_OPENED]
    # three active: a fourth zone cannot become active
    assert write_lba(host, nsid, zs(3), 1) == S.TOO_MANY_ACTIVE_ZONES
    assert zms(host, nsid, zs(3), OPEN) == S.TOO_MANY_ACTIVE_ZONES
    assert zms(host, nsid, zs(3), SET_ZDE, data=b"x" * 64) == S.TOO_MANY_ACTIVE_ZONES
    assert zstate(ns, 3) == Z.EMPTY
    # explicit opens take open resources; implicitly opened zones make room
    assert zms(host, nsid, zs(0), OPEN) == 0              # closes zone 1 (oldest implicit)
    assert zms(host, nsid, zs(2), OPEN) == 0              # implicit -> explicit: no new resource
    assert [zstate(ns, i) for i in range(3)] == [Z.EXPLICITLY_OPENED, Z.CLOSED, Z.EXPLICITLY_OPENED]
    assert zms(host, nsid, zs(1), OPEN) == S.TOO_MANY_OPEN_ZONES      # both open zones explicit
    assert write_lba(host, nsid, zs(1) + 1, 1) == S.TOO_MANY_OPEN_ZONES   # a write needs one too
    assert zstate(ns, 1) == Z.CLOSED and ns.zones.zones[1].wp == zs(1) + 1
    # Open All needs an open resource for every closed zone
    assert zms(host, nsid, 0, OPEN, select_all=True) == S.TOO_MANY_OPEN_ZONES
    # finishing releases both resources, resetting too
    assert zms(host, nsid, zs(0), FINISH) == 0
    assert write_lba(host, nsid, zs(1) + 1, 1) == 0 and zstate(ns, 1) == Z.IMPLICITLY_OPENED
    assert write_lba(host, nsid, zs(3), 1) == 0 and zstate(ns, 1) == Z.CLOSED   # room made, active 3
    assert zms(host, nsid, zs(2), RESET) == 0
    assert (ns.zones.n_open, ns.zones.n_active) == (1, 2)
    # filling a zone to its capacity makes it full and frees its resources
    assert write_lba(host, nsid, zs(3) + 1, ZCAP - 1) == 0
    assert zstate(ns, 3) == Z.FULL and (ns.zones.n_open, ns.zones.n_active) == (0, 1)


def test_limit_properties_are_checked():
    with pytest.raises(NamespaceError, match="zone-capacity"):
        zoned(zone_capacity=ZSZE * 512 * 2)
    with pytest.raises(NamespaceError, match="zone-max-open"):
        zoned(zone_max_open=4, zone_max_active=3)
    with pytest.raises(NamespaceError, match="zone-max-active"):
        zoned(nzones=4, zone_max_active=5)
    with pytest.raises(NamespaceError, match="zone-size"):
        ZonedNamespace(MemoryBackend(1 << 20), zone_size=3000)
    with pytest.raises(NamespaceError, match="zone-size"):
        ZonedNamespace(MemoryBackend(1 << 20), zone_size=2 << 20)
    with pytest.raises(NamespaceError, match="zone-descriptor-extension-size"):
        zoned(zone_descriptor_extension_size=100)
    with pytest.raises(NamespaceError, match="zone-capacity"):
        ZonedNamespace(MemoryBackend(1 << 20), zone_size=64 << 10, zone_capacity=6000)
    # whole zones only: the tail that holds no zone is not part of the namespace
    ns = ZonedNamespace(MemoryBackend((3 << 20) + 4096), zone_size=1 << 20)
    assert ns.nlbas == 3 * 2048


# ------------------------------------------------------------------ write and read rules
def test_write_rules(host):
    ns = zoned(nzones=4)
    nsid = setup(host, ns)
    payload = random.Random(1).randbytes(8 * 512)
    assert write_lba(host, nsid, 0, 8, payload) == 0
    assert ns.zones.zones[0].wp == 8 and zstate(ns, 0) == Z.IMPLICITLY_OPENED
    assert write_lba(host, nsid, 4, 1) == S.ZONE_INVALID_WRITE          # below the write pointer
    assert write_lba(host, nsid, 9, 1) == S.ZONE_INVALID_WRITE          # above it
    assert write_lba(host, nsid, 8, ZCAP - 7) == S.ZONE_BOUNDARY_ERROR  # past the capacity
    assert write_lba(host, nsid, 4 * ZSZE - 1, 2) == S.LBA_OUT_OF_RANGE
    assert read_lba(host, nsid, 0, 8) == (0, payload)
    assert read_lba(host, nsid, 8, 8) == (0, bytes(8 * 512))            # above the write pointer: zeroes
    # write zeroes is a write: at the write pointer, and it moves it
    e = host.cmd(NvmOpcode.WRITE_ZEROES, 1, nsid=nsid, cdw10=3, cdw12=0)
    assert status(e) == S.ZONE_INVALID_WRITE
    assert status(host.cmd(NvmOpcode.WRITE_ZEROES, 1, nsid=nsid, cdw10=8, cdw12=7)) == 0
    assert status(host.cmd(NvmOpcode.WRITE_ZEROES, 1, nsid=nsid, cdw10=16, cdw12=(1 << 25) | 7)) == 0   # DEAC
    assert ns.zones.zones[0].wp == 24
    # the rest of the capacity, then the zone is full
    assert write_lba(host, nsid, 24, ZCAP - 24) == 0
    assert zstate(ns, 0) == Z.FULL
    assert write_lba(host, nsid, ZCAP, 1) == S.ZONE_IS_FULL
    # read-only and offline zones
    ns.zones.force_state(ns.zones.zones[1], Z.READ_ONLY)
    ns.zones.force_state(ns.zones.zones[2], Z.OFFLINE)
    assert write_lba(host, nsid, ZSZE, 1) == S.ZONE_IS_READ_ONLY
    assert read_lba(host, nsid, ZSZE, 1)[0] == 0
    assert write_lba(host, nsid, 2 * ZSZE, 1) == S.ZONE_IS_OFFLINE
    assert read_lba(host, nsid, 2 * ZSZE, 1)[0] == S.ZONE_IS_OFFLINE
    assert status(host.cmd(NvmOpcode.VERIFY, 1, nsid=nsid, cdw10=2 * ZSZE, cdw12=0)) == S.ZONE_IS_OFFLINE
    assert status(host.nvm(NvmOpcode.COMPARE, 2 * ZSZE, 1, nsid=nsid)[0]) == S.ZONE_IS_OFFLINE
    # reads never cross a zone boundary without cross-zone read
    assert read_lba(host, nsid, ZSZE - 4, 8)[0] == S.ZONE_BOUNDARY_ERROR
    assert status(host.cmd(NvmOpcode.VERIFY, 1, nsid=nsid, cdw10=ZSZE - 1, cdw12=1)) == S.ZONE_BOUNDARY_ERROR
    # flush works and syncs the zone table
    assert status(host.cmd(NvmOpcode.FLUSH, 1, nsid=nsid)) == 0


def test_cross_zone_read(host):
    ns = zoned(nzones=4, zone_cross_read=True)
    nsid = setup(host, ns)
    assert read_lba(host, nsid, ZSZE - 4, 8)[0] == 0
    ns.zones.force_state(ns.zones.zones[1], Z.OFFLINE)
    assert read_lba(host, nsid, ZSZE - 4, 8)[0] == S.ZONE_IS_OFFLINE   # an offline zone on the way
    assert read_lba(host, nsid, 2 * ZSZE - 4, 8)[0] == S.ZONE_IS_OFFLINE


def test_copy_follows_the_zone_rules(host):
    ns = zoned(nzones=4)
    nsid = setup(host, ns)
    data = random.Random(2).randbytes(16 * 512)
    assert write_lba(host, nsid, 0, 16, data) == 0

    def copy(sdlba, ranges):
        desc = b"".join(struct.pack("<8xQH14x", slba, nlb - 1) for slba, nlb in ranges)
        buf, prp2 = buffer(host, desc)
        return status(host.cmd(NvmOpcode.COPY, 1, nsid=nsid, dptr1=buf, dptr2=prp2, cdw10=sdlba & 0xFFFFFFFF,
                              cdw11=sdlba >> 32, cdw12=len(ranges) - 1))

    assert copy(ZSZE, [(0, 8), (8, 8)]) == 0
    assert read_lba(host, nsid, ZSZE, 16) == (0, data)
    assert ns.zones.zones[1].wp == ZSZE + 16 and zstate(ns, 1) == Z.IMPLICITLY_OPENED
    assert copy(ZSZE + 3, [(0, 1)]) == S.ZONE_INVALID_WRITE            # destination off the write pointer
    assert copy(2 * ZSZE, [(ZSZE - 2, 4)]) == S.ZONE_BOUNDARY_ERROR    # source crosses a boundary
    assert copy(ZSZE + 16, [(0, ZCAP)]) == S.ZONE_BOUNDARY_ERROR       # destination past the capacity
    ns.zones.force_state(ns.zones.zones[3], Z.OFFLINE)
    assert copy(2 * ZSZE, [(3 * ZSZE, 1)]) == S.ZONE_IS_OFFLINE


def test_reset_releases_memory(host):
    ns = zoned(nzones=4)
    nsid = setup(host, ns)
    assert write_lba(host, nsid, 0, 64, b"\x55" * 64 * 512) == 0
    assert ns.backend.allocated > 0
    assert zms(host, nsid, 0, RESET) == 0
    assert ns.backend.allocated == 0
    assert read_lba(host, nsid, 0, 8) == (0, bytes(8 * 512))


# ------------------------------------------------------------------ zone append
def test_zone_append(host):
    ns = zoned(nzones=4)
    nsid = setup(host, ns)
    a = random.Random(3).randbytes(3 * 512)
    b = random.Random(4).randbytes(40 * 512)        # 20 KiB: five pages, a PRP list
    assert append(host, nsid, ZSZE, 3, a) == (0, ZSZE)
    assert append(host, nsid, ZSZE, 40, b) == (0, ZSZE + 3)
    assert read_lba(host, nsid, ZSZE, 43) == (0, a + b)
    assert zstate(ns, 1) == Z.IMPLICITLY_OPENED and ns.zones.zones[1].wp == ZSZE + 43
    # an unaligned PRP1 with a list: the data still lands in order
    c = random.Random(5).randbytes(16 * 512)
    base = host.alloc(4 * PAGE)
    host.ram.write(base + 512, c[:PAGE - 512])
    host.ram.write(base + PAGE, c[PAGE - 512:])
    plist = host.alloc(PAGE)
    host.ram.write(plist, struct.pack("<2Q", base + PAGE, base + 2 * PAGE))
    e = host.cmd(NvmOpcode.ZONE_APPEND, 1, nsid=nsid, dptr1=base + 512, dptr2=plist, cdw10=ZSZE, cdw12=15)
    assert status(e) == 0 and e.dw0 == ZSZE + 43
    assert read_lba(host, nsid, ZSZE + 43, 16) == (0, c)
    # errors
    assert append(host, nsid, ZSZE + 1, 1)[0] == S.INVALID_FIELD                 # not the zone start
    assert append(host, nsid, 4 * ZSZE, 1)[0] == S.LBA_OUT_OF_RANGE
    assert append(host, nsid, ZSZE, ZCAP - 58)[0] == S.ZONE_BOUNDARY_ERROR      # 59 + 38 > 96
    assert append(host, nsid, ZSZE, 1025)[0] == S.INVALID_FIELD                  # over MDTS (512 KiB)
    assert append(host, nsid, ZSZE, ZCAP - 59) == (0, ZSZE + 59)                 # exactly to capacity
    assert zstate(ns, 1) == Z.FULL
    assert append(host, nsid, ZSZE, 1)[0] == S.ZONE_IS_FULL
    ns.zones.force_state(ns.zones.zones[2], Z.READ_ONLY)
    assert append(host, nsid, 2 * ZSZE, 1)[0] == S.ZONE_IS_READ_ONLY
    ns.zones.force_state(ns.zones.zones[3], Z.OFFLINE)
    assert append(host, nsid, 3 * ZSZE, 1)[0] == S.ZONE_IS_OFFLINE


def test_zone_append_returns_a_64_bit_lba(host):
    zone = 1 << 30                                   # 1 GiB zones, 4 TiB sparse namespace
    ns = ZonedNamespace(MemoryBackend(4 << 40), zone_size=zone, zone_max_open=0)
    nsid = setup(host, ns)
    zslba = 1 << 32                                  # zone 2048: its LBAs need DW1
    assert append(host, nsid, zslba, 1, b"z" * 512) == (0, zslba)
    assert append(host, nsid, zslba, 1, b"y" * 512) == (0, zslba + 1)
    assert read_lba(host, nsid, zslba, 2) == (0, b"z" * 512 + b"y" * 512)


# ------------------------------------------------------------------ reports
def test_reports_every_option(host):
    ns = zoned(nzones=8)
    nsid = setup(host, ns)
    made = {0: Z.IMPLICITLY_OPENED, 1: Z.EXPLICITLY_OPENED, 2: Z.CLOSED, 3: Z.FULL, 4: Z.READ_ONLY, 5: Z.OFFLINE}
    for i, st in made.items():
        _make(host, nsid, ns, i, st)
    full = 64 + 8 * 64
    st, data = zmr(host, nsid, 0, full)
    assert st == 0 and nr_zones(data) == 8
    zones = descriptors(data, 8)
    for i, z in enumerate(zones):
        assert z["zt"] == 2 and z["zslba"] == i * ZSZE and z["zcap"] == ZCAP
        assert z["state"] == made.get(i, Z.EMPTY)
    assert zones[0]["wp"] == 1 and zones[2]["wp"] == 2 * ZSZE + 2 and zones[3]["wp"] == 3 * ZSZE + ZCAP
    # each reporting option filters on one state
    for zrasf, st_ in enumerate((None, Z.EMPTY, Z.IMPLICITLY_OPENED, Z.EXPLICITLY_OPENED, Z.CLOSED, Z.FULL,
                                 Z.READ_ONLY, Z.OFFLINE)):
        st, data = zmr(host, nsid, 0, full, zrasf=zrasf)
        want = [i for i in range(8) if st_ is None or made.get(i, Z.EMPTY) == st_]
        assert st == 0 and nr_zones(data) == len(want), zrasf
        assert [z["zslba"] // ZSZE for z in descriptors(data, len(want))] == want
    # from the zone holding SLBA (not necessarily its start)
    st, data = zmr(host, nsid, 5 * ZSZE + 7, full)
    assert nr_zones(data) == 3 and descriptors(data, 1)[0]["zslba"] == 5 * ZSZE
    # a buffer for two descriptors: partial counts what it holds, not partial every match
    st, data = zmr(host, nsid, 0, 64 + 2 * 64)
    assert st == 0 and nr_zones(data) == 8 and len(descriptors(data, 2)) == 2
    st, data = zmr(host, nsid, 0, 64 + 2 * 64, partial=True)
    assert st == 0 and nr_zones(data) == 2
    st, data = zmr(host, nsid, 0, 64, zrasf=1)                   # header only
    assert st == 0 and nr_zones(data) == 2
    st, data = zmr(host, nsid, 0, 64, zrasf=1, partial=True)
    assert st == 0 and nr_zones(data) == 0
    # a big report over a PRP list
    st, data = zmr(host, nsid, 0, 3 * PAGE)
    assert st == 0 and nr_zones(data) == 8 and data[full:] == bytes(3 * PAGE - full)
    # errors
    assert zmr(host, nsid, 8 * ZSZE, full)[0] == S.LBA_OUT_OF_RANGE
    assert zmr(host, nsid, 0, full, zra=2)[0] == S.INVALID_FIELD
    assert zmr(host, nsid, 0, full, zrasf=8)[0] == S.INVALID_FIELD
    assert zmr(host, nsid, 0, 60)[0] == S.INVALID_FIELD
    assert zmr(host, nsid, 0, 1 << 20)[0] == S.INVALID_FIELD     # over MDTS


def test_extended_report_and_descriptor_extension(host):
    ns = zoned(nzones=4, zone_descriptor_extension_size=128)
    nsid = setup(host, ns)
    ext = bytes(range(128))
    assert zms(host, nsid, ZSZE, SET_ZDE, data=ext) == 0
    assert zstate(ns, 1) == Z.CLOSED and ns.zones.n_active == 1
    assert zms(host, nsid, ZSZE, SET_ZDE, data=ext) == S.INVALID_ZONE_STATE_TRANSITION   # not empty any more
    assert zms(host, nsid, ZSZE + 1, SET_ZDE, data=ext) == S.INVALID_FIELD
    size = 64 + 4 * (64 + 128)
    st, data = zmr(host, nsid, 0, size, zra=1)
    assert st == 0 and nr_zones(data) == 4
    zones = descriptors(data, 4, ext=128)
    assert zones[1]["za"] & ZA_ZDEV and zones[1]["ext"] == ext
    assert zones[0]["za"] == 0 and zones[0]["ext"] == bytes(128)
    st, data = zmr(host, nsid, 0, size, zra=1, zrasf=4)          # extended + filter: closed zones
    assert nr_zones(data) == 1 and descriptors(data, 1, ext=128)[0]["ext"] == ext
    # a reset drops the extension
    assert zms(host, nsid, ZSZE, RESET) == 0
    st, data = zmr(host, nsid, 0, size, zra=1)
    assert descriptors(data, 4, ext=128)[1]["za"] == 0 and descriptors(data, 4, ext=128)[1]["ext"] == bytes(128)
    # without an extension size: no extended report, no Set Zone Descriptor Extension
    plain = zoned(nzones=2, zone_descriptor_extension_size=0)
    nsid2 = host.target.add_namespace(plain)
    assert zmr(host, nsid2, 0, 4096, zra=1)[0] == S.INVALID_FIELD
    assert zms(host, nsid2, 0, SET_ZDE, data=bytes(64)) == S.INVALID_FIELD


# ------------------------------------------------------------------ namespace management
def test_namespace_management_creates_a_zoned_namespace(host):
    start(host)
    req = bytearray(PAGE)
    struct.pack_into("<QQ", req, 0, 32768, 32768)               # 16 MiB of 512-byte blocks
    buf, _ = buffer(host, bytes(req))
    e = host.cmd(AdminOpcode.NAMESPACE_MANAGEMENT, dptr1=buf, cdw10=0, cdw11=CSI.ZONED << 24)
    assert status(e) == 0
    nsid = e.dw0
    ns = host.subsys.namespaces[nsid]
    assert ns.csi == CSI.ZONED and ns.zones.nr_zones == 1 and ns.zone_size_bytes == 16 << 20
    e = host.cmd(AdminOpcode.NAMESPACE_MANAGEMENT, dptr1=buf, cdw10=0, cdw11=1 << 24)    # key value: no
    assert status(e) == S.INVALID_IO_COMMAND_SET
    ctrl_list = struct.pack("<HH", 1, host.ctrl.cntlid)
    buf2, _ = buffer(host, ctrl_list)
    assert status(host.cmd(AdminOpcode.NAMESPACE_ATTACHMENT, nsid=nsid, dptr1=buf2, cdw10=0)) == 0
    st, data = identify(host, 0x05, nsid, CSI.ZONED)
    assert st == 0 and struct.unpack_from("<Q", data, 2816)[0] == 32768
    assert append(host, nsid, 0, 1) == (0, 0)


# ------------------------------------------------------------------ persistence
def test_zone_state_survives_a_restart(tmp_path):
    path = str(tmp_path / "z.img")
    state = path + ".zones"

    def open_ns(**kw):
        return ZonedNamespace(FileBackend(path, 8 * ZSZE * 512), zone_size=ZSZE * 512, zone_capacity=ZCAP * 512,
                              zone_descriptor_extension_size=64, zone_state_file=state, **kw)

    ns = open_ns()
    z = ns.zones
    with z.lock:
        z.end_write(z.begin_write(0, 5), 5)                    # implicitly opened, wp 5
        z.open_zone(z.zones[1])                                # explicitly opened, nothing written
        z.finish_zone(z.zones[2])
        z.set_extension(z.zones[3], b"E" * 64)
    z.force_state(z.zones[4], Z.READ_ONLY)
    ns.backend.write(0, b"D" * 5 * 512)
    ns.close()
    ns = open_ns()
    z = ns.zones
    assert [zn.state for zn in z.zones[:6]] == [Z.CLOSED, Z.EMPTY, Z.FULL, Z.CLOSED, Z.READ_ONLY, Z.EMPTY]
    assert z.zones[0].wp == 5 and z.zones[2].wp == 2 * ZSZE + ZCAP and z.zones[3].za & ZA_ZDEV
    assert z.store.extension(3) == b"E" * 64
    assert (z.n_open, z.n_active) == (0, 2)
    assert ns.backend.read(0, 5 * 512) == b"D" * 5 * 512
    ns.close()
    # another geometry: refused, the file is not reinterpreted
    with pytest.raises(NamespaceError, match="does not fit"):
        ZonedNamespace(FileBackend(path, 8 * ZSZE * 512), zone_size=2 * ZSZE * 512, zone_state_file=state)
    with open(state, "r+b") as f:
        f.write(b"garbage!")
    with pytest.raises(NamespaceError, match="not a zone state file"):
        open_ns()
    os.unlink(state)
    ns = open_ns()
    assert all(zn.state == Z.EMPTY for zn in ns.zones.zones)
    ns.close()


def test_format_rebuilds_the_zones(host):
    ns = zoned(nzones=4)
    nsid = setup(host, ns)
    assert write_lba(host, nsid, 0, 4) == 0
    assert status(host.cmd(AdminOpcode.FORMAT_NVM, nsid=nsid, cdw10=4)) == 0       # 4096-byte blocks
    assert status(host.cmd(AdminOpcode.FORMAT_NVM, nsid=nsid, cdw10=4 | (1 << 5))) == S.INVALID_FORMAT  # PI
    assert ns.lba_size == 4096 and ns.zones.zone_size == ZSZE // 8
    assert all(z.state == Z.EMPTY for z in ns.zones.zones)
    assert append(host, nsid, ns.zones.zone_size, 1, b"q" * 4096) == (0, ns.zones.zone_size)


# ------------------------------------------------------------------ fault rules
def test_fault_rules_move_zones_and_fail_appends(host):
    ns = zoned(nzones=4)
    nsid = setup(host, ns)
    faults = FaultSet()
    injector = host.run(fault_injector.install, host.ctrl, faults)
    try:
        faults.add(FaultRule.from_args({"id": "ro", "opcode": "write", "slba": ZSZE, "nlb": 1,
                                        "action": "zone-read-only", "count": 1}))
        assert write_lba(host, nsid, ZSZE, 1) == S.ZONE_IS_READ_ONLY
        assert zstate(ns, 1) == Z.READ_ONLY
        faults.add(FaultRule.from_args({"id": "off", "opcode": "read", "slba": 2 * ZSZE,
                                        "action": "zone-offline"}))
        assert read_lba(host, nsid, 2 * ZSZE + 3, 1)[0] == S.ZONE_IS_OFFLINE
        assert zstate(ns, 2) == Z.OFFLINE and read_lba(host, nsid, 0, 1)[0] == 0
        faults.add(FaultRule.from_args({"id": "ap", "opcode": "zone-append", "action": "status",
                                        "status": "zone-is-full", "dnr": True, "count": 1}))
        assert append(host, nsid, 0, 1)[0] == S.ZONE_IS_FULL
        assert append(host, nsid, 0, 1) == (0, 0)
        assert [r.hits for r in faults] == [1, 1, 1]
    finally:
        faults.clear()
        host.run(injector.uninstall)


def test_trace_names_zone_commands(host):
    from nvshell.device import trace as T
    ns = zoned(nzones=2)
    nsid = setup(host, ns)
    host.lba_size(nsid)                         # the host's Identify, before the trace starts
    seen: list[dict] = []
    sink = seen.append
    T.TRACE.add_sink(sink)
    try:
        T.TRACE.set_state("nvme_cmd_submit", True)
        T.TRACE.set_state("nvme_zone_state", True)
        append(host, nsid, 0, 1)
        zms(host, nsid, 0, FINISH)
        zmr(host, nsid, 0, 4096)
    finally:
        T.TRACE.set_state("nvme_cmd_submit", False)
        T.TRACE.set_state("nvme_zone_state", False)
        T.TRACE.remove_sink(sink)
    names = [r["opcode"] for r in seen if r["name"] == "nvme_cmd_submit"]
    assert names == ["zone-append", "zone-management-send", "zone-management-receive"]
    changes = [(r["old"], r["new"], r["why"]) for r in seen if r["name"] == "nvme_zone_state"]
    assert changes == [("empty", "implicitly-opened", "write"), ("implicitly-opened", "full", "finish")]


def test_metadata_formats_and_no_pi(host):
    ns = zoned(nzones=4, ms=8, mset=1)                  # extended LBAs: 520-byte blocks on the wire
    nsid = setup(host, ns)
    data = random.Random(6).randbytes(2 * 520)
    assert append(host, nsid, ZSZE, 2, data) == (0, ZSZE)
    buf, prp2 = buffer(host, bytes(2 * 520))
    assert status(host.cmd(NvmOpcode.READ, 1, nsid=nsid, dptr1=buf, dptr2=prp2, cdw10=ZSZE, cdw12=1)) == 0
    assert host.ram.read(buf, 2 * 520) == data
    assert ns.zones.zones[1].wp == ZSZE + 2
    with pytest.raises(NamespaceError, match="'pi'"):
        zoned(ms=8, pi=1)


def test_write_uncorrectable_is_a_zone_write(host):
    ns = zoned(nzones=2)
    nsid = setup(host, ns)
    assert status(host.cmd(NvmOpcode.WRITE_UNCORRECTABLE, 1, nsid=nsid, cdw10=4, cdw12=3)) == S.ZONE_INVALID_WRITE
    assert status(host.cmd(NvmOpcode.WRITE_UNCORRECTABLE, 1, nsid=nsid, cdw10=0, cdw12=3)) == 0
    assert ns.zones.zones[0].wp == 4 and zstate(ns, 0) == Z.IMPLICITLY_OPENED
    assert read_lba(host, nsid, 0, 4)[0] == S.UNRECOVERED_READ_ERROR
    assert zms(host, nsid, 0, RESET) == 0                   # the reset zone holds nothing bad
    assert write_lba(host, nsid, 0, 4) == 0 and read_lba(host, nsid, 0, 4)[0] == 0
    assert zms(host, nsid, 0, RESET) == 0 and read_lba(host, nsid, 0, 4) == (0, bytes(2048))


def test_format_refuses_blocks_the_zones_cannot_hold(host):
    ns = ZonedNamespace(MemoryBackend(8 * 6144), zone_size=6144)    # 12 x 512-byte blocks, 1.5 x 4 KiB
    nsid = setup(host, ns)
    assert write_lba(host, nsid, 0, 2, b"k" * 1024) == 0
    assert status(host.cmd(AdminOpcode.FORMAT_NVM, nsid=nsid, cdw10=4)) == S.INVALID_FORMAT
    assert ns.lba_size == 512 and read_lba(host, nsid, 0, 2) == (0, b"k" * 1024)   # nothing erased


def test_file_backend_io_off_the_iothread(host, tmp_path):
    """A file backend's I/O runs off the IOThread: the zone commands complete when it is done."""
    path = str(tmp_path / "f.img")
    ns = ZonedNamespace(FileBackend(path, 4 * ZSZE * 512), zone_size=ZSZE * 512, zone_state_file=path + ".zones")
    nsid = setup(host, ns)
    blocks = [random.Random(i).randbytes(8 * 512) for i in range(6)]
    for i, b in enumerate(blocks[:3]):
        assert write_lba(host, nsid, 8 * i, 8, b) == 0
    for i, b in enumerate(blocks[3:]):
        assert append(host, nsid, ZSZE, 8, b) == (0, ZSZE + 8 * i)
    assert read_lba(host, nsid, 0, 24) == (0, b"".join(blocks[:3]))
    assert read_lba(host, nsid, ZSZE, 24) == (0, b"".join(blocks[3:]))
    assert status(host.cmd(NvmOpcode.WRITE_ZEROES, 1, nsid=nsid, cdw10=24, cdw12=7)) == 0
    assert status(host.cmd(NvmOpcode.FLUSH, 1, nsid=nsid)) == 0
    assert ns.zones.zones[0].wp == 32 and ns.zones.zones[1].wp == ZSZE + 24
