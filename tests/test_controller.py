"""NVMe controller: registers, CC/CSTS handshake, queues, doorbells, admin commands.

A ``Host`` plays the guest driver against a real Controller on a real IOThread,
with guest RAM as a memfd mapped into GuestMemory and interrupts through the
transport's eventfd sink (``MsixEventfds``), one eventfd per vector. No VM, no socket: the transport is covered by test_controller_e2e.py.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

import pytest

import nvshell.device.nvme  # noqa: F401  (registers handlers)
from nvshell.device.iothread import IOThread
from nvshell.device.nvme.commands import ADMIN, DEFERRED
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import CQE, SQE, AdminOpcode, Reg
from nvshell.device.nvme.status import NvmeError, Status
from nvshell.device.pci.config import MSIX_CTL_ENABLE, MSIX_OFFSET
from nvshell.device.vfio_user.dma import GuestMemory
from nvshell.device.vfio_user.irq import MsixEventfds
from nvshell.device.backends import MemoryBackend
from nvshell.device.faults import FaultRule, FaultSet
from nvshell.device.nvme.fault_injector import install
from nvshell.device.nvme.namespace import NvmNamespace
from nvshell.device.nvme.subsystem import Subsystem
from nvshell.device.vfio_user.interface import RegionIndex

RAM_BASE = 0x100000
RAM_SIZE = 4 << 20
CC_ENABLE = 1 | (6 << 16) | (4 << 20) | (6 << 4)   # EN, IOSQES 6, IOCQES 4, CSS all I/O sets


def enable_msix(ctrl: Controller) -> None:
    """What the host's driver does first: MSI-X Enable in config space (INTx otherwise)."""
    ctl = int.from_bytes(ctrl.pci.region_read(RegionIndex.CONFIG, MSIX_OFFSET + 2, 2), "little")
    ctrl.pci.region_write(RegionIndex.CONFIG, MSIX_OFFSET + 2, (ctl | MSIX_CTL_ENABLE).to_bytes(2, "little"))


class Host:
    """A minimal NVMe host driver for tests (MSI-X enabled, as Linux's driver does)."""

    def __init__(self, doorbells: str = "trap", **cfg):
        self.io = IOThread("test-ctrl")
        self.io.start()
        self.fd = os.memfd_create("guest-ram")
        os.ftruncate(self.fd, RAM_SIZE)
        self.ram = mmap.mmap(self.fd, RAM_SIZE)
        self.mem = GuestMemory()
        self.mem.map(RAM_BASE, RAM_SIZE, self.fd, 0, 3)
        config = ControllerConfig(doorbells=doorbells, **cfg)
        self.irq = MsixEventfds()
        self.irq_fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(config.max_intr_vectors)]
        for vector, fd in enumerate(self.irq_fds):
            self.irq.assign(vector, os.dup(fd))
        self.ctrl = Controller(config, None, self.io)
        self.ctrl.pci.bind(self.mem, self.irq)
        enable_msix(self.ctrl)
        self.next_page = RAM_BASE
        self.sqs: dict[int, dict] = {}
        self.cqs: dict[int, dict] = {}
        self.cid = 0
        self.db = None
        if doorbells == "mmap":
            info = self.ctrl.pci.regions()[0]
            self.db = mmap.mmap(info.mmap_fd, 0x4000)

    def close(self) -> None:
        self.io.run(self.ctrl.shutdown)
        self.io.stop()
        if self.db is not None:
            self.db.close()
        self.mem.unmap_all()
        self.ram.close()
        os.close(self.fd)
        self.irq.close_all()
        for fd in self.irq_fds:
            os.close(fd)

    def settle(self) -> None:
        """Synchronisation point: the controller has seen every doorbell written so far (a
        poll of the mmap page; trapped writes were handled as they came) and finished the work
        they caused, so a test may assert that something did not happen."""
        self.io.run(self.ctrl.poll_doorbells)
        self.io.run(lambda: None)

    def interrupts(self, vector: int) -> int:
        """Times ``vector`` was signalled since the last call (its eventfd counter)."""
        self.io.run(lambda: None)  # every interrupt of what completed so far is signalled
        try:
            return os.eventfd_read(self.irq_fds[vector])
        except BlockingIOError:
            return 0

    # memory
    def alloc(self, nbytes: int) -> int:
        addr = self.next_page
        self.next_page += (nbytes + 0xFFF) & ~0xFFF
        self.ram[addr - RAM_BASE:addr - RAM_BASE + nbytes] = bytes(nbytes)
        return addr

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.ram[addr - RAM_BASE:addr - RAM_BASE + n])

    def write(self, addr: int, data: bytes) -> None:
        self.ram[addr - RAM_BASE:addr - RAM_BASE + len(data)] = data

    # registers
    def rd(self, off: int, size: int = 4) -> int:
        return int.from_bytes(self.io.run(self.ctrl.pci.region_read, 0, off, size), "little")

    def wr(self, off: int, value: int, size: int = 4) -> None:
        self.io.run(self.ctrl.pci.region_write, 0, off, value.to_bytes(size, "little"))

    def enable(self, asq_entries: int = 16, acq_entries: int = 16, cc: int = CC_ENABLE) -> int:
        asq, acq = self.alloc(asq_entries * 64), self.alloc(acq_entries * 16)
        self.wr(0x24, (acq_entries - 1) << 16 | (asq_entries - 1))
        self.wr(0x28, asq, 8)
        self.wr(0x30, acq, 8)
        self.wr(0x14, cc)
        self.sqs[0] = dict(base=asq, size=asq_entries, tail=0)
        self.cqs[0] = dict(base=acq, size=acq_entries, head=0, phase=1)
        return self.rd(0x1C)

    def enable_notices(self, aec: int = 0xF00) -> None:
        """Set Features Asynchronous Event Configuration, as the Linux driver does
        after its first scan: notices are only sent once enabled."""
        assert status(self.cmd(SET_FEATURES, cdw10=0x0B, cdw11=aec)) == 0

    # doorbells
    def ring(self, index: int, value: int) -> None:
        if self.db is not None:
            self.db[0x1000 + 4 * index:0x1000 + 4 * index + 4] = value.to_bytes(4, "little")
        else:
            self.wr(0x1000 + 4 * index, value)

    def submit(self, qid: int, opcode: int, *, ring: bool = True, cid: int | None = None, **fields) -> int:
        sq = self.sqs[qid]
        if cid is None:
            self.cid = (self.cid + 1) & 0xFFFF
            cid = self.cid
        self.write(sq["base"] + 64 * sq["tail"], SQE.pack(opcode=opcode, cid=cid, **fields))
        sq["tail"] = (sq["tail"] + 1) % sq["size"]
        if ring:
            self.ring(2 * qid, sq["tail"])
        return cid

    def peek(self, qid: int):
        cq = self.cqs[qid]
        entry = CQE.unpack(self.read(cq["base"] + 16 * cq["head"], 16))
        return entry if (entry.status & 1) == cq["phase"] else None

    def reap(self, qid: int = 0, timeout: float = 2.0, ring: bool = True):
        deadline = time.monotonic() + timeout
        while True:
            entry = self.peek(qid)
            if entry is not None:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"no completion on CQ {qid}")
            time.sleep(0.0005)
        cq = self.cqs[qid]
        cq["head"] += 1
        if cq["head"] == cq["size"]:
            cq["head"] = 0
            cq["phase"] ^= 1
        if ring:
            self.ring(2 * qid + 1, cq["head"])
        return entry

    def cmd(self, opcode: int, qid: int = 0, **fields):
        cid = self.submit(qid, opcode, **fields)
        entry = self.reap(qid)
        assert entry.cid == cid
        return entry

    def create_queue_pair(self, qid: int, entries: int = 16, vector: int = 1) -> None:
        cq, sq = self.alloc(entries * 16), self.alloc(entries * 64)
        e = self.cmd(AdminOpcode.CREATE_IO_CQ, cdw10=(entries - 1) << 16 | qid, cdw11=vector << 16 | 3, dptr1=cq)
        assert status(e) == 0, hex(status(e))
        e = self.cmd(AdminOpcode.CREATE_IO_SQ, cdw10=(entries - 1) << 16 | qid, cdw11=qid << 16 | 1, dptr1=sq)
        assert status(e) == 0, hex(status(e))
        self.cqs[qid] = dict(base=cq, size=entries, head=0, phase=1)
        self.sqs[qid] = dict(base=sq, size=entries, tail=0)


def status(entry) -> int:
    return (entry.status >> 1) & 0x7FF


def dnr(entry) -> bool:
    return bool(entry.status >> 15)


@pytest.fixture(params=["trap", "mmap"])
def host(request):
    h = Host(request.param)
    yield h
    h.close()


@pytest.fixture
def trap_host():
    h = Host("trap")
    yield h
    h.close()


GET_FEATURES, SET_FEATURES = AdminOpcode.GET_FEATURES, AdminOpcode.SET_FEATURES


# ------------------------------------------------------------------ registers
def test_cap_vs_and_reserved(trap_host):
    h = trap_host
    cap = h.rd(0, 8)
    assert cap & 0xFFFF == 0x7FF                 # MQES
    assert cap >> 16 & 1 == 1                    # CQR
    assert cap >> 17 & 3 == 0                    # AMS
    assert cap >> 24 & 0xFF == 0x0F              # TO
    assert cap >> 32 & 0xF == 0                  # DSTRD
    assert cap >> 36 & 1 == 0                    # NSSRS
    assert cap >> 37 & 0xFF == 0x41              # CSS: NVM + I/O command sets
    assert cap >> 48 & 0xFF == 0                 # MPSMIN/MPSMAX
    assert h.rd(0) | h.rd(4) << 32 == cap        # 2x32 == 64
    assert h.rd(8) == 0x00020000
    assert h.rd(0x2, 2) == cap >> 16 & 0xFFFF    # sub-dword
    assert h.rd(0x3, 1) == cap >> 24 & 0xFF
    assert h.rd(0x6, 4) == (cap >> 48) & 0xFFFFFFFF  # unaligned crossing dwords
    for off in (0x20, 0x38, 0x3C, 0x40, 0x50, 0xE00, 0xFFC, 0x2000, 0x3FFC):
        assert h.rd(off) == 0
    h.wr(0, 0xFFFFFFFF)                          # RO
    h.wr(0x20, 0x4E564D65)                       # NSSR: unsupported, ignored
    assert h.rd(0, 8) == cap and h.rd(0x1C) == 0


def test_aqa_asq_acq_widths(trap_host):
    h = trap_host
    h.wr(0x28, 0x1122334455667000, 8)
    assert h.rd(0x28, 8) == 0x1122334455667000
    h.wr(0x2C, 0xAABBCCDD)
    assert h.rd(0x28, 8) == 0xAABBCCDD55667000
    h.wr(0x30, 0x12345000)
    h.wr(0x34, 0x1)
    assert h.rd(0x30, 8) == 0x112345000
    h.wr(0x24, 0xFFFFFFFF)
    assert h.rd(0x24) == 0x0FFF0FFF
    h.wr(0x26, 0x0001, 2)                         # sub-dword write merges
    assert h.rd(0x24) == 0x00010FFF
    h.wr(0x0C, 0x5)                               # INTMS/INTMC: ignored while MSI-X is in use
    assert h.rd(0x0C) == 0 and h.rd(0x10) == 0    # (tests/test_intx.py covers them without MSI-X)


def test_enable_handshake_and_disable(host):
    csts = host.enable()
    assert csts & 1 and not csts & 2
    assert host.rd(0x14) == CC_ENABLE
    host.wr(0x14, 0)
    assert host.rd(0x1C) == 0


@pytest.mark.parametrize("what", ["iosqes", "iocqes", "mps", "css", "ams", "aqa", "asq-align", "acq-unmapped"])
def test_bad_enable_sets_cfs(trap_host, what):
    h = trap_host
    asq, acq = h.alloc(4096), h.alloc(4096)
    cc = CC_ENABLE
    aqa = 0x000F000F
    if what == "iosqes":
        cc = (cc & ~(0xF << 16)) | (7 << 16)
    elif what == "iocqes":
        cc = (cc & ~(0xF << 20)) | (5 << 20)
    elif what == "mps":
        cc |= 1 << 7
    elif what == "css":
        cc = (cc & ~(7 << 4)) | (7 << 4)
    elif what == "ams":
        cc |= 1 << 11
    elif what == "aqa":
        aqa = 0
    elif what == "asq-align":
        asq += 0x100
    elif what == "acq-unmapped":
        acq = 0x80000000
    h.wr(0x24, aqa)
    h.wr(0x28, asq, 8)
    h.wr(0x30, acq, 8)
    h.wr(0x14, cc)
    assert h.rd(0x1C) & 3 == 2                    # CFS, not RDY
    h.wr(0x14, 0)                                 # reset clears CFS
    assert h.rd(0x1C) == 0
    assert h.enable() & 3 == 1


def test_shutdown_notification(host):
    host.enable()
    host.wr(0x14, CC_ENABLE | 1 << 14)
    assert host.rd(0x1C) >> 2 & 3 == 2
    host.wr(0x14, CC_ENABLE)                      # SHN cleared: SHST back to normal
    assert host.rd(0x1C) >> 2 & 3 == 0
    host.wr(0x14, 0 | 2 << 14)                    # disable + abrupt shutdown at once
    assert host.rd(0x1C) == 2 << 2


# --------------------------------------------------------------- admin queue
def test_admin_round_trip_phase_flip(host):
    host.enable(asq_entries=4, acq_entries=3)
    phases = []
    for i in range(10):
        e = host.cmd(GET_FEATURES, cdw10=7)
        assert status(e) == 0 and e.sqid == 0
        assert e.dw0 == (63 << 16 | 63)
        assert e.sqhd == (i + 1) % 4
        phases.append(e.status & 1)
    assert phases == [1, 1, 1, 0, 0, 0, 1, 1, 1, 0]
    assert host.interrupts(0) >= 10


def test_cq_full_back_pressure(trap_host):
    h = trap_host
    h.enable(asq_entries=8, acq_entries=2)        # one usable CQ slot
    for _ in range(3):
        h.submit(0, GET_FEATURES, cdw10=7, ring=False)
    h.ring(0, h.sqs[0]["tail"])
    e1 = h.reap(0, ring=False)
    assert status(e1) == 0
    h.settle()
    assert h.peek(0) is None                      # CQ full: nothing more posted
    info = {(q["kind"], q["qid"]): q for q in h.io.run(h.ctrl.queue_info)}
    assert info[("sq", 0)]["head"] == 1           # stopped fetching: no room for completions
    assert info[("cq", 0)]["outstanding"] == 0
    h.ring(1, h.cqs[0]["head"])                   # host frees the slot
    e2 = h.reap(0)
    e3 = h.reap(0)
    assert [e1.cid, e2.cid, e3.cid] == [1, 2, 3]
    assert e3.sqhd == 3


def test_unknown_admin_opcode(host):
    host.enable()
    e = host.cmd(0xC7)
    assert status(e) == Status.INVALID_OPCODE and dnr(e)
    assert host.ctrl.error_log.error_count == 1
    assert host.ctrl.error_log.entries()[0].status == Status.INVALID_OPCODE


def test_handler_exception_is_internal_error(host):
    calls = []

    @ADMIN.command(0xC1, "test-boom")
    def boom(ctrl, cmd):
        calls.append(cmd.cid)
        raise RuntimeError("bug")

    try:
        host.enable()
        e = host.cmd(0xC1)
        assert status(e) == Status.INTERNAL_ERROR
        assert calls
        e = host.cmd(GET_FEATURES, cdw10=7)       # still working
        assert status(e) == 0
    finally:
        del ADMIN._entries[0xC1]


def test_fused_rejected(host):
    host.enable()
    assert status(host.cmd(GET_FEATURES, cdw10=7, flags=1)) == Status.INVALID_FIELD


# -------------------------------------------------------------- I/O queues
def test_create_delete_queues_and_errors(host):
    h = host
    h.enable()
    cq_mem, sq_mem = h.alloc(4096), h.alloc(4096 * 2)

    def create_cq(qid, size=16, flags=3, vector=1, base=cq_mem):
        return status(h.cmd(AdminOpcode.CREATE_IO_CQ, cdw10=(size - 1) << 16 | qid,
                            cdw11=vector << 16 | flags, dptr1=base))

    def create_sq(qid, cqid, size=16, flags=1, base=sq_mem):
        return status(h.cmd(AdminOpcode.CREATE_IO_SQ, cdw10=(size - 1) << 16 | qid,
                            cdw11=cqid << 16 | flags, dptr1=base))

    assert create_cq(0) == Status.INVALID_QID
    assert create_cq(65) == Status.INVALID_QID
    assert create_cq(1, size=1) == Status.INVALID_QUEUE_SIZE
    assert create_cq(1, size=0x801) == Status.INVALID_QUEUE_SIZE
    assert create_cq(1, flags=2) == Status.INVALID_FIELD
    assert create_cq(1, vector=65) == Status.INVALID_INTERRUPT_VECTOR
    assert create_cq(1, base=cq_mem + 8) == Status.PRP_OFFSET_INVALID
    assert create_cq(1, base=0x90000000) == Status.DATA_TRANSFER_ERROR
    assert create_cq(1) == 0
    assert create_cq(1) == Status.INVALID_QID                   # exists
    # CQID: a valid identifier whose CQ does not exist is Completion Queue Invalid;
    # 0, beyond the allocated count (max-ioqpairs 64) or 0xFFFF is Invalid Queue Identifier.
    assert create_sq(1, 2) == Status.INVALID_CQ                     # allocated, absent
    assert create_sq(1, 64) == Status.INVALID_CQ                    # last allocated id, absent
    assert create_sq(1, 0) == Status.INVALID_QID
    assert create_sq(1, 65) == Status.INVALID_QID
    assert create_sq(1, 0xFFFF) == Status.INVALID_QID
    assert create_sq(65, 1) == Status.INVALID_QID
    assert create_sq(0xFFFF, 1) == Status.INVALID_QID
    assert create_sq(0, 1) == Status.INVALID_QID
    assert create_sq(1, 1, size=0x900) == Status.INVALID_QUEUE_SIZE
    assert create_sq(1, 1, flags=0) == Status.INVALID_FIELD
    assert create_sq(1, 1) == 0
    assert create_sq(1, 1) == Status.INVALID_QID
    assert status(h.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=1)) == Status.INVALID_QUEUE_DELETION
    assert status(h.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=0)) == Status.INVALID_QID
    assert status(h.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=2)) == Status.INVALID_QID
    assert status(h.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=0xFFFF)) == Status.INVALID_QID
    assert status(h.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=0xFFFF)) == Status.INVALID_QID
    assert status(h.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=1)) == 0
    assert status(h.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=0)) == Status.INVALID_QID
    assert status(h.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=1)) == 0
    assert status(h.cmd(AdminOpcode.DELETE_IO_CQ, cdw10=1)) == Status.INVALID_QID
    assert [q["qid"] for q in h.io.run(h.ctrl.queue_info)] == [0, 0]


def test_io_queue_commands_without_namespace(host):
    host.enable()
    host.create_queue_pair(1, entries=4, vector=3)
    for i in range(6):                            # wraps the 4-entry queues
        e = host.cmd(0x02, qid=1, nsid=1)         # Read: namespace 1 not attached
        assert status(e) == Status.INVALID_NSID and e.sqid == 1
    e = host.cmd(0xEE, qid=1, nsid=1)
    assert status(e) == Status.INVALID_OPCODE
    assert host.interrupts(3) >= 7


def namespace(nsid: int = 1) -> NvmNamespace:
    """A real 1 MiB in-memory NVM namespace with ``nsid``."""
    ns = NvmNamespace(MemoryBackend(1 << 20))
    ns.nsid = nsid
    return ns


def test_io_dispatch_to_namespace_table(host):
    ns = namespace()
    host.io.run(host.ctrl.attach_namespace, ns)
    host.enable()
    host.create_queue_pair(1)
    buf = host.alloc(4096)
    host.write(buf, b"\x5a" * 512)
    assert status(host.cmd(0x01, qid=1, nsid=1, dptr1=buf)) == 0       # Write LBA 0 (NVM table)
    host.write(buf, bytes(512))
    e = host.cmd(0x02, qid=1, nsid=1, dptr1=buf)                        # Read it back
    assert status(e) == 0 and host.read(buf, 512) == b"\x5a" * 512
    assert host.ctrl.stats.host_read_commands == 1
    ns.ready = False
    e = host.cmd(0x02, qid=1, nsid=1, dptr1=buf)
    assert status(e) == Status.NS_NOT_READY and not dnr(e)
    ns.ready = True
    host.io.run(host.ctrl.detach_namespace, 1)
    assert status(host.cmd(0x02, qid=1, nsid=1, dptr1=buf)) == Status.INVALID_NSID


def test_delete_sq_aborts_held_commands(host):
    """A command held by a real fault rule (drop) is aborted with its SQ; completing
    it afterwards is ignored (stale)."""
    host.io.run(host.ctrl.attach_namespace, namespace())
    injector = install(host.ctrl, FaultSet())
    try:
        injector.faults.add(FaultRule.from_args({"id": "hold", "opcode": "read", "action": "drop"}))
        host.enable()
        host.create_queue_pair(1)
        cid = host.submit(1, 0x02, nsid=1, dptr1=host.alloc(4096))
        deadline = time.monotonic() + 2
        while not (held := host.io.run(lambda: list(host.ctrl.sq(1).deferred.values()))):
            assert time.monotonic() < deadline, "the read was not held"
            time.sleep(0.001)
        assert status(host.cmd(AdminOpcode.DELETE_IO_SQ, cdw10=1)) == 0
        e = host.reap(1)
        assert e.cid == cid and status(e) == Status.SQ_DELETION_ABORT
        assert host.io.run(host.ctrl.complete, held[0], 0) is False   # stale: ignored
    finally:
        injector.uninstall()


def test_cq_head_doorbell_errors_raise_aen(host):
    host.enable()
    aer = host.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    host.settle()
    assert host.peek(0) is None and host.ctrl.outstanding_aers == 1
    host.ring(2 * 5, 1)                           # SQ 5 does not exist
    e = host.reap(0)
    assert e.cid == aer and status(e) == 0
    assert e.dw0 == (0 | 0x00 << 8 | 0x01 << 16)  # error, invalid doorbell register, log 01h
    aer = host.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    host.ring(1, 100)                             # CQ 0 head beyond its size: masked until log read
    host.settle()
    assert host.peek(0) is None and host.io.run(host.ctrl.pending_events) == [(0, 1, 1)]
    host.io.run(host.ctrl.log_page_read, 0x01)
    e = host.reap(0)
    assert e.cid == aer and e.dw0 == (0 | 0x01 << 8 | 0x01 << 16)


# ------------------------------------------------------------------ features
def test_features_get_set_sel(host):
    h = host
    h.enable()
    # Number of queues
    e = h.cmd(SET_FEATURES, cdw10=7, cdw11=0x000F000F)
    assert status(e) == 0 and e.dw0 == (63 << 16 | 63)
    assert status(h.cmd(SET_FEATURES, cdw10=7, cdw11=0xFFFF0000)) == Status.INVALID_FIELD
    # Temperature threshold: default, set, current, default sel, supported caps
    assert h.cmd(GET_FEATURES, cdw10=4).dw0 == 0x157
    assert h.cmd(GET_FEATURES, cdw10=4, cdw11=1 << 20).dw0 == 1 << 20
    assert status(h.cmd(SET_FEATURES, cdw10=4, cdw11=0x160)) == 0
    assert h.cmd(GET_FEATURES, cdw10=4).dw0 == 0x160
    assert h.cmd(GET_FEATURES, cdw10=4 | 1 << 8).dw0 == 0x157       # default
    assert h.cmd(GET_FEATURES, cdw10=4 | 2 << 8).dw0 == 0x157       # saved: nothing saved -> default
    assert h.cmd(GET_FEATURES, cdw10=4 | 3 << 8).dw0 == 0x4         # changeable
    assert status(h.cmd(GET_FEATURES, cdw10=4 | 4 << 8)) == Status.INVALID_FIELD
    assert status(h.cmd(GET_FEATURES, cdw10=4, cdw11=2 << 20)) == Status.INVALID_FIELD
    # Volatile write cache
    assert h.cmd(GET_FEATURES, cdw10=6).dw0 == 1
    assert status(h.cmd(SET_FEATURES, cdw10=6, cdw11=0)) == 0
    assert h.cmd(GET_FEATURES, cdw10=6).dw0 == 0
    assert h.ctrl.features.volatile_wc is False
    # Arbitration, coalescing, atomicity, async event config, error recovery
    for fid, value in ((1, 0x01020303), (8, 0x0A05), (0x0A, 1), (0x0B, 0x100)):
        assert status(h.cmd(SET_FEATURES, cdw10=fid, cdw11=value)) == 0
        assert h.cmd(GET_FEATURES, cdw10=fid).dw0 == value
    # Power management: only PS 0
    assert status(h.cmd(SET_FEATURES, cdw10=2, cdw11=1)) == Status.INVALID_FIELD
    # Interrupt vector configuration
    assert status(h.cmd(SET_FEATURES, cdw10=9, cdw11=1 << 16 | 3)) == 0
    assert h.cmd(GET_FEATURES, cdw10=9, cdw11=3).dw0 == 1 << 16 | 3
    assert status(h.cmd(GET_FEATURES, cdw10=9, cdw11=65)) == Status.INVALID_FIELD
    # Saveable? no. Unknown FIDs.
    assert status(h.cmd(SET_FEATURES, cdw10=1 << 31 | 6, cdw11=1)) == Status.FEATURE_ID_NOT_SAVEABLE
    for fid in (0, 3, 0x0C, 0x7F, 0xFF):
        assert status(h.cmd(GET_FEATURES, cdw10=fid)) == Status.INVALID_FIELD
        assert status(h.cmd(SET_FEATURES, cdw10=fid)) == Status.INVALID_FIELD


def test_features_reset_to_defaults_on_controller_reset(trap_host):
    h = trap_host
    h.enable()
    assert status(h.cmd(SET_FEATURES, cdw10=6, cdw11=0)) == 0
    h.wr(0x14, 0)
    h.enable()
    assert h.cmd(GET_FEATURES, cdw10=6).dw0 == 1


def test_timestamp_and_host_behavior(host):
    h = host
    h.enable()
    buf = h.alloc(4096)
    h.write(buf, struct.pack("<Q", 1_000_000))
    assert status(h.cmd(SET_FEATURES, cdw10=0x0E, dptr1=buf)) == 0
    time.sleep(0.02)
    h.write(buf, bytes(8))
    assert status(h.cmd(GET_FEATURES, cdw10=0x0E, dptr1=buf)) == 0
    raw = struct.unpack("<Q", h.read(buf, 8))[0]
    assert 1_000_010 <= raw & 0xFFFFFFFFFFFF < 1_010_000
    assert (raw >> 49) & 7 == 1                   # origin: set by host
    h.write(buf, bytes([1]) + bytes(511))
    assert status(h.cmd(SET_FEATURES, cdw10=0x16, dptr1=buf)) == 0
    h.write(buf, bytes(512))
    assert status(h.cmd(GET_FEATURES, cdw10=0x16, dptr1=buf)) == 0
    assert h.read(buf, 1) == b"\x01"
    h.write(buf, bytes([2]) + bytes(511))
    assert status(h.cmd(SET_FEATURES, cdw10=0x16, dptr1=buf)) == Status.INVALID_FIELD
    assert status(h.cmd(GET_FEATURES, cdw10=0x0E, dptr1=0x90000000)) == Status.DATA_TRANSFER_ERROR


def test_temperature_threshold_raises_smart_aen(trap_host):
    h = trap_host
    h.enable()
    assert status(h.cmd(SET_FEATURES, cdw10=0x0B, cdw11=0x2)) == 0
    aer = h.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    setf = h.submit(0, SET_FEATURES, cdw10=4, cdw11=300)          # below 323 K
    e, s = h.reap(0), h.reap(0)                   # the AER completes first, inside Set Features
    assert (e.cid, s.cid, status(s)) == (aer, setf, 0)
    assert e.dw0 == (1 | 0x01 << 8 | 0x02 << 16)
    assert h.ctrl.stats.critical_warning & 2


# ------------------------------------------------------------- AER / abort
def test_aer_limit_and_delivery(host):
    h = host
    h.enable()
    h.enable_notices()
    aers = [h.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST) for _ in range(4)]   # AERL 3 -> 4 allowed
    e = h.cmd(AdminOpcode.ASYNC_EVENT_REQUEST)
    assert status(e) == Status.ASYNC_EVENT_REQUEST_LIMIT_EXCEEDED
    assert h.ctrl.outstanding_aers == 4

    def post():
        h.ctrl.note_changed_namespace(7)
        h.ctrl.post_async_event(2, 0, 4)
        h.ctrl.post_async_event(2, 0, 4)          # duplicate of a queued one... delivered already
        h.ctrl.post_async_event(1, 0, 2)
    h.io.run(post)
    e1, e2 = h.reap(0), h.reap(0)
    assert {e1.cid, e2.cid} <= set(aers)
    assert {e1.dw0, e2.dw0} == {2 | 4 << 16, 1 | 2 << 16}
    assert h.ctrl.take_changed_namespaces(False) == [7]
    # Notice is masked until log 04h is read: another notice waits.
    h.io.run(h.ctrl.post_async_event, 2, 0, 4)
    h.settle()
    assert h.peek(0) is None
    assert h.io.run(h.ctrl.pending_events) == [(2, 0, 4)]
    h.io.run(h.ctrl.log_page_read, 4)
    e3 = h.reap(0)
    assert e3.dw0 == 2 | 4 << 16


def test_aer_retention_limit():
    h = Host("trap", max_aer_retention=2)
    try:
        h.enable()
        h.enable_notices()
        for info in range(5):
            h.io.run(h.ctrl.post_async_event, 2, info, 4)
        assert len(h.io.run(h.ctrl.pending_events)) == 2
    finally:
        h.close()


def test_abort(host):
    h = host
    h.enable()
    aer = h.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    e = h.cmd(AdminOpcode.ABORT, cdw10=0x1234 << 16 | 0)      # unknown cid: not aborted
    assert status(e) == 0 and e.dw0 & 1 == 1
    abort = h.submit(0, AdminOpcode.ABORT, cdw10=aer << 16 | 0)
    e, a = h.reap(0), h.reap(0)
    assert e.cid == aer and status(e) == Status.ABORT_REQUESTED
    assert a.cid == abort and status(a) == 0 and a.dw0 & 1 == 0
    assert h.ctrl.outstanding_aers == 0
    # SQID: beyond the allocated count (max-ioqpairs 64) is Invalid Queue Identifier,
    # allocated but not created is Invalid Field (QEMU's answer); both DNR, not aborted.
    for sqid, want in ((9, Status.INVALID_FIELD), (64, Status.INVALID_FIELD),
                       (65, Status.INVALID_QID), (0xFFFF, Status.INVALID_QID)):
        e = h.cmd(AdminOpcode.ABORT, cdw10=1 << 16 | sqid)
        assert (status(e), dnr(e), e.dw0 & 1) == (want, True, 1), sqid
    h.create_queue_pair(1)
    e = h.cmd(AdminOpcode.ABORT, cdw10=0x77 << 16 | 1)         # existing I/O SQ, unknown cid
    assert (status(e), e.dw0 & 1) == (0, 1)


def test_reset_drops_queues_and_aers(host):
    h = host
    h.enable()
    h.create_queue_pair(1)
    h.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    h.settle()
    assert h.ctrl.outstanding_aers == 1
    h.wr(0x14, 0)
    assert h.rd(0x1C) & 1 == 0
    assert h.io.run(h.ctrl.queue_info) == []
    assert h.ctrl.outstanding_aers == 0
    h.sqs.clear()
    h.cqs.clear()
    h.enable()
    assert [(q["kind"], q["qid"]) for q in h.io.run(h.ctrl.queue_info)] == [("sq", 0), ("cq", 0)]
    assert status(h.cmd(GET_FEATURES, cdw10=7)) == 0
    h.create_queue_pair(1)                        # the same QID is free again


def test_pci_reset_and_disconnect(trap_host):
    h = trap_host
    h.enable()
    h.io.run(h.ctrl.pci.client_disconnected)
    assert h.rd(0x1C) == 0 and h.rd(0x14) == 0
    assert h.ctrl.stats.unsafe_shutdowns == 1
    h.sqs.clear()
    h.cqs.clear()
    h.enable()
    h.io.run(h.ctrl.pci.reset)
    assert h.rd(0x1C) == 0 and h.rd(0x24) == 0


# ------------------------------------------------------------------ format
def test_format_nvm():
    h = Host("trap")
    try:
        ns1, ns2 = namespace(1), namespace(2)
        h.io.run(h.ctrl.attach_namespace, ns1)
        h.io.run(h.ctrl.attach_namespace, ns2)
        h.enable()
        formats = lambda: (ns1.fmt.index, ns2.fmt.index)  # noqa: E731
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=1, cdw10=1)) == 0
        assert formats() == (1, 0) and (ns1.lba_size, ns1.ms) == (512, 8)
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=0xFFFFFFFF, cdw10=4)) == 0
        assert formats() == (4, 4) and ns2.lba_size == 4096
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=1, cdw10=0xF)) == Status.INVALID_FORMAT
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=1, cdw10=2 << 9)) == Status.INVALID_FIELD  # crypto erase
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=1, cdw10=4 << 5 | 1)) == Status.INVALID_FIELD  # PI type 4
        assert formats() == (4, 4)                                      # refused formats change nothing
        # every field reaches the namespace: SES 1, PIL, PI 1, MSET
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=1, cdw10=1 << 9 | 1 << 8 | 1 << 5 | 1 << 4 | 1)) == 0
        assert (ns1.fmt.index, ns1.fmt.extended, ns1.fmt.pi, ns1.fmt.first) == (1, True, 1, True)
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=3)) == Status.INVALID_NSID
        assert status(h.cmd(AdminOpcode.FORMAT_NVM, nsid=0)) == Status.INVALID_NSID
    finally:
        h.close()


# ---------------------------------------------------------------- misc API
def test_changed_namespace_list_overflow(trap_host):
    c = trap_host.ctrl
    for nsid in range(1, 1100):
        c.note_changed_namespace(nsid)
    assert c.take_changed_namespaces() == [0xFFFFFFFF]
    assert c.take_changed_namespaces() == []


def test_hooks_and_fatal(trap_host):
    h = trap_host
    seen = []
    h.ctrl.hooks.on_complete = lambda cmd, st: seen.append((cmd.opcode, st))

    def on_submit(cmd):
        if cmd.opcode == GET_FEATURES and cmd.cdw10 == 6:
            raise NvmeError(Status.INTERNAL_ERROR, dnr=False)
    h.ctrl.hooks.on_submit = on_submit
    h.enable()
    assert status(h.cmd(GET_FEATURES, cdw10=6)) == Status.INTERNAL_ERROR
    assert status(h.cmd(GET_FEATURES, cdw10=7)) == 0
    assert seen == [(GET_FEATURES, Status.INTERNAL_ERROR), (GET_FEATURES, 0)]
    h.io.run(h.ctrl.fatal, "test")
    assert h.rd(0x1C) & 2
    h.submit(0, GET_FEATURES, cdw10=7)
    h.settle()
    assert h.peek(0) is None                      # no processing after CFS
    h.wr(0x14, 0)
    assert h.rd(0x1C) == 0


def test_config_validation():
    with pytest.raises(ValueError, match="doorbells"):
        ControllerConfig(doorbells="shadow")
    with pytest.raises(ValueError, match="max-ioqpairs"):
        ControllerConfig(max_ioqpairs=0)


def test_io_to_namespace_detached_here_but_shared_is_a_path_error(trap_host):
    """A real subsystem in which NSID 1 is attached to another controller (cntlid 2) only."""
    h = trap_host
    subsys = h.ctrl.subsystem = Subsystem()
    h.io.run(subsys.add_controller, h.ctrl, 1)
    other = Controller(ControllerConfig(serial="other"), subsys)
    try:
        assert other.cntlid == 2
        subsys.add_namespace(namespace(0))
        subsys.attach(1, other, notify=False)
        h.enable()
        h.create_queue_pair(1)
        e = h.cmd(0x02, qid=1, nsid=1)               # reachable through controller 2: retry elsewhere
        assert status(e) == Status.INTERNAL_PATH_ERROR and not dnr(e)
        e = h.cmd(0x02, qid=1, nsid=5)               # attached nowhere: the host's mistake
        assert status(e) == Status.INVALID_NSID and dnr(e)
    finally:
        other.shutdown()


def test_surprise_remove_reports_an_error_event_and_reads_all_ones(trap_host):
    h = trap_host
    h.enable()
    aer = h.submit(0, AdminOpcode.ASYNC_EVENT_REQUEST)
    h.io.run(h.ctrl.surprise_remove)
    e = h.reap(0)
    assert e.cid == aer and status(e) == 0
    assert e.dw0 & 0x7 == 0 and (e.dw0 >> 8) & 0xFF == 0x03   # error event: persistent internal error
    assert h.rd(Reg.CSTS) == 0xFFFFFFFF and h.rd(Reg.VS) == 0xFFFFFFFF
