"""vfio-user transport: the real VfioUserServer on a real IOThread serving the real PCI
function of a real NVMe controller, driven by VfioUserClient as QEMU drives it.

What the transport carries is checked through what the device does with it: BAR0
accesses are NVMe registers (CAP, AQA, CC, CSTS, doorbells), DMA is the controller
fetching admin SQEs and writing CQEs and Identify data into memfd-backed guest RAM,
interrupts are MSI-X eventfds the controller signals when it posts a completion.
Every bad-input test ends by proving the server still serves (a normal request on the
same connection, or a fresh client for framing errors).
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import termios
from typing import Any, Callable, Iterator

import pytest

import nvshell.device.nvme  # noqa: F401  (registers every command)
from nvshell.device.nvme.config import ControllerConfig
from nvshell.device.nvme.controller import Controller
from nvshell.device.nvme.spec import CQE, DOORBELL_PAGE_OFFSET, NVME_VERSION, SQE, AdminOpcode, Reg
from nvshell.device.nvme.status import Status
from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.client import GuestRam, VfioUserClient, VfioUserError, VfioUserProtocolError
from nvshell.device.vfio_user.interface import IrqIndex, RegionAccessError, RegionFlag, RegionIndex
from nvshell.device.vfio_user.server import VfioUserServer
from nvshell.testing import CC_ENABLE, NvmeTestHost, ServedController, wait_until

BAR0 = RegionIndex.BAR0
#: MSI-X vectors of the test controller (admin + 3 I/O queues).
VECTORS = 4
SERIAL = "VFIOTEST"
#: Identify Controller: the Serial Number field (bytes 4..23, space padded).
SERIAL_FIELD = slice(4, 24)
CNS_CONTROLLER = 1
IDENTIFY_BYTES = 4096


def serial_of(identify: bytes) -> str:
    return identify[SERIAL_FIELD].decode().rstrip()


class Env:
    """One real controller (``ctrl``; ``device`` is its PCI function) served on ``path``
    (a ``ServedController``), and the server's connect/disconnect events."""

    def __init__(self, path: str, *, doorbells: str = "mmap", max_ioqpairs: int = 4):
        self.path = path
        self.served = ServedController(path, name="test", serial=SERIAL, doorbells=doorbells,
                                       max_ioqpairs=max_ioqpairs, max_intr_vectors=VECTORS)
        self.ctrl, self.server, self.iothread = self.served.ctrl, self.served.server, self.served.iothread
        self.device = self.ctrl.pci
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.server.on_event = lambda kind, data: self.events.append((kind, data))
        self.clients: list[VfioUserClient] = []
        self.hosts: list[NvmeTestHost] = []

    def client(self, negotiate: bool = True) -> VfioUserClient:
        c = VfioUserClient(timeout=3.0).connect(self.path)
        self.clients.append(c)
        if negotiate:
            c.negotiate()
        return c

    def host(self) -> NvmeTestHost:
        """An NVMe host driver (its own client, guest RAM, all MSI-X eventfds), enabled."""
        h = NvmeTestHost(self.path, ram_size=1 << 20, timeout=3.0)
        self.hosts.append(h)
        h.enable()
        return h

    def on_thread(self, fn: Any, *args: Any) -> Any:
        """Run on the IOThread; returning also proves every earlier event there was handled
        (a completion's interrupt included)."""
        return self.iothread.run(fn, *args)

    def wait_for(self, cond: Any, what: str) -> None:
        wait_until(lambda: self.on_thread(cond), what=what)

    def close(self) -> None:
        for h in self.hosts:
            h.close()
        for c in self.clients:
            c.close()
        self.served.close()


class AdminQueues:
    """A host's admin queue pair at guest addresses the test chooses, possibly in two
    different DMA regions (``sq_ram``/``cq_ram``), so a test decides which mapping the
    controller must DMA-read (SQEs) and DMA-write (CQEs). Doorbells are REGION_WRITEs.
    """

    DEPTH = 4

    def __init__(self, client: VfioUserClient, sq_ram: GuestRam, sq: int, cq_ram: GuestRam, cq: int):
        self.c, self.sq_ram, self.sq, self.cq_ram, self.cq = client, sq_ram, sq, cq_ram, cq
        self.tail = self.head = 0
        self.phase = 1
        self.cid = 0

    def enable(self) -> "AdminQueues":
        self.c.write32(BAR0, Reg.AQA, (self.DEPTH - 1) << 16 | (self.DEPTH - 1))
        self.c.region_write(BAR0, Reg.ASQ, self.sq.to_bytes(8, "little"))
        self.c.region_write(BAR0, Reg.ACQ, self.cq.to_bytes(8, "little"))
        self.c.write32(BAR0, Reg.CC, CC_ENABLE)
        wait_until(lambda: self.c.read32(BAR0, Reg.CSTS) & 1, what="CSTS.RDY")
        return self

    def command(self, opcode: int, **fields: int) -> Any:
        """One admin command; its CQE once the controller posted it."""
        self.cid += 1
        self.sq_ram.write(self.sq + SQE.size * self.tail, SQE.pack(opcode=opcode, cid=self.cid, **fields))
        self.tail = (self.tail + 1) % self.DEPTH
        self.c.write32(BAR0, DOORBELL_PAGE_OFFSET, self.tail)
        slot = self.cq + CQE.size * self.head
        cqe = wait_until(lambda: (e := CQE.unpack(self.cq_ram.read(slot, CQE.size))).status & 1 == self.phase
                         and e, what="an admin completion")
        self.head = (self.head + 1) % self.DEPTH
        self.phase ^= self.head == 0
        self.c.write32(BAR0, DOORBELL_PAGE_OFFSET + 4, self.head)
        assert cqe.cid == self.cid
        return cqe

    def identify(self, buf: int) -> int:
        """Identify Controller into guest address ``buf``; the completion's status."""
        return NvmeTestHost.status(self.command(AdminOpcode.IDENTIFY, dptr1=buf, cdw10=CNS_CONTROLLER))


class FaultyFunction:
    """The real PCI function with one deliberate defect at BAR0 offset ``FAULT``.

    Why: the server promises that no exception from a device escapes into the IOThread
    (a device bug becomes an error reply) and that a ``RegionAccessError`` the device
    raises becomes EINVAL. The real function never raises for an access the server's
    own bounds check let through, so only a device that raises on purpose reaches those
    paths. It implements the transport's declared interface (``VfioUserDevice``) by
    delegating everything else to the real function.
    """

    FAULT = 0x3F0

    def __init__(self, function: Any, error: Exception):
        self.function, self.error = function, error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.function, name)

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        if index == BAR0 and offset == self.FAULT:
            raise self.error
        return self.function.region_read(index, offset, count)

    def region_write(self, index: int, offset: int, data: bytes) -> None:
        if index == BAR0 and offset == self.FAULT:
            raise self.error
        self.function.region_write(index, offset, data)


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    e = Env(str(tmp_path / "vfio.sock"))
    yield e
    e.close()


@pytest.fixture
def client(env: Env) -> VfioUserClient:
    return env.client()


@pytest.fixture(params=[RuntimeError("simulated device bug"), RegionAccessError("simulated refused access")],
                ids=["device-bug", "device-refuses"])
def faulty(env: Env, request: pytest.FixtureRequest) -> Iterator[tuple[VfioUserClient, Exception]]:
    """A client of a second server whose device is ``FaultyFunction`` around env's
    function, and the exception that device raises."""
    path = env.path + ".faulty"
    server = VfioUserServer(path, FaultyFunction(env.device, request.param), env.iothread, name="faulty")
    server.start()
    c = VfioUserClient(timeout=3.0).connect(path)
    c.negotiate()
    yield c, request.param
    c.close()
    server.close()


def still_serving(c: VfioUserClient) -> None:
    info = c.device_info()
    assert (info.num_regions, info.num_irqs) == (9, 5)
    assert c.read32(BAR0, Reg.VS) == NVME_VERSION  # and the controller's registers still answer


def assert_dropped(c: VfioUserClient) -> None:
    """The server closed this connection (framing error)."""
    assert c.sock is not None
    c.sock.settimeout(3.0)
    assert c.sock.recv(1) == b""


def drained(c: VfioUserClient) -> None:
    """Wait until the server has read every byte this client sent (the socket's
    unread-by-peer count, SIOCOUTQ, is 0): a synchronisation point, not a sleep."""
    assert c.sock is not None
    sock = c.sock
    wait_until(lambda: int.from_bytes(fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4), "little") == 0,
               what="the server to read what was sent")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def regions(env: Env) -> list[tuple[int, int]]:
    return env.on_thread(lambda: [(r.addr, r.size) for r in env.server.memory.regions])


# ------------------------------------------------------------------ VERSION
def test_version_negotiation(env: Env) -> None:
    c = env.client(negotiate=False)
    assert not env.device.connected
    request = P.encode_version(0, 0, {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20,
                                                       "pgsizes": 4096, "max_dma_maps": 65535,
                                                       "write_multiple": True, "migration": {"pgsize": 4096}}})
    header, reply = c.request(P.Command.VERSION, request)
    assert header.size <= P.HEADER_SIZE + len(request)
    assert reply.endswith(b"\0")
    version = P.VERSION.unpack(reply)
    assert (version.major, version.minor) == (0, 0)
    caps = P.decode_version_json(reply[4:])["capabilities"]
    assert caps == {"max_msg_fds": 8, "max_data_xfer_size": 1 << 20, "pgsizes": 4096, "max_dma_maps": 65535}
    assert env.server.connected
    assert env.on_thread(lambda: env.device.connected)  # the PCI function was told
    assert [k for k, _ in env.events] == ["connected"]
    assert env.server.client_caps["max_msg_fds"] == 16


def test_request_before_version_and_second_version(env: Env) -> None:
    c = env.client(negotiate=False)
    with pytest.raises(VfioUserError) as err:
        c.device_info()
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        c.request(P.Command.VERSION, b"\0\0{bad json\0")
    assert not env.server.connected and not env.device.connected
    c.negotiate()
    with pytest.raises(VfioUserError) as err:
        c.negotiate()
    assert err.value.errno == errno.EINVAL
    still_serving(c)


def test_version_short_request_gets_short_reply(env: Env) -> None:
    c = env.client(negotiate=False)
    request = P.encode_version(0, 0, {})
    header, reply = c.request(P.Command.VERSION, request)
    assert header.size <= P.HEADER_SIZE + len(request)
    still_serving(c)


def test_version_bad_major(env: Env) -> None:
    c = env.client(negotiate=False)
    with pytest.raises(VfioUserError):
        c.negotiate(major=1)
    c.negotiate()
    still_serving(c)


# ------------------------------------------------------------- device info
def test_device_info(client: VfioUserClient) -> None:
    info = client.device_info()
    assert info.argsz == 16
    assert info.flags == P.DeviceFlag.RESET | P.DeviceFlag.PCI
    assert (info.num_regions, info.num_irqs) == (9, 5)
    with pytest.raises(VfioUserError) as err:
        client.request(P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=8))
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError) as err:
        client.request(P.Command.DEVICE_GET_INFO, b"\x10\0\0\0")  # short payload
    assert err.value.errno == errno.EINVAL
    still_serving(client)


def test_region_info_handshake(env: Env, client: VfioUserClient) -> None:
    doorbells = (DOORBELL_PAGE_OFFSET, env.ctrl.doorbells.area_size)
    # First ask with argsz 32, as QEMU does: 32 bytes back, argsz = full size, no fd.
    header, reply, fds = client.request_fds(P.Command.DEVICE_GET_REGION_INFO,
                                            P.REGION_INFO.pack(argsz=32, index=BAR0))
    assert fds == []
    assert header.size == P.HEADER_SIZE + 32
    first = P.REGION_INFO.unpack(reply)
    full_size = 32 + P.SPARSE_MMAP.size + P.SPARSE_AREA.size
    assert first.argsz == full_size
    assert first.flags & RegionFlag.CAPS and first.cap_offset >= 32
    # Second ask with the full size: capability and the fd of the doorbell memfd.
    header, reply, fds = client.request_fds(P.Command.DEVICE_GET_REGION_INFO,
                                            P.REGION_INFO.pack(argsz=full_size, index=BAR0))
    assert header.size == P.HEADER_SIZE + full_size and len(fds) == 1
    os.close(fds[0])
    info = P.decode_region_info(reply)
    assert info.areas == [doorbells]
    assert info.size == env.ctrl.doorbells.bar0_size == 0x4000
    assert info.flags == RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS

    via_client = client.region_info(BAR0)
    assert via_client.fd is not None and via_client.areas == [doorbells]

    config = client.region_info(RegionIndex.CONFIG)
    assert (config.size, config.flags, config.fd, config.areas) == (4096, RegionFlag.READ | RegionFlag.WRITE,
                                                                    None, [])
    assert config.argsz == 32
    # The MSI-X table and PBA live in the BARs the MSI-X capability names.
    assert client.region_info(RegionIndex.BAR4).size == env.device.msix_table_size
    assert client.region_info(RegionIndex.BAR5).size == env.device.msix_pba_size
    absent = client.region_info(RegionIndex.BAR2)
    assert (absent.size, absent.flags) == (0, 0)
    with pytest.raises(VfioUserError):
        client.region_info(9)
    with pytest.raises(VfioUserError):
        client.request(P.Command.DEVICE_GET_REGION_INFO, P.REGION_INFO.pack(argsz=16, index=0))
    still_serving(client)


def test_trapped_doorbells_offer_no_mmap_area(tmp_path: Any) -> None:
    e = Env(str(tmp_path / "trap.sock"), doorbells="trap")
    try:
        c = e.client()
        info = c.region_info(BAR0)
        assert (info.flags, info.fd, info.areas) == (RegionFlag.READ | RegionFlag.WRITE, None, [])
        with pytest.raises(VfioUserProtocolError):
            c.mmap_region_area(BAR0)
    finally:
        e.close()


def test_mmap_sparse_area(env: Env, client: VfioUserClient) -> None:
    area = client.mmap_region_area(BAR0)
    area[8:12] = (0x1234).to_bytes(4, "little")  # the SQ 1 tail doorbell, written as a vCPU writes it
    assert client.read32(BAR0, DOORBELL_PAGE_OFFSET + 8) == 0x1234  # the controller reads its memfd


# ------------------------------------------------------------ region access
def test_region_read_write(env: Env, client: VfioUserClient) -> None:
    client.write32(BAR0, Reg.AQA, 0x001F001F)
    assert client.read32(BAR0, Reg.AQA) == 0x001F001F
    assert env.on_thread(lambda: env.ctrl.aqa) == 0x001F001F
    assert client.region_read(BAR0, Reg.CAP, 8) == env.on_thread(lambda: env.ctrl.cap).to_bytes(8, "little")
    assert client.region_read(RegionIndex.CONFIG, 0, 4) == (0x00014E58).to_bytes(4, "little")
    big = client.region_read(RegionIndex.CONFIG, 0, 4096)  # QEMU reads all of config space at once
    assert len(big) == 4096 and big[:4] == (0x00014E58).to_bytes(4, "little")
    # exact reply layout
    _, reply = client.request(P.Command.REGION_WRITE,
                              P.REGION_RW.pack(offset=Reg.ASQ, region=0, count=4) + (0x5000).to_bytes(4, "little"))
    assert reply == P.REGION_RW.pack(offset=Reg.ASQ, region=0, count=4)
    assert client.read32(BAR0, Reg.ASQ) == 0x5000


@pytest.mark.parametrize("region,offset,count", [
    (BAR0, 0x4000 - 2, 4),                  # crosses the end
    (RegionIndex.BAR2, 0, 4),               # absent BAR
    (9, 0, 4),                              # no such region
    (RegionIndex.CONFIG, 0, (1 << 20) + 4),  # above max_data_xfer_size
])
def test_region_read_errors(client: VfioUserClient, region: int, offset: int, count: int) -> None:
    with pytest.raises(VfioUserError) as err:
        client.region_read(region, offset, count)
    assert err.value.errno == errno.EINVAL
    still_serving(client)


def test_region_write_errors(client: VfioUserClient) -> None:
    for region, offset in [(BAR0, 0x3FFE), (RegionIndex.BAR1, 0), (RegionIndex.CONFIG, 4094)]:
        with pytest.raises(VfioUserError):
            client.write32(region, offset, 1)
    # count disagrees with the data sent
    with pytest.raises(VfioUserError) as err:
        client.request(P.Command.REGION_WRITE, P.REGION_RW.pack(offset=Reg.AQA, region=0, count=8) + b"abcd")
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        client.request(P.Command.REGION_WRITE, b"\0" * 8)  # short
    assert client.read32(BAR0, Reg.AQA) == 0  # none of them reached the register
    still_serving(client)


def test_device_exception_is_an_error_reply(faulty: tuple[VfioUserClient, Exception],
                                            caplog: pytest.LogCaptureFixture) -> None:
    c, error = faulty
    with pytest.raises(VfioUserError) as err:
        c.region_read(BAR0, FaultyFunction.FAULT, 4)
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError) as err:
        c.write32(BAR0, FaultyFunction.FAULT, 1)
    assert err.value.errno == errno.EINVAL
    c.write32(BAR0, FaultyFunction.FAULT, 1, posted=True)  # a failing posted write stays silent
    still_serving(c)  # the next reply is the next message on the wire
    # A device bug is logged with its traceback; a refused access is an ordinary error reply.
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == (3 if isinstance(error, RuntimeError) else 0), caplog.text
    assert not [r for r in caplog.records if r.name == "nvshell.device.iothread"]


def test_max_size_read_larger_than_socket_buffer(tmp_path: Any) -> None:
    """A 1 MiB BAR0 (65534 queue pairs' doorbells) read at once: the reply is far larger
    than the socket buffers, so the server must send it in pieces as the client reads."""
    e = Env(str(tmp_path / "big.sock"), max_ioqpairs=0xFFFE)
    try:
        c = e.client()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[union-attr]
        assert c.region_info(BAR0).size == 1 << 20
        data = c.region_read(BAR0, 0, 1 << 20)
        assert len(data) == 1 << 20
        assert data[:8] == c.region_read(BAR0, Reg.CAP, 8) and data[Reg.VS:Reg.VS + 4] == c.region_read(BAR0, Reg.VS, 4)
        with pytest.raises(VfioUserError):
            c.region_read(BAR0, 1, 1 << 20)
        still_serving(c)
    finally:
        e.close()


def test_posted_writes_get_no_reply(env: Env, client: VfioUserClient) -> None:
    area = client.mmap_region_area(BAR0)
    for i in range(50):  # trapped doorbell writes: the controller mirrors them into its memfd
        client.write32(BAR0, DOORBELL_PAGE_OFFSET + 4 * (i % 8), i, posted=True)
    client.write32(BAR0, 0x4000 - 2, 1, posted=True)  # failing posted writes: still silent
    client.write32(RegionIndex.BAR2, 0, 1, posted=True)
    # The next request's reply must be the next message on the wire (the client checks msg_id).
    assert client.read32(BAR0, DOORBELL_PAGE_OFFSET + 4 * (49 % 8)) == 49
    # All applied, in order: each slot holds the last of its values.
    assert [int.from_bytes(area[4 * k:4 * k + 4], "little") for k in range(8)] == list(range(48, 50)) + list(range(42, 48))


# --------------------------------------------------------------------- DMA
def test_dma_map_and_device_access(env: Env, client: VfioUserClient) -> None:
    """The controller DMA-reads its SQEs and DMA-writes CQEs and Identify data."""
    ram = client.map_memory(0x100000, 0x10000)
    queues = AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
    last_page = 0x10F000  # up to the last byte of the mapping
    assert queues.identify(last_page) == Status.SUCCESS
    data = ram.read(last_page, IDENTIFY_BYTES)
    assert serial_of(data) == SERIAL
    assert regions(env) == [(0x100000, 0x10000)]


def test_dma_map_offset_and_readonly(env: Env, client: VfioUserClient) -> None:
    ram = client.map_memory(0x100000, 0x10000)
    # The admin SQ lives in a read-only mapping that starts 0x3000 into its memfd.
    sq_ram = client.map_memory(0x200000, 0x2000, offset=0x3000, prot=P.DmaMapFlag.READ)
    queues = AdminQueues(client, sq_ram, 0x200000, ram, 0x100000).enable()
    assert queues.identify(0x101000) == Status.SUCCESS  # the SQE was read through the offset
    assert serial_of(ram.read(0x101000, IDENTIFY_BYTES)) == SERIAL
    # A DMA write into the read-only mapping is refused: Data Transfer Error, nothing written.
    assert queues.identify(0x201000) == Status.DATA_TRANSFER_ERROR
    assert sq_ram.read(0x201000, IDENTIFY_BYTES) == bytes(IDENTIFY_BYTES)


def test_dma_map_errors(env: Env, client: VfioUserClient) -> None:
    ram = client.map_memory(0x100000, 0x10000)
    before = open_fds()
    with pytest.raises(VfioUserError) as err:
        client.map_memory(0x108000, 0x10000)  # overlaps
    assert err.value.errno == errno.EEXIST
    with pytest.raises(VfioUserError) as err:
        client.request(P.Command.DMA_MAP, P.DMA_MAP.pack(argsz=16, flags=3, addr=0x400000, size=0x1000))
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        client.request(P.Command.DMA_MAP, b"\0" * 12)
    with pytest.raises(VfioUserError):  # zero size
        client.dma_map(0x500000, 0)
    env.on_thread(lambda: None)
    assert open_fds() <= before  # the server closed the fds of refused maps
    assert regions(env) == [(0x100000, 0x10000)]
    # A map without fd is recorded, but the controller cannot reach it.
    client.dma_map(0x800000, 0x1000)
    queues = AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
    assert queues.identify(0x800000) == Status.DATA_TRANSFER_ERROR
    assert queues.identify(0x102000) == Status.SUCCESS
    still_serving(client)


def test_dma_unmap(env: Env, client: VfioUserClient) -> None:
    ram = client.map_memory(0x100000, 0x10000)
    client.map_memory(0x200000, 0x10000)
    queues = AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
    assert queues.identify(0x200000) == Status.SUCCESS
    reply = client.unmap(0x200000, 0x10000)
    assert reply == P.DMA_UNMAP.pack(argsz=24, flags=0, addr=0x200000, size=0x10000)
    assert regions(env) == [(0x100000, 0x10000)]
    assert queues.identify(0x200000) == Status.DATA_TRANSFER_ERROR  # gone for the controller too
    with pytest.raises(VfioUserError):
        client.unmap(0x200000, 0x10000)  # no longer mapped
    with pytest.raises(VfioUserError):  # unmap-all with a range
        client.request(P.Command.DMA_UNMAP, P.DMA_UNMAP.pack(argsz=24, flags=2, addr=1, size=1))
    with pytest.raises(VfioUserError):  # dirty page tracking
        client.request(P.Command.DMA_UNMAP, P.DMA_UNMAP.pack(argsz=24, flags=1, addr=0x100000, size=0x10000))
    assert regions(env) == [(0x100000, 0x10000)]
    client.unmap(0, 0, all=True)
    assert regions(env) == []
    still_serving(client)


@pytest.mark.parametrize("unmap_all", [False, True], ids=["unmap", "unmap-all"])
def test_queues_follow_memory_remapped_under_them(env: Env, client: VfioUserClient, unmap_all: bool) -> None:
    """The server tells the device before it unmaps (``dma_unmapping``): the controller
    drops its ring views, so once new memory is mapped at the same addresses its next
    SQE comes from (and its CQE goes to) the new memfd, not the old one."""
    ram = client.map_memory(0x100000, 0x10000)
    queues = AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
    assert queues.identify(0x102000) == Status.SUCCESS
    client.unmap(0, 0, all=True) if unmap_all else client.unmap(0x100000, 0x10000)
    assert regions(env) == []
    fresh = client.map_memory(0x100000, 0x10000)
    queues.sq_ram = queues.cq_ram = fresh
    assert queues.identify(0x103000) == Status.SUCCESS
    assert serial_of(fresh.read(0x103000, IDENTIFY_BYTES)) == SERIAL


def test_dma_fd_attribution_when_pipelined(env: Env, client: VfioUserClient) -> None:
    """A posted write (no fd) immediately followed by DMA_MAP (fd): the fd belongs to the map."""
    ram = client.map_memory(0x100000, 0x10000)
    fd = os.memfd_create("ram", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 0x1000)
        client.write32(RegionIndex.CONFIG, 0x0C, 0x10, posted=True)  # cache line size
        map_id = client.send(P.Command.DMA_MAP, P.DMA_MAP.pack(argsz=32, flags=3, addr=0x300000, size=0x1000),
                             [fd])
        header, _, fds = client.receive()
        assert (header.msg_id, header.flags, fds) == (map_id, P.MsgFlag.REPLY, [])
        assert client.region_read(RegionIndex.CONFIG, 0x0C, 1) == b"\x10"  # the posted write applied
        queues = AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
        assert queues.identify(0x300000) == Status.SUCCESS
        assert serial_of(os.pread(fd, IDENTIFY_BYTES, 0)) == SERIAL  # the controller wrote into that memfd
    finally:
        os.close(fd)


def test_too_many_fds(env: Env, client: VfioUserClient) -> None:
    fds = [os.eventfd(0) for _ in range(P.MAX_MSG_FDS + 2)]
    before = open_fds()
    try:
        with pytest.raises(VfioUserError) as err:
            client.set_irqs(2, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER, 0, len(fds), fds=fds)
        assert err.value.errno == errno.EINVAL
    finally:
        for fd in fds:
            os.close(fd)
    assert open_fds() <= before - len(fds)
    assert env.on_thread(lambda: env.server.interrupts.vectors) == []
    still_serving(client)


# -------------------------------------------------------------- interrupts
def test_irq_info(env: Env, client: VfioUserClient) -> None:
    msix = client.irq_info(IrqIndex.MSIX)
    assert (msix.argsz, msix.index, msix.count) == (16, 2, VECTORS)
    assert msix.flags == P.IrqInfoFlag.EVENTFD | P.IrqInfoFlag.NORESIZE
    intx = client.irq_info(IrqIndex.INTX)
    assert intx.count == env.device.irq_count(IrqIndex.INTX)
    assert intx.count == 1                                  # INTA# (tests/test_intx.py: its level semantics)
    assert intx.flags == P.IrqInfoFlag.EVENTFD | P.IrqInfoFlag.MASKABLE | P.IrqInfoFlag.AUTOMASKED
    with pytest.raises(VfioUserError):
        client.irq_info(5)
    with pytest.raises(VfioUserError):
        client.request(P.Command.DEVICE_GET_IRQ_INFO, P.IRQ_INFO.pack(argsz=4, index=2))
    still_serving(client)


#: An I/O command no namespace supports: it completes at once (Invalid Opcode or
#: Invalid Namespace), so it posts a CQE and signals its queue's vector.
NOOP_IO = 0x7F


def complete_on(env: Env, host: NvmeTestHost, qid: int) -> None:
    """One command completed on I/O queue ``qid`` (vector ``qid``), and every interrupt it
    causes already signalled (the IOThread got past it)."""
    host.submit(NOOP_IO, qid, nsid=1)
    host.reap(qid)
    env.on_thread(lambda: None)


def fired(host: NvmeTestHost, vector: int) -> bool:
    """The vector's eventfd was signalled (consumes it); never waits."""
    return host.client.wait_irq(vector, 0)


def test_msix_eventfds(env: Env) -> None:
    host = env.host()
    c = host.client
    for qid in range(1, VECTORS):
        host.create_io_queue(qid, 8)
    for vector in range(VECTORS):
        fired(host, vector)  # forget the admin commands' interrupts
    complete_on(env, host, 2)
    assert [fired(host, v) for v in range(VECTORS)] == [False, False, True, False]
    # QEMU style: swap one vector's fd
    old3 = os.dup(c.irq_fds[3])
    try:
        c.set_msix_eventfds(1, start=3)
        complete_on(env, host, 3)
        assert fired(host, 3)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(old3)  # the replaced eventfd is no longer signalled
    finally:
        os.close(old3)
    # de-assign vector 2 (count 1, no fds): its completions signal nothing
    c.set_irqs(2, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER, 2, 1)
    complete_on(env, host, 2)
    assert not fired(host, 2)
    complete_on(env, host, 1)
    assert fired(host, 1)
    # client-side trigger: DATA_NONE and DATA_BOOL (signalled before the reply)
    c.set_irqs(2, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_TRIGGER, 0, 1)
    assert fired(host, 0)
    c.set_irqs(2, P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_TRIGGER, 0, 2, data=b"\0\1")
    assert fired(host, 1) and not fired(host, 0)
    # disable all: completions still posted, no vector signalled
    c.disable_msix()
    assert env.on_thread(lambda: env.server.interrupts.vectors) == []
    complete_on(env, host, 1)
    assert not any(fired(host, v) for v in range(VECTORS))


def test_set_irqs_errors(env: Env, client: VfioUserClient) -> None:
    trigger_fd = P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER
    fds = [os.eventfd(0) for _ in range(2)]
    try:
        before = open_fds()
        cases = [
            dict(index=2, flags=trigger_fd, start=0, count=3, fds=fds),        # fd count != count
            dict(index=2, flags=trigger_fd, start=VECTORS - 1, count=2, fds=fds),  # beyond the table
            dict(index=0, flags=trigger_fd, start=0, count=2, fds=fds),        # INTx: not two vectors
            dict(index=7, flags=trigger_fd, start=0, count=2, fds=fds),        # no such index
            dict(index=2, flags=P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_TRIGGER, start=0, count=2,
                 fds=fds),                                                      # fds without DATA_EVENTFD
            dict(index=2, flags=P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_TRIGGER,
                 start=0, count=2, fds=()),                                     # two data flags
            dict(index=2, flags=P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_MASK, start=0, count=1, fds=()),
            dict(index=2, flags=P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_TRIGGER, start=0, count=4, fds=()),
        ]
        for case in cases:
            with pytest.raises(VfioUserError) as err:
                client.set_irqs(**case)  # type: ignore[arg-type]
            assert err.value.errno == errno.EINVAL, case
        assert open_fds() <= before  # refused eventfds closed by the server
        with pytest.raises(VfioUserError):
            client.request(P.Command.DEVICE_SET_IRQS, P.IRQ_SET.pack(argsz=8, flags=0x21, index=2))
    finally:
        for fd in fds:
            os.close(fd)
    assert env.on_thread(lambda: env.server.interrupts.vectors) == []
    still_serving(client)


# ----------------------------------------------------------- misc commands
def test_reset(env: Env, client: VfioUserClient) -> None:
    """DEVICE_RESET is a function reset: the controller disabled, config space and the
    MSI-X table (in BAR4) back to power-on values."""
    ram = client.map_memory(0x100000, 0x10000)
    AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
    client.write32(RegionIndex.CONFIG, 0x04, 0x0006)           # memory space + bus master
    client.write32(RegionIndex.BAR4, 12, 0)                    # unmask vector 0
    client.reset()
    assert client.read32(BAR0, Reg.CSTS) & 1 == 0 and client.read32(BAR0, Reg.CC) == 0
    assert client.read32(RegionIndex.CONFIG, 0x04) & 0xFFFF == 0
    assert client.read32(RegionIndex.BAR4, 12) == 1            # masked again
    assert client.region_read(RegionIndex.BAR5, 0, 8) == bytes(8)  # nothing pending
    still_serving(client)


def test_unknown_and_unexpected(client: VfioUserClient) -> None:
    for command in (0, 6, 11, 12, 14, 15, 16, 99, 0xFFFF):
        with pytest.raises(VfioUserError) as err:
            client.request(command, b"\0" * 8)
        assert err.value.errno == errno.ENOSYS, command
    fd = os.eventfd(0)
    before = open_fds()
    with pytest.raises(VfioUserError) as err:
        client.request(P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=16), [fd])
    assert err.value.errno == errno.EINVAL
    os.close(fd)
    assert open_fds() <= before - 1  # the server closed its copy
    still_serving(client)


def test_reply_typed_message_is_ignored(client: VfioUserClient) -> None:
    client.send_raw(P.pack_header(77, P.Command.DEVICE_GET_INFO, 16, P.MsgFlag.REPLY) + P.DEVICE_INFO.pack(argsz=16))
    still_serving(client)


def test_trace_hook(env: Env, client: VfioUserClient) -> None:
    seen: list[tuple[str, int, int]] = []
    env.server.trace = lambda d, c, s: seen.append((d, c, s))
    client.device_info()
    assert seen == [("rx", 4, 32), ("tx", 4, 32)]
    env.server.trace = None


# ------------------------------------------------------------------ framing
@pytest.mark.parametrize("raw", [
    P.HEADER.pack(msg_id=1, command=4, size=8, flags=0, error=0),                  # size < header
    P.HEADER.pack(msg_id=1, command=10, size=P.MAX_MESSAGE_SIZE + 1, flags=0, error=0),  # absurd size
])
def test_framing_errors_drop_client(env: Env, client: VfioUserClient, raw: bytes) -> None:
    client.send_raw(raw)
    assert_dropped(client)
    env.wait_for(lambda: not env.server.connected, "the server to drop the client")
    assert not env.device.connected
    still_serving(env.client())


@pytest.mark.parametrize("raw", [
    b"\x01\x00\x04",                                                                # short header
    P.HEADER.pack(msg_id=1, command=4, size=64, flags=0, error=0) + b"\x10\0\0\0",  # size > bytes sent
])
def test_truncated_message_then_disconnect(env: Env, client: VfioUserClient, raw: bytes) -> None:
    client.send_raw(raw)
    drained(client)  # the server holds a partial message when the client goes
    client.close()
    env.wait_for(lambda: not env.server.connected, "the server to see the client go")
    still_serving(env.client())


def test_message_split_across_writes(client: VfioUserClient) -> None:
    msg = P.pack_header(42, P.Command.DEVICE_GET_INFO, 16) + P.DEVICE_INFO.pack(argsz=16)
    for i in range(len(msg)):
        client.send_raw(msg[i:i + 1])
        drained(client)  # the server read this byte on its own before the next is sent
    header, payload, _ = client.receive()
    assert header.msg_id == 42 and P.DEVICE_INFO.unpack(payload).num_regions == 9


# -------------------------------------------------------- client lifecycle
def test_disconnect_and_reconnect(env: Env, client: VfioUserClient) -> None:
    ram = client.map_memory(0x100000, 0x10000)
    client.set_msix_eventfds(VECTORS)
    AdminQueues(client, ram, 0x100000, ram, 0x101000).enable()
    client.close()
    env.wait_for(lambda: not env.server.connected, "the server to see the client go")
    assert env.on_thread(lambda: (env.server.memory.regions, env.server.interrupts.vectors)) == ([], [])
    assert not env.device.connected
    assert [k for k, _ in env.events] == ["connected", "disconnected"]
    assert env.events[1][1]["name"] == "test" and env.events[1][1]["pid"] == os.getpid()
    # The controller was reset (the VM is gone without a shutdown) and counted it;
    # device state (the SMART counters) is kept for the next client.
    assert env.on_thread(lambda: (env.ctrl.csts & 1, env.ctrl.stats.unsafe_shutdowns)) == (0, 1)
    second = env.client()
    assert second.read32(BAR0, Reg.CSTS) & 1 == 0 and second.read32(BAR0, Reg.AQA) == 0
    ram = second.map_memory(0x100000, 0x10000)  # same range maps again: the old one is gone
    queues = AdminQueues(second, ram, 0x100000, ram, 0x101000).enable()
    assert queues.identify(0x102000) == Status.SUCCESS
    assert [k for k, _ in env.events] == ["connected", "disconnected", "connected"]


def test_second_client_refused(env: Env, client: VfioUserClient) -> None:
    intruder = VfioUserClient(timeout=3.0).connect(env.path)
    try:
        with pytest.raises((VfioUserProtocolError, ConnectionError)):
            intruder.negotiate()
    finally:
        intruder.close()
    still_serving(client)
    assert [k for k, _ in env.events] == ["connected"]


def test_close_unlinks_and_drops(env: Env, client: VfioUserClient) -> None:
    env.server.close()
    assert not os.path.exists(env.path)
    assert_dropped(client)
    assert not env.device.connected
    assert [k for k, _ in env.events] == ["connected", "disconnected"]
    env.server.close()  # idempotent


def test_close_after_iothread_stopped(env: Env, client: VfioUserClient) -> None:
    env.iothread.stop()
    env.server.close()
    assert not os.path.exists(env.path)


def test_stale_socket_replaced_live_one_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    e = Env(path)  # replaces the stale socket
    try:
        other = Controller(ControllerConfig(serial="other"), None, e.iothread)
        with pytest.raises(OSError):
            VfioUserServer(path, other.pci, e.iothread).start()
        e.on_thread(other.shutdown)
        assert os.path.exists(path)  # the live server's socket is untouched
        still_serving(e.client())
    finally:
        e.close()


def test_many_messages_in_one_write(env: Env, client: VfioUserClient) -> None:
    burst = b"".join(P.pack_header(1000 + i, P.Command.REGION_WRITE, 20, P.MsgFlag.NO_REPLY)
                     + P.REGION_RW.pack(offset=Reg.AQA, region=0, count=4) + i.to_bytes(4, "little")
                     for i in range(300))
    client.send_raw(burst)
    assert client.read32(BAR0, Reg.AQA) == 299


def test_random_messages_never_kill_the_server(env: Env, client: VfioUserClient,
                                               caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(1234)
    for _ in range(400):
        command = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 10, 13, rng.randrange(0, 0x10000)])
        if command in (2, 3) and rng.random() < 0.7:
            continue  # keep the DMA state small; random maps without fds are fine too
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 4, 8, 16, 20, 24, 32, 40, 64])))
        if command in (9, 10) and len(payload) >= 16 and rng.random() < 0.8:
            # mostly plausible accesses so the PCI function and the controller are really reached
            count = rng.choice([1, 2, 4, 8])
            rw = P.REGION_RW.pack(offset=rng.randrange(0, 0x4100), region=rng.choice([0, 4, 5, 7, 9]), count=count)
            payload = rw + (bytes(count) if command == 10 else b"")
        msg_id = client.send(command, payload)
        header, _, fds = client.receive()
        for fd in fds:
            os.close(fd)
        assert header.msg_id == msg_id and header.flags & P.TYPE_MASK == P.MsgFlag.REPLY
    still_serving(client)
    # Neither the IOThread nor the server saw an exception: the real device never raises.
    assert not [r for r in caplog.records if r.name == "nvshell.device.iothread" or r.exc_info], caplog.text
