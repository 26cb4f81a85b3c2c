"""Firmware Image Download / Commit with the Firmware Slot log and the activation notice,
and the Persistent Event Log (reporting context, events), through the vfio-user client."""

from __future__ import annotations

import struct

import pytest

from nvshell.device.nvme.admin_firmware import IMAGE_MAGIC
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, status


@pytest.fixture
def host(tmp_path):
    h = NvmeTestHost.serve(tmp_path, ns_size=1 << 20, firmware="1.0").enable(admin_depth=64)
    yield h
    h.close()


def image(rev: bytes, size: int = 12 << 10) -> bytes:
    return (IMAGE_MAGIC + rev.ljust(8, b" ")).ljust(size, b"\xee")


def download(h, data: bytes, piece: int = 4096) -> None:
    for off in range(0, len(data), piece):
        chunk = data[off:off + piece]
        e, _ = h.admin(0x11, data=chunk, cdw10=len(chunk) // 4 - 1, cdw11=off // 4)
        assert status(e) == 0


def commit(h, slot: int, ca: int) -> int:
    return status(h.cmd(0x10, cdw10=slot | ca << 3))


def slot_log(h):
    page = h.log(0x03, 512)
    return page[0], [page[8 + 8 * i:16 + 8 * i] for i in range(7)]


def fr(h) -> bytes:
    return h.identify_ctrl()[64:72]


def test_identify_firmware_fields(host):
    d = host.identify_ctrl()
    assert struct.unpack_from("<H", d, 256)[0] & (1 << 2)      # OACS firmware download/commit
    assert d[260] == 0b10111                                   # FRMW: slot 1 RO, 3 slots, no-reset activation
    assert d[319] == 0xFF                                      # FWUG: no granularity
    assert struct.unpack_from("<I", d, 92)[0] & (1 << 9)       # OAES firmware activation notices
    assert slot_log(host) == (1, [b"1.0     "] + [bytes(8)] * 6)


def test_replace_then_activate_at_reset(host):
    download(host, image(b"2.0"))
    assert commit(host, 2, 0b001) == 0                         # replace, activate at next reset
    afi, frs = slot_log(host)
    assert afi == 1 | 2 << 4 and frs[1] == b"2.0     "
    assert fr(host) == b"1.0     "
    host.reset()
    assert fr(host) == b"2.0     "
    assert slot_log(host)[0] == 2
    # Back to slot 1 at the next reset (CA 010b: no image needed).
    assert commit(host, 1, 0b010) == 0
    host.reset()
    assert fr(host) == b"1.0     "


def test_activate_immediately_sends_the_notice(host):
    host.enable_notices(0x300)
    aer = host.submit(0x0C)
    download(host, image(b"3.1", 4096))
    cid = host.submit(0x10, cdw10=3 | 0b011 << 3)
    got = {e.cid: e for e in (host.reap()[0], host.reap()[0])}
    assert status(got[cid]) == 0
    assert got[aer].dw0 == 0x03 << 16 | 0x01 << 8 | 0x02       # notice, fw activation, log 03h
    assert fr(host) == b"3.1     " and slot_log(host)[0] == 3


def test_download_and_commit_errors(host):
    assert commit(host, 2, 0b000) == Status.INVALID_FIRMWARE_IMAGE   # nothing downloaded
    download(host, image(b"2.0"))
    assert commit(host, 1, 0b000) == Status.INVALID_FIRMWARE_SLOT    # read-only slot
    assert commit(host, 5, 0b000) == Status.INVALID_FIRMWARE_SLOT    # FRMW: 3 slots
    assert commit(host, 2, 0b110) == Status.INVALID_FIELD            # boot partitions
    assert commit(host, 3, 0b010) == Status.INVALID_FIRMWARE_SLOT    # empty slot
    e, _ = host.admin(0x11, data=bytes(4096), cdw10=1023, cdw11=0x200)   # overlaps what was sent
    assert status(e) == Status.OVERLAPPING_RANGE
    e, _ = host.admin(0x11, data=bytes(4096), cdw10=1023, cdw11=0x10000)  # a gap
    assert status(e) == Status.INVALID_FIELD
    assert commit(host, 0, 0b000) == 0                               # FS 0: first writable slot
    assert slot_log(host)[1][1] == b"2.0     "
    download(host, b"garbage!" * 512)
    assert commit(host, 2, 0b000) == Status.INVALID_FIRMWARE_IMAGE


def events(page: bytes) -> list[tuple[int, int, bytes]]:
    tnev, tll = struct.unpack_from("<IQ", page, 4)
    lhl = struct.unpack_from("<H", page, 18)[0]
    out, pos = [], lhl
    for _ in range(tnev):
        etype, _, ehl, _, cntlid = struct.unpack_from("<BBBBH", page, pos)
        el = struct.unpack_from("<H", page, pos + 22)[0]
        out.append((etype, cntlid, page[pos + ehl + 3:pos + ehl + 3 + el]))
        pos += ehl + 3 + el
    assert pos == tll
    return out


def pel(h, action: int, length: int = 8192):
    return h.get_log(0x0D, length, lsp=action)


def test_persistent_event_log(host):
    d = host.identify_ctrl()
    assert d[261] & (1 << 4) and struct.unpack_from("<I", d, 352)[0] >= 1    # LPA, PELS
    e, _ = pel(host, 0)
    assert status(e) == Status.COMMAND_SEQUENCE_ERROR          # no reporting context yet
    download(host, image(b"2.0"))
    assert commit(host, 2, 0b001) == 0
    assert status(host.cmd(0x80, nsid=1, cdw10=0)) == 0
    host.reset()
    e, page = pel(host, 1)
    assert status(e) == 0 and page[0] == 0x0D
    got = events(page)
    kinds = [k for k, _, _ in got]
    assert kinds == [0x04, 0x02, 0x07, 0x08, 0x04], kinds      # power-on, commit, format start/end, reset
    assert all(c == host.ctrl.cntlid for _, c, _ in got)
    old, new, ca, slot = struct.unpack_from("<8s8sBB", got[1][2])
    assert (old, new, ca, slot) == (b"1.0     ", b"2.0     ", 1, 2)
    assert got[4][2][:8] == b"2.0     "                         # the reset came up with the new firmware
    assert struct.unpack_from("<I", got[2][2])[0] == 1          # format of nsid 1
    assert page[56:62] == b"ctrl0 "                              # serial number
    # The context stays as established while events happen; release ends it.
    assert status(host.cmd(0x80, nsid=1, cdw10=0)) == 0
    e, again = pel(host, 0)
    assert status(e) == 0 and again == page
    assert status(pel(host, 2)[0]) == 0
    assert status(pel(host, 0)[0]) == Status.COMMAND_SEQUENCE_ERROR
    assert len(events(pel(host, 1)[1])) == 7
    assert status(pel(host, 3)[0]) == Status.INVALID_FIELD
