"""Device Self-test (14h) and its log (06h) through the vfio-user client: short and
extended tests in the background with progress, abort, in-progress refusal, the media
check finding uncorrectable LBAs, reset/format/removal aborts, the self-test-fail fault."""

from __future__ import annotations

import struct
import time

import pytest

from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme import admin_selftest
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.status import Status
from nvshell.testing import wait_until
from nvshell.testing import NvmeTestHost, status

BROADCAST = 0xFFFFFFFF


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(admin_selftest, "SHORT_S", 0.4)
    monkeypatch.setattr(admin_selftest, "EXTENDED_S", 0.8)
    h = NvmeTestHost.serve(tmp_path, ns_size=1 << 20).enable(admin_depth=64)
    yield h
    h.close()


def start(h, stc, nsid=0):
    return status(h.cmd(0x14, nsid=nsid, cdw10=stc))


def log(h):
    page = h.log(0x06, 564)
    current, percent = page[0], page[1]
    results = []
    for i in range(20):
        dsts, seg, vdi, poh, nsid, flba, sct, sc = struct.unpack_from("<BBBxQIQBB", page, 4 + 28 * i)
        if dsts & 0xF == 0xF:
            continue
        results.append(dict(code=dsts >> 4, result=dsts & 0xF, segment=seg, vdi=vdi, nsid=nsid, flba=flba,
                            sct=sct, sc=sc))
    return current, percent, results


def wait_done(h, timeout=3.0):
    deadline = time.monotonic() + timeout
    while log(h)[0]:
        assert time.monotonic() < deadline, "self-test never finished"
        time.sleep(0.05)
    return log(h)[2]


def test_identify_advertises_self_test(host):
    d = host.identify_ctrl()
    assert struct.unpack_from("<H", d, 256)[0] & (1 << 4)      # OACS bit 4
    assert struct.unpack_from("<H", d, 316)[0] >= 1            # EDSTT minutes
    assert not d[318] & 1                                      # DSTO: per controller


def test_short_test_runs_in_the_background_with_progress(host):
    assert log(host) == (0, 0, [])
    assert start(host, 1) == 0
    current, percent, results = log(host)
    assert current == 1 and 0 <= percent < 100 and results == []
    assert start(host, 2) == Status.DEVICE_SELF_TEST_IN_PROGRESS
    wait_until(lambda: log(host)[1] > percent, 3, "self-test progress")
    results = wait_done(host)
    assert results == [dict(code=1, result=0, segment=0, vdi=0, nsid=0, flba=0, sct=0, sc=0)]
    assert start(host, 2, nsid=1) == 0
    results = wait_done(host)
    assert results[0] == dict(code=2, result=0, segment=0, vdi=1, nsid=1, flba=0, sct=0, sc=0)
    assert len(results) == 2                                   # newest first


def test_abort_and_bad_fields(host):
    assert start(host, 0xF) == 0                               # nothing to abort: fine
    assert start(host, 2, nsid=BROADCAST) == 0
    assert start(host, 0xF) == 0
    current, _, results = log(host)
    assert current == 0 and results[0]["code"] == 2 and results[0]["result"] == 1
    for stc in (0, 3, 0xE):
        assert start(host, stc) == Status.INVALID_FIELD
    assert start(host, 1, nsid=9) == Status.INVALID_NSID
    assert status(host.get_log(0x06, 564, nsid=1)[0]) == Status.INVALID_FIELD


def test_extended_test_finds_uncorrectable_lbas(host):
    host.create_io_queue()
    assert status(host.cmd(0x04, 1, nsid=1, cdw10=77, cdw12=3)) == 0     # Write Uncorrectable 77..80
    assert start(host, 1) == 0
    assert wait_done(host)[0]["result"] == 0                   # the short test does not scan
    assert start(host, 2, nsid=BROADCAST) == 0
    r = wait_done(host)[0]
    assert (r["code"], r["result"], r["segment"]) == (2, 7, 7)
    assert r["vdi"] == 0b1111 and (r["nsid"], r["flba"]) == (1, 77)
    assert (r["sct"], r["sc"]) == (2, 0x81)                    # Unrecovered Read Error


def test_reset_aborts_a_short_test_not_an_extended_one(host):
    assert start(host, 1) == 0
    host.reset()
    _, _, results = log(host)
    assert results[0]["code"] == 1 and results[0]["result"] == 2
    assert start(host, 2) == 0
    host.reset()
    assert log(host)[0] == 2                                   # still running
    assert wait_done(host)[0]["result"] == 0


def test_format_and_namespace_removal_abort(host):
    assert start(host, 2, nsid=1) == 0
    assert status(host.cmd(0x80, nsid=1, cdw10=0)) == 0
    assert wait_done(host)[0]["result"] == 4
    assert start(host, 2, nsid=1) == 0
    host.subsys.detach(1, host.ctrl)
    assert wait_done(host)[0]["result"] == 3


def test_self_test_fail_fault_rule(host):
    faults = FaultSet()
    install(host.ctrl, faults)
    faults.add(FaultRule.from_args({"id": "s1", "opcode": "device-self-test", "action": "self-test-fail",
                                    "result": 7, "segment": 3, "lba": 4096, "count": 1}))
    assert start(host, 1, nsid=1) == 0
    r = wait_done(host)[0]
    assert (r["code"], r["result"], r["segment"], r["flba"], r["nsid"]) == (1, 7, 3, 4096, 1)
    assert r["vdi"] == 0b1111 and (r["sct"], r["sc"]) == (2, 0x81)
    assert start(host, 1) == 0
    assert wait_done(host)[0]["result"] == 0                   # count=1: the next one passes
    with pytest.raises(Exception, match="lba="):
        FaultRule.from_args({"id": "s2", "action": "self-test-fail", "slba": 1})
