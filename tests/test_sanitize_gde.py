"""Sanitize Status log (81h) SSTAT bit 8, Global Data Erased, through the vfio-user client:
set while no user data has been written since the last successful sanitize (or, before any,
since the subsystem was made), cleared by the first command that writes user data on any
controller of the subsystem, untouched by commands that only remove data."""

from __future__ import annotations

import struct
import time

import pytest

from nvshell.device.backends import FileBackend, MemoryBackend
from nvshell.device.nvme import admin_sanitize
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.testing import NvmeTestHost, status

GDE = 1 << 8


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setattr(admin_sanitize, "MIN_SECONDS", 0.2)
    h = NvmeTestHost.serve(tmp_path, ns_size=4 << 20).enable()
    h.create_io_queue()
    yield h
    h.close()


def sstat(h: NvmeTestHost) -> int:
    return struct.unpack_from("<H", h.log(0x81, 512), 2)[0]


def sanitize(h: NvmeTestHost, cdw10: int = 0b010, timeout: float = 5.0) -> int:
    """Block erase (default) to completion; the SSTAT read once it is over."""
    assert status(h.cmd(0x84, cdw10=cdw10)) == 0
    deadline = time.monotonic() + timeout
    while (s := sstat(h)) & 0x7 == 2:
        assert time.monotonic() < deadline, "sanitize did not complete"
        time.sleep(0.02)
    return s


def test_fresh_subsystem_then_write_then_sanitize(host):
    assert sstat(host) == GDE                                       # never sanitized, nothing written
    assert status(host.nvm(0x02, 0, 8)[0]) == 0                     # reads write nothing
    assert sstat(host) == GDE
    assert status(host.nvm(0x01, 0, 8, data=b"\x5a" * 4096)[0]) == 0
    assert sstat(host) == 0                                         # user data written
    s = sanitize(host)
    assert s == 1 | GDE                                             # completed, and nothing written since
    assert sstat(host) == 1 | GDE                                   # reading the log changes nothing
    assert status(host.nvm(0x02, 0, 8)[0]) == 0
    assert sstat(host) == 1 | GDE
    assert status(host.nvm(0x01, 100, 1, data=b"x")[0]) == 0
    assert sstat(host) == 1                                         # the first write clears it


@pytest.mark.parametrize("what", ["write-zeroes", "write-uncorrectable", "copy"])
def test_every_command_that_writes_user_data_clears_it(host, what):
    assert sanitize(host) & GDE
    if what == "write-zeroes":
        e = host.cmd(0x08, 1, nsid=1, cdw10=10, cdw12=7)
    elif what == "write-uncorrectable":
        e = host.cmd(0x04, 1, nsid=1, cdw10=10, cdw12=0)
    else:                                                           # Copy: one range, LBAs 0..7 -> 64
        rng = host.alloc(4096)
        host.ram.write(rng, struct.pack("<QQHH", 0, 0, 7, 0).ljust(32, b"\0"))
        e = host.cmd(0x19, 1, nsid=1, dptr1=rng, cdw10=64, cdw12=0)
    assert status(e) == 0, what
    assert sstat(host) == 1, what


def test_commands_that_only_remove_data_leave_it_set(host):
    assert sanitize(host) & GDE
    rng = host.alloc(4096)
    host.ram.write(rng, struct.pack("<IIQ", 0, 64, 0).ljust(16, b"\0"))
    assert status(host.cmd(0x09, 1, nsid=1, dptr1=rng, cdw10=0, cdw11=1 << 2)) == 0   # Deallocate
    assert status(host.cmd(0x80, nsid=1, cdw10=0)) == 0                               # Format NVM
    assert status(host.cmd(0x80, nsid=1, cdw10=1 << 9)) == 0                          # Format, SES=1
    assert sstat(host) == 1 | GDE
    assert status(host.nvm(0x01, 0, 1, data=b"y")[0]) == 0
    assert sstat(host) == 1


def test_a_failed_write_writes_nothing(host):
    assert sanitize(host) & GDE
    e, _ = host.nvm(0x01, 1 << 30, 1, data=b"z")                    # LBA out of range
    assert status(e) != 0
    assert sstat(host) == 1 | GDE


def test_a_write_on_another_controller_of_the_subsystem_clears_it(tmp_path, host):
    other = NvmeTestHost.serve(tmp_path, name="ctrl1", subsystem=host.subsys).enable()
    try:
        host.subsys.attach(host.ns.nsid, other.ctrl, notify=False)
        other.create_io_queue()
        assert sanitize(host) & GDE
        assert sstat(other) == 1 | GDE                              # the state is the subsystem's
        assert status(other.nvm(0x01, 0, 1, data=b"w")[0]) == 0
        assert sstat(host) == 1
        assert sanitize(other) & GDE
        assert status(other.nvm(0x01, 0, 1, data=b"w")[0]) == 0
    finally:
        other.close()                                               # shutdown leaves the subsystem
    assert other.ctrl not in host.subsys.controllers.values()
    assert sstat(host) == 1                                         # written by a controller now gone


def test_a_controller_added_after_the_sanitize_is_watched_too(tmp_path, host):
    assert sanitize(host) & GDE
    late = NvmeTestHost.serve(tmp_path, name="late", subsystem=host.subsys).enable()
    try:
        host.subsys.attach(host.ns.nsid, late.ctrl, notify=False)
        late.create_io_queue()
        assert status(late.nvm(0x01, 0, 1, data=b"v")[0]) == 0
    finally:
        late.close()
    assert late.ctrl not in host.subsys.controllers.values()
    assert sstat(host) == 1


def test_a_namespace_brought_in_with_data_clears_it(tmp_path, host):
    assert sanitize(host) & GDE
    empty = NvmNamespace(MemoryBackend(1 << 20))
    host.subsys.add_namespace(empty)
    assert sstat(host) == 1 | GDE                                   # an empty namespace holds nothing
    path = tmp_path / "old.img"
    path.write_bytes(b"\x01" * 8192)
    host.subsys.add_namespace(NvmNamespace(FileBackend(str(path))))
    assert sstat(host) == 1                                         # data the sanitize never erased


def test_power_on_with_a_file_written_before(tmp_path):
    written, fresh = tmp_path / "written.img", tmp_path / "fresh.img"
    written.write_bytes(b"\x02" * 4096)
    for path, expect in ((fresh, GDE), (written, 0)):
        h = NvmeTestHost.serve(tmp_path, name=path.stem).enable()
        try:
            ns = NvmNamespace(FileBackend(str(path), size=1 << 20))   # fresh: created sparse
            h.subsys.add_namespace(ns)
            h.subsys.attach(ns.nsid, h.ctrl, notify=False)
            assert sstat(h) == expect, path.name                    # never sanitized
        finally:
            h.close()
