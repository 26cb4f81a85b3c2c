"""Get Log Page (02h): page contents, NUMD/offset handling, RAE, Changed NS List.

The commands run on a real controller in a real subsystem, sent by ``NvmeTestHost`` over vfio-user."""

from __future__ import annotations

import struct
from typing import Iterator

import pytest

from nvshell.device.backends import MemoryBackend

from nvshell.device.nvme.admin_log import effects_log
from nvshell.device.nvme.commands import ADMIN, EFFECT_CSUPP, EFFECT_LBCC, NVM, CommandTable
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.spec import CSI, LogPage, NvmOpcode
from nvshell.device.nvme.status import Status
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.testing import NvmeHostError, NvmeTestHost



def served(directory, subsystem: Subsystem | None = None, **config) -> NvmeTestHost:
    """An enabled host on a served controller; ``host.logs_read``: the log pages it read with
    RAE=0 (the reads that unmask their event type), in order."""
    host = NvmeTestHost.serve(directory, subsystem=subsystem, **config).enable()
    host.logs_read = []
    real = host.ctrl.log_page_read

    def log_page_read(log_id: int, rae: bool = False, cleared: bool = False) -> None:
        if not rae:
            host.logs_read.append(log_id)
        real(log_id, rae, cleared)
    host.ctrl.log_page_read = log_page_read
    return host


@pytest.fixture
def host(tmp_path) -> Iterator[NvmeTestHost]:
    h = served(tmp_path, Subsystem())
    yield h
    h.close()


def ns_1m() -> NvmNamespace:
    return NvmNamespace(MemoryBackend(1 << 20))


def get_log(host: NvmeTestHost, lid: int, length: int, offset: int = 0, nsid: int = 0xFFFFFFFF,
            rae: bool = False, csi: int = 0) -> bytes:
    out = host.log(lid, length, offset=offset, nsid=nsid, rae=rae, csi=csi)
    assert len(out) == length
    return out


def log_error(host: NvmeTestHost, lid: int, length: int = 512, **kw) -> int:
    with pytest.raises(NvmeHostError) as e:
        get_log(host, lid, length, **kw)
    return int(e.value.status)


def test_smart(host: NvmeTestHost) -> None:
    def count() -> None:
        stats = host.ctrl.stats
        stats.bytes_read = 512_001      # 1000 units + 1 byte: rounds up to 2
        stats.bytes_written = 512_000
        stats.host_read_commands = 7
        stats.host_write_commands = 9
    host.run(count)
    d = get_log(host, LogPage.SMART, 512)
    assert d[0] == 0
    assert struct.unpack_from("<H", d, 1)[0] == 0x143
    assert d[3] == 100 and d[4] == 10 and d[5] == 0
    assert int.from_bytes(d[32:48], "little") == 2
    assert int.from_bytes(d[48:64], "little") == 1
    assert int.from_bytes(d[64:80], "little") == 7
    assert int.from_bytes(d[80:96], "little") == 9
    assert int.from_bytes(d[112:128], "little") == 1     # power cycles
    assert host.logs_read == [LogPage.SMART]
    assert get_log(host, LogPage.SMART, 512, nsid=0) == d
    assert log_error(host, LogPage.SMART, nsid=1) == Status.INVALID_FIELD


def test_error_log_newest_first(host: NvmeTestHost) -> None:
    host.run(lambda: host.ctrl.error_log.record(1, 10, Status.LBA_OUT_OF_RANGE, True, nsid=1, lba=99))
    host.run(host.ctrl.error_log.record, 0, 11, Status.INVALID_FIELD)
    d = get_log(host, LogPage.ERROR, 4096)
    count, sqid, cid, sf, loc, lba, nsid = struct.unpack_from("<QHHHHQI", d, 0)
    assert (count, sqid, cid) == (2, 0, 11) and sf >> 1 == Status.INVALID_FIELD
    count, sqid, cid, sf, loc, lba, nsid = struct.unpack_from("<QHHHHQI", d, 64)
    assert (count, sqid, cid, lba, nsid) == (1, 1, 10, 99, 1)
    assert (sf >> 1) & 0x7FF == Status.LBA_OUT_OF_RANGE and sf & 0x8000
    assert d[128:] == bytes(4096 - 128)
    assert host.logs_read == [LogPage.ERROR]


def test_fw_slot(host: NvmeTestHost) -> None:
    d = get_log(host, LogPage.FW_SLOT, 512)
    assert d[0] == 1 and d[8:16] == b"1.0     " and d[16:] == bytes(512 - 16)


def test_changed_ns_list_clear_on_read_and_rae(host: NvmeTestHost) -> None:
    host.run(host.ctrl.note_changed_namespace, 3)
    host.run(host.ctrl.note_changed_namespace, 1)
    d = get_log(host, LogPage.CHANGED_NS_LIST, 4096, rae=True)
    assert struct.unpack_from("<3I", d) == (1, 3, 0)
    assert host.ctrl.changed_namespaces == [1, 3] and host.logs_read == []   # RAE: retained
    assert get_log(host, LogPage.CHANGED_NS_LIST, 4096) == d
    assert host.ctrl.changed_namespaces == [] and host.logs_read == [LogPage.CHANGED_NS_LIST]
    assert get_log(host, LogPage.CHANGED_NS_LIST, 4096) == bytes(4096)


def test_changed_ns_list_overflow(host: NvmeTestHost) -> None:
    host.run(lambda: [host.ctrl.note_changed_namespace(nsid) for nsid in range(1, 1100)])
    d = get_log(host, LogPage.CHANGED_NS_LIST, 4096)
    assert struct.unpack_from("<2I", d) == (0xFFFFFFFF, 0)


def test_changed_ns_list_after_subsystem_attach(tmp_path) -> None:
    s = Subsystem()
    a = served(tmp_path, s)
    s.add_namespace(ns_1m(), 4)
    s.attach(4, a.ctrl)
    assert struct.unpack_from("<2I", get_log(a, LogPage.CHANGED_NS_LIST, 4096)) == (4, 0)
    a.close()


def test_offset_and_length(host: NvmeTestHost) -> None:
    full = get_log(host, LogPage.FW_SLOT, 512)
    assert get_log(host, LogPage.FW_SLOT, 8, offset=8) == full[8:16]
    # Longer than the page: the rest reads as zeros.
    assert get_log(host, LogPage.FW_SLOT, 1024) == full + bytes(512)
    assert get_log(host, LogPage.FW_SLOT, 512, offset=504) == full[504:] + bytes(504)
    assert log_error(host, LogPage.FW_SLOT, offset=2) == Status.INVALID_FIELD
    assert log_error(host, LogPage.FW_SLOT, offset=512) == Status.INVALID_FIELD
    assert log_error(host, LogPage.SMART, offset=1 << 32) == Status.INVALID_FIELD
    # NUMDU: 4 + 64 KiB dwords.
    big = get_log(host, LogPage.SMART, (0x10000 + 1) * 4)
    assert len(big) == 0x40004


def test_rae_does_not_unmask(host: NvmeTestHost) -> None:
    get_log(host, LogPage.SMART, 512, rae=True)
    assert host.logs_read == []


@pytest.mark.parametrize("lid", [0x0C, 0x70, 0xFF])
def test_unknown_log(host: NvmeTestHost, lid: int) -> None:
    assert log_error(host, lid) == Status.INVALID_LOG_PAGE


def test_effects_log(host: NvmeTestHost) -> None:
    d = get_log(host, LogPage.CMD_EFFECTS, 4096, csi=CSI.NVM)
    acs = struct.unpack_from("<256I", d, 0)
    for info in ADMIN:
        assert acs[info.opcode] == EFFECT_CSUPP | info.effects
    assert acs[0x06] & EFFECT_CSUPP and acs[0x02] & EFFECT_CSUPP and acs[0x15] & EFFECT_CSUPP
    assert acs[0x03] == 0
    io = CommandTable("io")
    io.command(NvmOpcode.WRITE, effects=EFFECT_LBCC)(lambda c, m: None)
    d = effects_log(io)
    assert struct.unpack_from("<I", d, 1024 + 4)[0] == EFFECT_CSUPP | EFFECT_LBCC
    assert struct.unpack_from("<I", d, 1024)[0] == 0


def test_effects_log_io_table_by_csi(host: NvmeTestHost) -> None:
    """IOCS: NVM's table for CSI NVM, the Zoned table for CSI 02h (whether or not a zoned
    namespace is attached), else the commands of an active namespace of that set."""
    from nvshell.device.nvme.zns_commands import ZONED
    d = get_log(host, LogPage.CMD_EFFECTS, 4096, csi=CSI.NVM)
    assert d[1024:] == effects_log(NVM)[1024:] and d[1024:] != bytes(3072)
    assert struct.unpack_from("<I", d, 1024 + 4 * 0x7D)[0] == 0
    d = get_log(host, LogPage.CMD_EFFECTS, 4096, csi=CSI.ZONED)
    assert d[1024:] == effects_log(ZONED)[1024:]
    assert struct.unpack_from("<I", d, 1024 + 4 * 0x7D)[0] == EFFECT_CSUPP | EFFECT_LBCC
    assert get_log(host, LogPage.CMD_EFFECTS, 4096, csi=1)[1024:] == bytes(3072)
    kv = CommandTable("kv")
    kv.command(0x79, "kv-thing", effects=EFFECT_LBCC)(lambda c, m: None)

    class KvNamespace(NvmNamespace):
        """A namespace of a command set nvshell does not implement (CSI 01h)."""
        csi = 1
        commands = kv
    ns = KvNamespace(MemoryBackend(1 << 20))
    host.subsys.add_namespace(ns)
    host.subsys.attach(ns.nsid, host.ctrl, notify=False)
    d = get_log(host, LogPage.CMD_EFFECTS, 4096, csi=1)
    assert struct.unpack_from("<256I", d, 1024) == struct.unpack_from("<256I", effects_log(kv), 1024)


def test_real_controller_stats_and_error_log(tmp_path) -> None:
    """SMART and Error Information from the controller's own SmartStats/ErrorLog."""
    rig = served(tmp_path, Subsystem(), serial="X")
    ctrl = rig.ctrl

    def happen() -> None:
        ctrl.stats.add_read(1_024_000)
        ctrl.stats.host_read_commands = 3
        ctrl.error_log.record(1, 7, Status.LBA_OUT_OF_RANGE, True, nsid=1, lba=5)
        ctrl.error_log.record(0, 8, Status.INVALID_FIELD, False, param_loc=0)
    rig.run(happen)

    def read(lid: int, length: int) -> bytes:
        return get_log(rig, lid, length)
    d = read(LogPage.SMART, 512)
    assert int.from_bytes(d[32:48], "little") == 2 and int.from_bytes(d[64:80], "little") == 3
    assert struct.unpack_from("<H", d, 1)[0] == ctrl.stats.temperature
    assert int.from_bytes(d[176:192], "little") == 2
    d = read(LogPage.ERROR, 128)
    count, sqid, cid, sf, loc = struct.unpack_from("<QHHHH", d, 0)
    assert (count, cid, loc, sf >> 1) == (2, 8, 0, Status.INVALID_FIELD)
    count, sqid, cid, sf, loc, lba, nsid = struct.unpack_from("<QHHHHQI", d, 64)
    assert (count, cid, loc, lba, nsid) == (1, 7, 0xFFFF, 5, 1) and sf & 0x8000
    rig.run(ctrl.note_changed_namespace, 3)
    assert struct.unpack_from("<2I", read(LogPage.CHANGED_NS_LIST, 4096)) == (3, 0)
    assert ctrl.changed_namespaces == []
    from nvshell.device.nvme.admin_identify import identify_controller
    assert identify_controller(ctrl)[262] == ctrl.error_log.capacity - 1
    rig.close()
