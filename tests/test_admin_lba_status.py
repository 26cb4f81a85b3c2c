"""Write Uncorrectable, Get LBA Status and the LBA Status Information log (0Eh) through the
vfio-user client: reads fail until rewritten, the tracked ranges, MNDW/RL/ATYPE handling,
media-error faults feeding the tracked set, Format clearing it."""

from __future__ import annotations

import struct

import pytest

from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme import nvm_uncorrectable as unc
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, dnr, status

WRITE, READ, WRITE_UNC, COMPARE, WRITE_ZEROES, VERIFY = 0x01, 0x02, 0x04, 0x05, 0x08, 0x0C


@pytest.fixture
def host(tmp_path):
    h = NvmeTestHost.serve(tmp_path, ns_size=4 << 20).enable(admin_depth=64)
    h.create_io_queue()
    yield h
    h.close()


def uncor(h, slba, nlb):
    return h.cmd(WRITE_UNC, 1, nsid=1, cdw10=slba, cdw12=nlb - 1)


def lba_status(h, slba=0, mndw=1023, rl=0, atype=0x11, nsid=1):
    n = (mndw + 1) * 4
    e, data = h.admin(0x86, length=n, nsid=nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32, cdw12=mndw,
                      cdw13=rl | atype << 24)
    if status(e):
        return status(e), []
    nlsd, cmpc = struct.unpack_from("<IB", data)
    descs = [struct.unpack_from("<QIxB", data, 8 + 16 * i) for i in range(nlsd)]
    return cmpc, [(s, n) for s, n, _ in descs]


def test_write_uncorrectable_then_reads_fail_until_written(host):
    d = host.identify_ctrl()
    assert struct.unpack_from("<H", d, 520)[0] & (1 << 1)      # ONCS Write Uncorrectable
    assert status(host.nvm(WRITE, 0, 64, data=b"\x5a" * 64 * 512)[0]) == 0
    assert status(uncor(host, 16, 8)) == 0
    e, _ = host.nvm(READ, 20, 1)
    assert status(e) == Status.UNRECOVERED_READ_ERROR and dnr(e)
    assert status(host.nvm(READ, 8, 16)[0]) == Status.UNRECOVERED_READ_ERROR   # overlaps
    assert status(host.nvm(READ, 0, 16)[0]) == 0 and status(host.nvm(READ, 24, 8)[0]) == 0
    assert status(host.nvm(COMPARE, 16, 1, data=b"\x5a" * 512)[0]) == Status.UNRECOVERED_READ_ERROR
    assert status(host.cmd(VERIFY, 1, nsid=1, cdw10=16, cdw12=0)) == Status.UNRECOVERED_READ_ERROR
    e = host.ctrl.error_log.entries()[0]
    assert e.status == Status.UNRECOVERED_READ_ERROR and e.lba == 16
    # Write part of it: that part reads again, the rest still fails.
    assert status(host.nvm(WRITE, 16, 2, data=b"\x11" * 1024)[0]) == 0
    e, data = host.nvm(READ, 16, 2)
    assert status(e) == 0 and data == b"\x11" * 1024
    assert status(host.nvm(READ, 18, 1)[0]) == Status.UNRECOVERED_READ_ERROR
    assert status(host.cmd(WRITE_ZEROES, 1, nsid=1, cdw10=18, cdw12=5)) == 0
    assert status(host.nvm(READ, 16, 8)[0]) == 0
    assert not unc.ANY
    assert status(uncor(host, 8190, 4)) == Status.LBA_OUT_OF_RANGE


def test_get_lba_status_reports_tracked_ranges(host):
    d = host.identify_ctrl()
    assert struct.unpack_from("<H", d, 256)[0] & (1 << 9)      # OACS Get LBA Status
    assert lba_status(host) == (2, [])
    for slba, nlb in ((100, 4), (200, 1), (104, 2), (5000, 10)):
        assert status(uncor(host, slba, nlb)) == 0
    assert lba_status(host) == (2, [(100, 6), (200, 1), (5000, 10)])
    assert lba_status(host, atype=0x10) == (2, [(100, 6), (200, 1), (5000, 10)])
    assert lba_status(host, slba=102, rl=100) == (2, [(102, 4), (200, 1)])
    assert lba_status(host, slba=102, rl=50) == (2, [(102, 4)])
    assert lba_status(host, mndw=5) == (1, [(100, 6)])          # room for one descriptor: MNDW ran out
    assert lba_status(host, mndw=1) == (1, [])
    assert lba_status(host, atype=0x02) == (Status.INVALID_FIELD, [])
    assert lba_status(host, slba=8192) == (Status.LBA_OUT_OF_RANGE, [])
    assert lba_status(host, nsid=7) == (Status.INVALID_NSID, [])


def test_lba_status_log(host):
    empty = host.log(0x0E, 64)
    assert struct.unpack_from("<III", empty) == (16, 0, 0)
    gen0 = struct.unpack_from("<H", empty, 14)[0]
    assert status(uncor(host, 10, 3)) == 0
    assert status(uncor(host, 40, 1)) == 0
    page = host.log(0x0E, 128)
    lslplen, nlslne, estulb, lsgc = struct.unpack_from("<IIIxxH", page)
    assert (lslplen, nlslne, estulb) == (16 + 16 + 32, 1, 4) and lsgc != gen0
    assert struct.unpack_from("<IIB", page, 16) == (1, 2, 0x11)
    assert struct.unpack_from("<QI", page, 32) == (10, 3) and struct.unpack_from("<QI", page, 48) == (40, 1)
    assert status(host.get_log(0x0E, 64, nsid=1)[0]) == Status.INVALID_FIELD
    assert host.log(0x00, 1024)[0x0E * 4] & 1


def test_media_error_faults_are_tracked_but_reads_recover(host):
    faults = FaultSet()
    install(host.ctrl, faults)
    faults.add(FaultRule.from_args({"id": "m1", "opcode": "read", "slba": 300, "nlb": 8, "action": "status",
                                    "status": "unrecovered-read-error", "count": 1}))
    assert status(host.nvm(READ, 300, 8)[0]) == Status.UNRECOVERED_READ_ERROR
    assert lba_status(host) == (2, [(300, 8)])
    assert status(host.nvm(READ, 300, 8)[0]) == 0             # only Write Uncorrectable makes it stick
    assert status(host.nvm(WRITE, 300, 8, data=bytes(4096))[0]) == 0
    assert lba_status(host) == (2, [])


def test_format_clears_everything(host):
    assert status(uncor(host, 1, 1)) == 0
    assert status(host.cmd(0x80, nsid=1, cdw10=0)) == 0
    assert lba_status(host) == (2, [])
    assert status(host.nvm(READ, 1, 1)[0]) == 0


def test_range_set():
    r = unc.RangeSet()
    r.add(10, 5)
    r.add(20, 5)
    r.add(15, 5)                                               # bridges the two
    assert list(r) == [(10, 15)]
    assert r.remove(12, 3) and list(r) == [(10, 2), (15, 10)]
    assert not r.remove(0, 10) and r.overlaps(11, 1) and not r.overlaps(12, 3)
    assert r.within(0, 100) == [(10, 2), (15, 10)] and r.within(16, 2) == [(16, 2)]
    assert r.first_overlap(13, 10) == 15 and r.total == 12
