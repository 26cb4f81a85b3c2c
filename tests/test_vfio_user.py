"""vfio-user transport: a real VfioUserServer on a real IOThread, driven by VfioUserClient.

Every bad-input test ends by proving the server still serves (a normal request
on the same connection, or a fresh client for framing errors).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import Any, Iterator

import pytest

from nvshell.device.iothread import IOThread
from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.client import VfioUserClient, VfioUserError, VfioUserProtocolError
from nvshell.device.vfio_user.interface import IrqIndex, RegionFlag, RegionIndex
from nvshell.device.vfio_user.server import VfioUserServer
from tests.test_vfio_user_fake import DOORBELL_OFFSET, DOORBELL_SIZE, MSIX_VECTORS, FakeDevice


class Env:
    def __init__(self, path: str):
        self.path = path
        self.iothread = IOThread("vfio-test")
        self.iothread.start()
        self.device = FakeDevice()
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.server = VfioUserServer(path, self.device, self.iothread, name="test",
                                     on_event=lambda kind, data: self.events.append((kind, data)))
        self.server.start()
        self.clients: list[VfioUserClient] = []

    def client(self, negotiate: bool = True) -> VfioUserClient:
        c = VfioUserClient(timeout=3.0).connect(self.path)
        self.clients.append(c)
        if negotiate:
            c.negotiate()
        return c

    def on_thread(self, fn: Any, *args: Any) -> Any:
        return self.iothread.run(fn, *args)

    def wait_for(self, cond: Any, timeout: float = 3.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.on_thread(cond):
                return True
            time.sleep(0.005)
        return False

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.close()
        self.iothread.stop()
        self.device.close()


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    e = Env(str(tmp_path / "vfio.sock"))
    yield e
    e.close()


@pytest.fixture
def client(env: Env) -> VfioUserClient:
    return env.client()


def still_serving(c: VfioUserClient) -> None:
    info = c.device_info()
    assert (info.num_regions, info.num_irqs) == (9, 5)


def assert_dropped(c: VfioUserClient) -> None:
    """The server closed this connection (framing error)."""
    assert c.sock is not None
    c.sock.settimeout(3.0)
    assert c.sock.recv(1) == b""


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ VERSION
def test_version_negotiation(env: Env) -> None:
    c = env.client(negotiate=False)
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
    assert env.device.count("connected") == 1
    assert [k for k, _ in env.events] == ["connected"]
    assert env.server.client_caps["max_msg_fds"] == 16


def test_request_before_version_and_second_version(env: Env) -> None:
    c = env.client(negotiate=False)
    with pytest.raises(VfioUserError) as err:
        c.device_info()
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        c.request(P.Command.VERSION, b"\0\0{bad json\0")
    assert not env.server.connected
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


def test_region_info_handshake(client: VfioUserClient) -> None:
    # First ask with argsz 32, as QEMU does: 32 bytes back, argsz = full size, no fd.
    header, reply, fds = client.request_fds(P.Command.DEVICE_GET_REGION_INFO,
                                            P.REGION_INFO.pack(argsz=32, index=RegionIndex.BAR0))
    assert fds == []
    assert header.size == P.HEADER_SIZE + 32
    first = P.REGION_INFO.unpack(reply)
    full_size = 32 + P.SPARSE_MMAP.size + P.SPARSE_AREA.size
    assert first.argsz == full_size
    assert first.flags & RegionFlag.CAPS and first.cap_offset >= 32
    # Second ask with the full size: capability and the fd.
    header, reply, fds = client.request_fds(P.Command.DEVICE_GET_REGION_INFO,
                                            P.REGION_INFO.pack(argsz=full_size, index=RegionIndex.BAR0))
    assert header.size == P.HEADER_SIZE + full_size and len(fds) == 1
    os.close(fds[0])
    info = P.decode_region_info(reply)
    assert info.areas == [(DOORBELL_OFFSET, DOORBELL_SIZE)]
    assert info.size == 0x4000
    assert info.flags == RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP | RegionFlag.CAPS

    via_client = client.region_info(RegionIndex.BAR0)
    assert via_client.fd is not None and via_client.areas == [(DOORBELL_OFFSET, DOORBELL_SIZE)]

    config = client.region_info(RegionIndex.CONFIG)
    assert (config.size, config.flags, config.fd, config.areas) == (4096, RegionFlag.READ | RegionFlag.WRITE,
                                                                    None, [])
    assert config.argsz == 32
    absent = client.region_info(RegionIndex.BAR2)
    assert (absent.size, absent.flags) == (0, 0)
    with pytest.raises(VfioUserError):
        client.region_info(9)
    with pytest.raises(VfioUserError):
        client.request(P.Command.DEVICE_GET_REGION_INFO, P.REGION_INFO.pack(argsz=16, index=0))
    still_serving(client)


def test_mmap_sparse_area(env: Env, client: VfioUserClient) -> None:
    area = client.mmap_region_area(RegionIndex.BAR0)
    area[8:12] = (0x1234).to_bytes(4, "little")  # a doorbell write, as a vCPU would do it
    assert env.device.doorbells[8:12] == (0x1234).to_bytes(4, "little")
    assert client.read32(RegionIndex.BAR0, DOORBELL_OFFSET + 8) == 0x1234


# ------------------------------------------------------------ region access
def test_region_read_write(env: Env, client: VfioUserClient) -> None:
    client.write32(RegionIndex.BAR0, 0x14, 0xDEADBEEF)
    assert client.read32(RegionIndex.BAR0, 0x14) == 0xDEADBEEF
    assert client.region_read(RegionIndex.CONFIG, 0, 4) == (0x00014E58).to_bytes(4, "little")
    big = client.region_read(RegionIndex.CONFIG, 0, 4096)  # QEMU reads all of config space at once
    assert len(big) == 4096
    # exact reply layout
    _, reply = client.request(P.Command.REGION_WRITE,
                              P.REGION_RW.pack(offset=0x18, region=0, count=4) + b"abcd")
    assert reply == P.REGION_RW.pack(offset=0x18, region=0, count=4)


@pytest.mark.parametrize("region,offset,count", [
    (RegionIndex.BAR0, 0x4000 - 2, 4),     # crosses the end
    (RegionIndex.BAR2, 0, 4),              # absent BAR
    (9, 0, 4),                             # no such region
    (RegionIndex.CONFIG, 0, (1 << 20) + 4),  # above max_data_xfer_size
    (RegionIndex.BAR0, 0xFF0, 4),          # device raises RuntimeError
    (RegionIndex.BAR0, 0xFE0, 4),          # device raises RegionAccessError
])
def test_region_read_errors(client: VfioUserClient, region: int, offset: int, count: int) -> None:
    with pytest.raises(VfioUserError) as err:
        client.region_read(region, offset, count)
    assert err.value.errno == errno.EINVAL
    still_serving(client)


def test_region_write_errors(client: VfioUserClient) -> None:
    for region, offset in [(RegionIndex.BAR0, 0xFF0), (RegionIndex.BAR0, 0x3FFE), (RegionIndex.BAR1, 0)]:
        with pytest.raises(VfioUserError):
            client.write32(region, offset, 1)
    # count disagrees with the data sent
    with pytest.raises(VfioUserError) as err:
        client.request(P.Command.REGION_WRITE, P.REGION_RW.pack(offset=0x10, region=0, count=8) + b"abcd")
    assert err.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        client.request(P.Command.REGION_WRITE, b"\0" * 8)  # short
    still_serving(client)


def test_max_size_read_larger_than_socket_buffer(client: VfioUserClient) -> None:
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # type: ignore[union-attr]
    data = client.region_read(RegionIndex.BAR4, 0, 1 << 20)
    assert len(data) == 1 << 20 and data[:4] == bytes([0, 1, 2, 3]) and data[-1] == 0xFF
    with pytest.raises(VfioUserError):
        client.region_read(RegionIndex.BAR4, 1, 1 << 20)
    still_serving(client)


def test_posted_writes_get_no_reply(env: Env, client: VfioUserClient) -> None:
    for i in range(50):
        client.write32(RegionIndex.BAR0, 0x100 + 4 * (i % 8), i, posted=True)
    client.write32(RegionIndex.BAR0, 0xFF0, 1, posted=True)  # failing posted write: still silent
    client.write32(RegionIndex.BAR2, 0, 1, posted=True)
    # The next request's reply must be the next message on the wire (the client checks msg_id).
    assert client.read32(RegionIndex.BAR0, 0x100 + 4 * (49 % 8)) == 49
    writes = [c for c in env.device.calls if c[0] == "write" and 0x100 <= c[2] < 0x120]
    assert len(writes) == 50  # all applied, in order
    assert [int.from_bytes(w[3], "little") for w in writes] == list(range(50))


# --------------------------------------------------------------------- DMA
def test_dma_map_and_device_access(env: Env, client: VfioUserClient) -> None:
    ram = client.map_memory(0x100000, 0x10000)
    ram.write(0x100800, (0x1122334455667788).to_bytes(8, "little"))
    client.region_write(RegionIndex.BAR0, 0x30, (0x100800).to_bytes(8, "little"))  # device DMA read
    assert client.region_read(RegionIndex.BAR0, 0x40, 8) == (0x1122334455667788).to_bytes(8, "little")
    client.region_write(RegionIndex.BAR0, 0x48, b"fromdev!")
    client.region_write(RegionIndex.BAR0, 0x38, (0x10FFF8).to_bytes(8, "little"))  # device DMA write
    assert ram.read(0x10FFF8, 8) == b"fromdev!"
    regions = env.on_thread(lambda: [(r.addr, r.size) for r in env.server.memory.regions])
    assert regions == [(0x100000, 0x10000)]


def test_dma_map_offset_and_readonly(env: Env, client: VfioUserClient) -> None:
    ram = client.map_memory(0x200000, 0x2000, offset=0x3000, prot=P.DmaMapFlag.READ)
    ram.write(0x200010, b"12345678")
    client.region_write(RegionIndex.BAR0, 0x30, (0x200010).to_bytes(8, "little"))
    assert client.region_read(RegionIndex.BAR0, 0x40, 8) == b"12345678"
    client.region_write(RegionIndex.BAR0, 0x38, (0x200010).to_bytes(8, "little"))  # write to read-only
    assert env.device.dma_errors and "read-only" in env.device.dma_errors[-1]


def test_dma_map_errors(env: Env, client: VfioUserClient) -> None:
    client.map_memory(0x100000, 0x10000)
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
    assert env.wait_for(lambda: True)
    assert open_fds() <= before + 0  # server closed the fds of refused maps
    # a map without fd is recorded (not accessible)
    client.dma_map(0x800000, 0x1000)
    client.region_write(RegionIndex.BAR0, 0x30, (0x800000).to_bytes(8, "little"))
    assert "without a file descriptor" in env.device.dma_errors[-1]
    still_serving(client)


def test_dma_unmap(env: Env, client: VfioUserClient) -> None:
    client.map_memory(0x100000, 0x10000)
    client.map_memory(0x200000, 0x10000)
    reply = client.unmap(0x100000, 0x10000)
    assert reply == P.DMA_UNMAP.pack(argsz=24, flags=0, addr=0x100000, size=0x10000)
    assert ("dma_unmapping", 0x100000, 0x10000) in env.device.calls
    client.region_write(RegionIndex.BAR0, 0x30, (0x100000).to_bytes(8, "little"))
    assert "not mapped" in env.device.dma_errors[-1]
    with pytest.raises(VfioUserError):
        client.unmap(0x100000, 0x10000)  # no longer mapped
    with pytest.raises(VfioUserError):  # unmap-all with a range
        client.request(P.Command.DMA_UNMAP, P.DMA_UNMAP.pack(argsz=24, flags=2, addr=1, size=1))
    with pytest.raises(VfioUserError):  # dirty page tracking
        client.request(P.Command.DMA_UNMAP, P.DMA_UNMAP.pack(argsz=24, flags=1, addr=0x200000, size=0x10000))
    client.unmap(0, 0, all=True)
    assert env.on_thread(lambda: env.server.memory.regions) == []
    assert ("dma_unmapping", 0, 1 << 64) in env.device.calls
    still_serving(client)


def test_dma_fd_attribution_when_pipelined(env: Env, client: VfioUserClient) -> None:
    """A posted write (no fd) immediately followed by DMA_MAP (fd): the fd belongs to the map."""
    fd = os.memfd_create("ram", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, 0x1000)
    os.pwrite(fd, b"pipelined", 0)
    client.write32(RegionIndex.BAR0, 0x100, 7, posted=True)
    map_id = client.send(P.Command.DMA_MAP, P.DMA_MAP.pack(argsz=32, flags=3, addr=0x300000, size=0x1000), [fd])
    os.close(fd)
    header, _, fds = client.receive()
    assert (header.msg_id, header.flags, fds) == (map_id, P.MsgFlag.REPLY, [])
    client.region_write(RegionIndex.BAR0, 0x30, (0x300000).to_bytes(8, "little"))
    assert client.region_read(RegionIndex.BAR0, 0x40, 8) == b"pipeline"


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
    still_serving(client)


# -------------------------------------------------------------- interrupts
def test_irq_info(client: VfioUserClient) -> None:
    msix = client.irq_info(IrqIndex.MSIX)
    assert (msix.argsz, msix.index, msix.count) == (16, 2, MSIX_VECTORS)
    assert msix.flags == P.IrqInfoFlag.EVENTFD | P.IrqInfoFlag.NORESIZE
    intx = client.irq_info(IrqIndex.INTX)
    assert intx.count == 0
    with pytest.raises(VfioUserError):
        client.irq_info(5)
    with pytest.raises(VfioUserError):
        client.request(P.Command.DEVICE_GET_IRQ_INFO, P.IRQ_INFO.pack(argsz=4, index=2))
    still_serving(client)


def fire(client: VfioUserClient, vector: int) -> None:
    client.region_write(RegionIndex.BAR0, 0x20, vector.to_bytes(8, "little"))


def test_msix_eventfds(env: Env, client: VfioUserClient) -> None:
    client.set_msix_eventfds(MSIX_VECTORS)
    fire(client, 2)
    assert client.wait_irq(2, 1.0)
    assert not client.wait_irq(1, 0.05)
    assert env.device.fired[-1] == (2, True)
    # QEMU style: swap one vector's fd
    client.set_msix_eventfds(1, start=3)
    fire(client, 3)
    assert client.wait_irq(3, 1.0)
    # de-assign vector 2 (count 1, no fds)
    client.set_irqs(2, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER, 2, 1)
    fire(client, 2)
    assert env.device.fired[-1] == (2, False)
    assert not client.wait_irq(2, 0.05)
    fire(client, 1)
    assert env.device.fired[-1] == (1, True)
    # client-side trigger: DATA_NONE and DATA_BOOL
    client.set_irqs(2, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_TRIGGER, 0, 1)
    assert client.wait_irq(0, 1.0)
    client.set_irqs(2, P.IrqSetFlag.DATA_BOOL | P.IrqSetFlag.ACTION_TRIGGER, 0, 2, data=b"\0\1")
    assert client.wait_irq(1, 1.0) and not client.wait_irq(0, 0.05)
    # disable all
    client.disable_msix()
    fire(client, 0)
    assert env.device.fired[-1] == (0, False)
    assert env.on_thread(lambda: env.server.interrupts.vectors) == []


def test_set_irqs_errors(env: Env, client: VfioUserClient) -> None:
    trigger_fd = P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER
    fds = [os.eventfd(0) for _ in range(2)]
    try:
        before = open_fds()
        cases = [
            dict(index=2, flags=trigger_fd, start=0, count=3, fds=fds),        # fd count != count
            dict(index=2, flags=trigger_fd, start=3, count=2, fds=fds),        # beyond the table
            dict(index=0, flags=trigger_fd, start=0, count=2, fds=fds),        # INTx: no vectors
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
    client.reset()
    assert env.device.count("reset") == 1


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
    assert env.wait_for(lambda: not env.server.connected)
    still_serving(env.client())


@pytest.mark.parametrize("raw", [
    b"\x01\x00\x04",                                                                # short header
    P.HEADER.pack(msg_id=1, command=4, size=64, flags=0, error=0) + b"\x10\0\0\0",  # size > bytes sent
])
def test_truncated_message_then_disconnect(env: Env, client: VfioUserClient, raw: bytes) -> None:
    client.send_raw(raw)
    time.sleep(0.02)
    client.close()
    assert env.wait_for(lambda: not env.server.connected)
    still_serving(env.client())


def test_message_split_across_writes(client: VfioUserClient) -> None:
    msg = P.pack_header(42, P.Command.DEVICE_GET_INFO, 16) + P.DEVICE_INFO.pack(argsz=16)
    for i in range(len(msg)):
        client.send_raw(msg[i:i + 1])
        time.sleep(0.001)
    header, payload, _ = client.receive()
    assert header.msg_id == 42 and P.DEVICE_INFO.unpack(payload).num_regions == 9


# -------------------------------------------------------- client lifecycle
def test_disconnect_and_reconnect(env: Env, client: VfioUserClient) -> None:
    client.map_memory(0x100000, 0x10000)
    client.set_msix_eventfds(MSIX_VECTORS)
    client.write32(RegionIndex.BAR0, 0x14, 0xCAFE)
    client.close()
    assert env.wait_for(lambda: not env.server.connected)
    assert env.on_thread(lambda: (env.server.memory.regions, env.server.interrupts.vectors)) == ([], [])
    assert env.device.count("disconnected") == 1
    assert [k for k, _ in env.events] == ["connected", "disconnected"]
    assert env.events[1][1]["name"] == "test" and env.events[1][1]["pid"] == os.getpid()
    second = env.client()
    assert second.read32(RegionIndex.BAR0, 0x14) == 0xCAFE  # device state kept
    second.map_memory(0x100000, 0x10000)  # same range maps again: the old one is gone
    assert [k for k, _ in env.events] == ["connected", "disconnected", "connected"]


def test_second_client_refused(env: Env, client: VfioUserClient) -> None:
    intruder = VfioUserClient(timeout=3.0).connect(env.path)
    try:
        with pytest.raises((VfioUserProtocolError, ConnectionError)):
            intruder.negotiate()
    finally:
        intruder.close()
    still_serving(client)
    assert env.device.count("connected") == 1


def test_close_unlinks_and_drops(env: Env, client: VfioUserClient) -> None:
    env.server.close()
    assert not os.path.exists(env.path)
    assert_dropped(client)
    assert env.device.count("disconnected") == 1
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
    io = IOThread("stale")
    io.start()
    dev = FakeDevice()
    server = VfioUserServer(path, dev, io)
    try:
        server.start()  # replaces the stale socket
        other_dev = FakeDevice()
        other = VfioUserServer(path, other_dev, io)
        with pytest.raises(OSError):
            other.start()
        other_dev.close()
        assert os.path.exists(path)  # the live server's socket is untouched
        with VfioUserClient().connect(path) as c:
            c.negotiate()
            still_serving(c)
    finally:
        server.close()
        io.stop()
        dev.close()


def test_many_messages_in_one_write(env: Env, client: VfioUserClient) -> None:
    burst = b"".join(P.pack_header(1000 + i, P.Command.REGION_WRITE, 20, P.MsgFlag.NO_REPLY)
                     + P.REGION_RW.pack(offset=0x200, region=0, count=4) + i.to_bytes(4, "little")
                     for i in range(300))
    client.send_raw(burst)
    assert client.read32(RegionIndex.BAR0, 0x200) == 299


def test_random_messages_never_kill_the_server(env: Env, client: VfioUserClient,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import random
    rng = random.Random(1234)
    for _ in range(400):
        command = rng.choice([1, 2, 3, 4, 5, 7, 8, 9, 10, 13, rng.randrange(0, 0x10000)])
        if command in (2, 3) and rng.random() < 0.7:
            continue  # keep the DMA state small; random maps without fds are fine too
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 4, 8, 16, 20, 24, 32, 40, 64])))
        if command in (9, 10) and len(payload) >= 16 and rng.random() < 0.8:
            # mostly plausible accesses so the device is really reached
            count = rng.choice([1, 2, 4, 8])
            rw = P.REGION_RW.pack(offset=rng.randrange(0, 0x4100), region=rng.choice([0, 4, 7, 9]), count=count)
            payload = rw + (bytes(count) if command == 10 else b"")
        msg_id = client.send(command, payload)
        header, _, fds = client.receive()
        for fd in fds:
            os.close(fd)
        assert header.msg_id == msg_id and header.flags & P.TYPE_MASK == P.MsgFlag.REPLY
    still_serving(client)
    assert not [r for r in caplog.records if r.name == "nvshell.device.iothread"]
