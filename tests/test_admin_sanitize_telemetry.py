"""Sanitize (84h) with the Sanitize Status log (81h), Telemetry host/controller-initiated
logs (07h/08h) and the OCP SMART / Health Information Extended log (C0h, ocp=on), through
the vfio-user client."""

from __future__ import annotations

import json
import struct
import time

import pytest

from nvshell.device.nvme import admin_keepalive, admin_sanitize
from nvshell.device.nvme.admin_ocp import SMART_EXTENDED_GUID
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, dnr, status


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(admin_sanitize, "MIN_SECONDS", 0.5)
    h = NvmeTestHost.serve(tmp_path, ns_size=4 << 20).enable(admin_depth=64)
    h.create_io_queue()
    yield h
    h.close()


def sanitize_log(h):
    sprog, sstat, scdw10 = struct.unpack_from("<HHI", h.log(0x81, 512))
    return sprog, sstat, scdw10


def wait_sanitized(h, timeout=5.0):
    deadline = time.monotonic() + timeout
    while sanitize_log(h)[1] & 0x7 == 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return sanitize_log(h)


def test_block_erase_runs_in_the_background_and_refuses_commands(host):
    d = host.identify_ctrl()
    assert struct.unpack_from("<I", d, 328)[0] & 0b111 == 0b110    # SANICAP: block erase, overwrite; no crypto
    assert sanitize_log(host) == (0xFFFF, 1 << 8, 0)              # never sanitized, Global Data Erased
    assert status(host.nvm(0x01, 0, 8, data=b"\x77" * 4096)[0]) == 0
    assert status(host.cmd(0x04, 1, nsid=1, cdw10=100, cdw12=0)) == 0   # an uncorrectable LBA
    assert status(host.cmd(0x84, cdw10=0b010)) == 0
    sprog, sstat, scdw10 = sanitize_log(host)
    assert sstat & 0x7 == 2 and sprog < 0xFFFF and scdw10 == 0b010
    e, _ = host.nvm(0x02, 0, 8)
    assert status(e) == Status.SANITIZE_IN_PROGRESS and not dnr(e)
    assert status(host.cmd(0x80, nsid=1, cdw10=0)) == Status.SANITIZE_IN_PROGRESS
    assert status(host.cmd(0x84, cdw10=0b010)) == Status.SANITIZE_IN_PROGRESS
    assert status(host.admin(0x06, length=4096, cdw10=1)[0]) == 0    # Identify is still allowed
    host.reset()                                                  # a reset does not stop it
    host.create_io_queue()
    assert sanitize_log(host)[1] & 0x7 == 2
    sprog, sstat, _ = wait_sanitized(host)
    assert (sprog, sstat & 0x7) == (0xFFFF, 1)
    e, data = host.nvm(0x02, 0, 8)
    assert status(e) == 0 and data == bytes(4096)
    assert status(host.nvm(0x02, 100, 1)[0]) == 0                 # uncorrectable no more


def test_overwrite_pattern_and_passes(host):
    cdw10 = 0b011 | (2 << 4)                                      # overwrite, 2 passes
    assert status(host.cmd(0x84, cdw10=cdw10, cdw11=0xA5A5A5A5)) == 0
    _, sstat, _ = wait_sanitized(host)
    assert sstat & 0x7 == 1 and sstat >> 3 & 0x1F == 2
    e, data = host.nvm(0x02, 8000, 1)
    assert status(e) == 0 and data == b"\xa5" * 512


def test_sanitize_refusals(host):
    assert status(host.cmd(0x84, cdw10=0b100)) == Status.INVALID_FIELD          # crypto erase: untrue
    assert status(host.cmd(0x84, cdw10=0b010 | 1 << 9)) == Status.INVALID_FIELD  # NDAS with block erase
    assert status(host.cmd(0x84, cdw10=0b000)) == Status.INVALID_FIELD
    assert status(host.cmd(0x84, cdw10=0b001)) == 0                             # exit failure mode: no-op
    assert sanitize_log(host)[1] == 1 << 8                                      # never sanitized, nothing written


def test_telemetry_host_initiated(host):
    d = host.identify_ctrl()
    assert d[261] & (1 << 3)                                      # LPA telemetry
    head = host.log(0x07, 512, lsp=1)                             # create
    assert head[0] == 0x07 and head[5:8] == bytes([0x8D, 0x6B, 0x50])
    da1 = struct.unpack_from("<H", head, 8)[0]
    assert da1 >= 1 and head[381] == 1
    body = host.log(0x07, da1 * 512, offset=512)
    doc = json.loads(body.rstrip(b"\0"))
    assert doc["reason"] == "host-initiated" and doc["controller"]["cntlid"] == host.ctrl.cntlid
    assert any(q["kind"] == "sq" and q["qid"] == 1 for q in doc["queues"])
    assert host.log(0x07, 512)[381] == 1                          # no create: the same generation
    assert host.log(0x07, 512, lsp=1)[381] == 2


def test_telemetry_controller_initiated_on_keep_alive_expiry(host):
    head = host.log(0x08, 512)
    assert head[0] == 0x08 and head[382] == 0                     # nothing captured
    host.run(admin_keepalive.expire, host.ctrl, "test expiry")
    host.reset()
    head = host.log(0x08, 512)
    assert head[382] == 1 and head[383] == 1 and head[384:395] == b"test expiry"
    da1 = struct.unpack_from("<H", head, 8)[0]
    doc = json.loads(host.log(0x08, da1 * 512, offset=512).rstrip(b"\0"))
    assert doc["reason"] == "test expiry"


def test_ocp_smart_extended_only_with_ocp_on(host, tmp_path):
    e, _ = host.get_log(0xC0, 512)
    assert status(e) == Status.INVALID_LOG_PAGE
    assert not host.log(0x00, 1024)[0xC0 * 4] & 1
    h = NvmeTestHost.serve(tmp_path, name="ocp0", ns_size=1 << 20, ocp=True).enable(admin_depth=64)
    try:
        h.create_io_queue()
        assert status(h.nvm(0x01, 0, 8, data=bytes(4096))[0]) == 0
        assert status(h.nvm(0x02, 0, 8)[0]) == 0
        page = h.log(0xC0, 512)
        assert page[496:512] == SMART_EXTENDED_GUID and struct.unpack_from("<H", page, 494)[0] == 3
        assert int.from_bytes(page[0:16], "little") == 4096        # physical media units written (bytes)
        assert int.from_bytes(page[16:32], "little") == 4096
        assert struct.unpack_from("<Q", page, 152)[0] == 2048      # NUSE
        assert h.log(0x00, 1024)[0xC0 * 4] & 1
    finally:
        h.close()
