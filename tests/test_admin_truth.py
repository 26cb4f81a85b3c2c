"""Identify, registers and log pages telling the truth, through the vfio-user client:
NVMe 2.0 mandatory parts (CAP.CRMS, CRTO, Supported Log Pages), the OUI, OACS/LPA from
what is implemented, NSID scope of log pages, per-namespace SMART, command effects,
Namespace Attachment's empty list, DMRL, SGL length, Format notices to other
controllers, and what an ns-remove fault answers."""

from __future__ import annotations

import struct
import time

import pytest

from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme.commands import ADMIN, EFFECT_CCC, EFFECT_CSUPP, EFFECT_LBCC, EFFECT_NCC
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.status import Status
from nvshell.testing import NvmeTestHost, status, wait_until

BROADCAST = 0xFFFFFFFF


@pytest.fixture
def host(tmp_path):
    h = NvmeTestHost.serve(tmp_path, ns_size=1 << 20).enable(admin_depth=64)
    yield h
    h.close()


def u16(d: bytes, off: int) -> int:
    return struct.unpack_from("<H", d, off)[0]


def u32(d: bytes, off: int) -> int:
    return struct.unpack_from("<I", d, off)[0]


def test_nvme_2_0_mandatory_registers(host):
    cap = host.reg32(0) | host.reg32(4) << 32
    assert host.reg32(0x08) == 0x00020000                      # VS 2.0
    assert (cap >> 59) & 0b11 == 0b01                          # CRMS: CRWMS only
    to = (cap >> 24) & 0xFF
    crto = host.reg32(0x68)
    assert crto & 0xFFFF == to and crto >> 16 == to             # CRWMT, CRIMT = CAP.TO


def test_identify_oui_and_advertised_commands(host):
    d = host.identify_ctrl()
    assert d[73:76] == bytes([0x8D, 0x6B, 0x50])               # OUI 50-6B-8D, LSB first
    oacs = u16(d, 256)
    for opcode, bit in ((0x80, 1), (0x0D, 3)):
        assert opcode in ADMIN and oacs & (1 << bit)
    for opcode, bit in ((0x11, 2), (0x14, 4), (0x7C, 8), (0x86, 9)):
        assert bool(oacs & (1 << bit)) == (opcode in ADMIN), (opcode, bit)
    assert d[261] & 0b111 == 0b111                             # LPA: per-NS SMART, effects, extended
    nvm = host.admin(0x06, length=4096, cdw10=6, cdw11=0)[1]
    assert nvm[3] == 255                                       # DMRL


def test_supported_log_pages(host):
    page = host.log(0x00, 1024)
    entries = struct.unpack("<256I", page)
    from nvshell.device.nvme.admin_log import LOG_PAGES
    for lid in range(256):
        info = LOG_PAGES.get(lid)
        offered = info is not None and (info.available is None or info.available(host.ctrl))
        assert entries[lid] == int(offered), lid
    assert not entries[0xC0]                                   # OCP pages only with ocp=on
    for lid in (0x00, 0x01, 0x02, 0x03, 0x04, 0x05):
        assert entries[lid] & 1
    assert not entries[0x0C] and not entries[0x70]
    e, _ = host.get_log(0x70, 512)
    assert status(e) == Status.INVALID_LOG_PAGE


@pytest.mark.parametrize("lid,size", [(0x00, 1024), (0x01, 64), (0x03, 512), (0x04, 4096), (0x05, 4096)])
def test_controller_scoped_pages_refuse_an_nsid(host, lid, size):
    for nsid in (0, BROADCAST):
        assert status(host.get_log(lid, size, nsid=nsid, rae=True)[0]) == 0
    e, _ = host.get_log(lid, size, nsid=1, rae=True)
    assert status(e) == Status.INVALID_FIELD


def test_per_namespace_smart(host):
    from nvshell.device.backends import MemoryBackend
    from nvshell.device.nvme.namespace import NvmNamespace
    ns2 = NvmNamespace(MemoryBackend(1 << 20))
    host.subsys.add_namespace(ns2, 2)
    host.subsys.attach(2, host.ctrl, notify=False)
    host.create_io_queue()
    for _ in range(3):
        assert status(host.nvm(0x01, 0, 8, nsid=1, data=b"x" * 4096)[0]) == 0
    assert status(host.nvm(0x02, 0, 8, nsid=2)[0]) == 0
    whole = host.log(0x02, 512)
    one = host.log(0x02, 512, nsid=1)
    two = host.log(0x02, 512, nsid=2)
    def field(page, off):
        return int.from_bytes(page[off:off + 16], "little")
    assert field(whole, 80) == 3 and field(whole, 64) == 1      # host write / read commands
    assert field(one, 80) == 3 and field(one, 64) == 0 and field(one, 48) == 1   # 12 KiB: one unit
    assert field(two, 80) == 0 and field(two, 64) == 1
    assert one[1:3] == whole[1:3]                                # temperature: controller-wide
    assert status(host.get_log(0x02, 512, nsid=5)[0]) == Status.INVALID_FIELD   # valid, not active
    assert status(host.get_log(0x02, 512, nsid=300)[0]) == Status.INVALID_NSID


def test_command_effects(host):
    page = host.log(0x05, 4096)
    acs = struct.unpack_from("<256I", page)
    for opcode in (0x00, 0x01, 0x04, 0x05, 0x09):              # queues, Set Features
        assert acs[opcode] == EFFECT_CSUPP, hex(opcode)
        assert not acs[opcode] & EFFECT_CCC
    assert acs[0x80] & (EFFECT_LBCC | EFFECT_NCC) == EFFECT_LBCC | EFFECT_NCC
    assert acs[0x18] == EFFECT_CSUPP                           # Keep Alive


def test_namespace_attachment_with_an_empty_list(host):
    e, _ = host.admin(0x15, data=struct.pack("<H", 0), nsid=1, cdw10=1)
    assert status(e) == Status.CONTROLLER_LIST_INVALID
    assert 1 in host.ctrl.namespaces


def test_sgl_longer_than_the_transfer_is_refused(host):
    host.create_io_queue()
    sgl_data = 0 << 4                                           # data block descriptor, address subtype
    # 512-byte read, one data block of 4096 bytes: SGLS bit 18 is clear.
    e = host.cmd(0x02, 1, nsid=1, flags=1 << 6, dptr1=host.buf, dptr2=4096 | (sgl_data << 56), cdw12=0)
    assert status(e) == Status.DATA_SGL_LENGTH_INVALID
    d = host.identify_ctrl()
    assert not u32(d, 536) & (1 << 18)
    e = host.cmd(0x02, 1, nsid=1, flags=1 << 6, dptr1=host.buf, dptr2=512, cdw12=0)
    assert status(e) == 0


def test_format_of_a_shared_namespace_tells_the_other_controllers(tmp_path):
    a = NvmeTestHost.serve(tmp_path, name="ctrla", ns_size=1 << 20).enable(admin_depth=64)
    b = NvmeTestHost.serve(tmp_path, name="ctrlb", subsystem=a.subsys, ns_size=0).enable(admin_depth=64)
    try:
        ns = a.ns
        ns.shared = True
        a.subsys.attach(ns.nsid, b.ctrl, notify=False)
        for h in (a, b):
            h.enable_notices(0x100)
        aer_a, aer_b = a.submit(0x0C), b.submit(0x0C)
        from nvshell.device.nvme.spec import LBA_FORMATS
        lbaf = LBA_FORMATS.index((12, 0))                      # 4 KiB, no metadata
        e = a.cmd(0x80, nsid=ns.nsid, cdw10=lbaf)
        assert status(e) == 0 and ns.lba_size == 4096
        got = b.reap()[0]
        assert got.cid == aer_b and got.dw0 == 0x040002
        assert struct.unpack_from("<2I", b.log(0x04, 4096)) == (ns.nsid, 0)
        a.run(lambda: None)                                      # a's IOThread is past the Format
        assert a.peek() is None                                  # its own host made the change
        del aer_a
    finally:
        b.close()
        a.close()


def test_ns_remove_fault_answers_invalid_namespace(host):
    host.enable_notices(0x100)
    host.create_io_queue()
    faults = FaultSet()
    install(host.ctrl, faults)
    faults.add(FaultRule.from_args({"id": "n1", "opcode": "read", "action": "ns-remove", "duration": 300,
                                    "count": 1}))
    e, _ = host.nvm(0x02, 0, 1)
    assert status(e) == Status.INVALID_NSID                    # not Internal Path Error: no other path
    wait_until(lambda: status(host.nvm(0x02, 0, 1)[0]) == 0, 5, "the namespace back after 300 ms")
