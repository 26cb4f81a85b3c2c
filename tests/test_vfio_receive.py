"""The vfio-user receive path: ``MessageReader`` on a real kernel socket pair, and the
real server behind it (one ``recvmsg`` per wake-up, every whole message in it handled).

The reader tests write exactly the byte and descriptor patterns a client can produce
(several messages in one write, a message cut at every byte, descriptors on a message
read together with others, messages larger than the buffer, EOF mid-message) and check
what the reader frames and to which message the kernel's SCM_RIGHTS go; the facts that
makes them right are in ``device/vfio_user/receive.py``. The server tests check the same
through the controller, plus the MESSAGES_PER_WAKEUP fairness a buffered burst keeps.
"""

from __future__ import annotations

import array
import os
import select
import socket
import threading
from typing import Any, Iterator, Sequence

import pytest

import nvshell.device.nvme  # noqa: F401  (registers every command)
from nvshell.device.nvme.spec import Reg
from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.interface import RegionIndex
from nvshell.device.vfio_user.receive import RX_BUFFER_SIZE, FramingError, Message, MessageReader
from nvshell.device.vfio_user.server import MESSAGES_PER_WAKEUP
from tests.test_vfio_user import BAR0, Env, assert_dropped, drained, open_fds, still_serving


def message(msg_id: int, command: int = P.Command.REGION_WRITE, payload: bytes = b"", flags: int = 0) -> bytes:
    return P.pack_header(msg_id, command, len(payload), flags) + payload


def doorbell(msg_id: int, value: int = 0) -> bytes:
    """A REGION_WRITE as QEMU sends a trapped doorbell (36 bytes)."""
    return message(msg_id, payload=P.REGION_RW.pack(offset=0x1000, region=0, count=4) + value.to_bytes(4, "little"))


def send(sock: socket.socket, data: bytes, fds: Sequence[int] = ()) -> None:
    """One sendmsg (descriptors on it), as a vfio-user client sends one message."""
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    assert sock.sendmsg([data], anc) == len(data)


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def take_all(reader: MessageReader) -> list[Message]:
    out = []
    while (msg := reader.next()) is not None:
        out.append(msg)
    return out


class Pair:
    """A connected socket pair: ``client`` writes, ``reader`` frames what ``server`` reads."""

    def __init__(self, buffer_size: int = RX_BUFFER_SIZE):
        self.client, self.server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.setblocking(False)
        self.reader = MessageReader(buffer_size)
        self.taken: list[Message] = []

    def fill(self) -> int:
        return self.reader.fill(self.server)

    def close(self) -> None:
        self.reader.reset()
        for msg in self.taken:
            for fd in msg.fds:
                os.close(fd)
        self.client.close()
        self.server.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


# ------------------------------------------------------------------ framing
def test_several_messages_in_one_read(pair: Pair) -> None:
    burst = b"".join(doorbell(i, i) for i in range(100))
    send(pair.client, burst)
    assert not pair.reader.ready()
    assert pair.fill() == len(burst)  # one recvmsg took all of them
    assert pair.reader.ready()
    got = take_all(pair.reader)
    assert [m.header.msg_id for m in got] == list(range(100))
    assert [int.from_bytes(m.payload[-4:], "little") for m in got] == list(range(100))
    assert all(m.header.size == 36 and m.fds == [] and not m.fds_truncated for m in got)
    assert not pair.reader.ready()
    with pytest.raises(BlockingIOError):
        pair.fill()


@pytest.mark.parametrize("before", [0, 1], ids=["alone", "behind-a-whole-message"])
def test_a_message_split_at_every_byte(pair: Pair, before: int) -> None:
    """Every cut of a header-and-body message, optionally with a whole message ahead of it
    in the same read (so the partial rest is moved to the buffer's front for the next read)."""
    msg = message(7, payload=P.REGION_RW.pack(offset=0x14, region=0, count=8) + bytes(range(8)))
    for cut in range(1, len(msg)):
        lead = doorbell(1) if before else b""
        send(pair.client, lead + msg[:cut])
        pair.fill()
        assert [m.header.msg_id for m in take_all(pair.reader)] == ([1] if before else [])
        assert not pair.reader.ready()
        send(pair.client, msg[cut:])
        pair.fill()
        (whole,) = take_all(pair.reader)
        assert (whole.header.msg_id, whole.header.size, whole.payload) == (7, len(msg), msg[P.HEADER_SIZE:])


def test_a_message_in_single_bytes(pair: Pair) -> None:
    msg = doorbell(9, 0xABCD)
    for i, byte in enumerate(msg):
        send(pair.client, bytes([byte]))
        assert pair.fill() == 1
        got = take_all(pair.reader)
        assert len(got) == (i == len(msg) - 1)
    assert got[0].payload == msg[P.HEADER_SIZE:]


def test_bad_size_is_a_framing_error_as_soon_as_the_header_is_in(pair: Pair) -> None:
    send(pair.client, doorbell(1) + P.HEADER.pack(msg_id=2, command=4, size=P.MAX_MESSAGE_SIZE + 1, flags=0, error=0))
    pair.fill()
    assert pair.reader.next().header.msg_id == 1  # type: ignore[union-attr]
    assert pair.reader.ready()
    with pytest.raises(FramingError) as err:
        pair.reader.next()
    assert err.value.header.msg_id == 2


@pytest.mark.parametrize("size", [20_000, P.MAX_MESSAGE_SIZE])
def test_a_message_larger_than_the_buffer(size: int) -> None:
    """Read into a buffer of its own, exactly to its end: the small message behind it (in
    the next sendmsg) and the descriptors each came with stay where they belong."""
    p = Pair(buffer_size=4096)
    big = message(1, payload=bytes(i & 0xFF for i in range(size - P.HEADER_SIZE)))
    efd_big, efd_small = os.eventfd(0), os.eventfd(0)
    # more than the socket buffers hold: a thread writes while the reader reads
    sender = threading.Thread(target=lambda: (send(p.client, big, [efd_big]), send(p.client, doorbell(2), [efd_small])))
    sender.start()
    try:
        got: list[Message] = []
        for _ in range(10_000):
            if len(got) == 2:
                break
            select.select([p.server], [], [], 5.0)
            try:
                assert p.fill() > 0
            except BlockingIOError:
                continue
            got += take_all(p.reader)
        p.taken = got
        assert [m.header.msg_id for m in got] == [1, 2]
        assert got[0].payload == big[P.HEADER_SIZE:] and got[1].payload == doorbell(2)[P.HEADER_SIZE:]
        assert len(got[0].fds) == 1 and same_file(got[0].fds[0], efd_big)
        assert len(got[1].fds) == 1 and same_file(got[1].fds[0], efd_small)
    finally:
        sender.join()
        os.close(efd_big)
        os.close(efd_small)
        p.close()


def test_a_large_message_whose_header_came_behind_messages_taken_without_looking_further() -> None:
    """The server stops after MESSAGES_PER_WAKEUP messages without asking ``next()`` about
    the partial one behind them; the next ``fill()`` must still finish it in its own buffer."""
    p = Pair(buffer_size=4096)
    try:
        big = message(2, payload=bytes(i & 0xFF for i in range(10_000)))
        send(p.client, doorbell(1) + big[:100])
        p.fill()
        assert p.reader.next().header.msg_id == 1  # type: ignore[union-attr]
        assert not p.reader.ready()
        send(p.client, big[100:])
        got: list[Message] = []
        while not got:
            p.fill()
            got = take_all(p.reader)
        assert [(m.header.msg_id, m.payload) for m in got] == [(2, big[P.HEADER_SIZE:])]
    finally:
        p.close()


def test_eof_mid_message_and_undelivered_descriptors_are_closed(pair: Pair) -> None:
    msg = doorbell(3)
    efd = os.eventfd(0)
    send(pair.client, msg[:20], [efd])
    os.close(efd)
    before = open_fds()
    pair.client.shutdown(socket.SHUT_WR)
    assert pair.fill() == 20
    assert take_all(pair.reader) == [] and not pair.reader.ready()
    assert open_fds() == before + 1  # the partial message's descriptor, held for it
    assert pair.fill() == 0          # EOF
    pair.reader.reset()              # what the server does when the client is gone
    assert open_fds() == before


# -------------------------------------------------------------- descriptors
def test_descriptors_on_the_second_of_two_messages_read_together(pair: Pair) -> None:
    """A posted write, then a DMA_MAP with its fd, each its own sendmsg (QEMU pipelines
    so): one read gets both, and the fd belongs to the second."""
    first, second = doorbell(1), message(2, P.Command.DMA_MAP, P.DMA_MAP.pack(argsz=32, flags=3, size=0x1000))
    efd = os.eventfd(0)
    try:
        send(pair.client, first)
        send(pair.client, second, [efd])
        assert pair.fill() == len(first) + len(second)  # read together
        pair.taken = got = take_all(pair.reader)
        assert [m.header.msg_id for m in got] == [1, 2]
        assert got[0].fds == [] and len(got[1].fds) == 1 and same_file(got[1].fds[0], efd)
    finally:
        os.close(efd)


def test_descriptors_on_the_first_message_end_the_read(pair: Pair) -> None:
    """The kernel stops a read right after the skb that carried descriptors: the message
    behind it comes in the next read, without them."""
    efd = os.eventfd(0)
    try:
        send(pair.client, doorbell(1), [efd])
        send(pair.client, doorbell(2))
        assert pair.fill() == 36
        assert pair.fill() == 36
        pair.taken = got = take_all(pair.reader)
        assert [(m.header.msg_id, len(m.fds)) for m in got] == [(1, 1), (2, 0)]
    finally:
        os.close(efd)


def test_descriptors_sent_with_the_rest_of_a_message_belong_to_it(pair: Pair) -> None:
    """A client that sends the header alone and the body with the fds: no message starts
    in that read, the fds go to the one it continues."""
    msg = doorbell(5)
    efd = os.eventfd(0)
    try:
        send(pair.client, doorbell(4) + msg[:P.HEADER_SIZE])
        pair.fill()
        got = take_all(pair.reader)
        send(pair.client, msg[P.HEADER_SIZE:], [efd])
        pair.fill()
        got += take_all(pair.reader)
        pair.taken = got
        assert [(m.header.msg_id, len(m.fds)) for m in got] == [(4, 0), (5, 1)]
    finally:
        os.close(efd)


def test_descriptors_of_messages_packed_into_one_sendmsg_go_to_the_last_read(pair: Pair) -> None:
    """What the kernel cannot tell apart from the pipelined case above (receive.py): two
    messages in one sendmsg with fds. They go to the last message, none is lost or leaked."""
    efd = os.eventfd(0)
    try:
        send(pair.client, doorbell(1) + doorbell(2), [efd])
        pair.fill()
        pair.taken = got = take_all(pair.reader)
        assert [(m.header.msg_id, len(m.fds)) for m in got] == [(1, 0), (2, 1)]
    finally:
        os.close(efd)


def test_too_many_descriptors_mark_their_message(pair: Pair) -> None:
    fds = [os.eventfd(0) for _ in range(P.MAX_MSG_FDS + 2)]
    try:
        send(pair.client, doorbell(1))
        send(pair.client, doorbell(2), fds)
        pair.fill()
        pair.taken = got = take_all(pair.reader)
        assert [(m.header.msg_id, m.fds_truncated) for m in got] == [(1, False), (2, True)]
        assert len(got[1].fds) <= P.MAX_MSG_FDS
    finally:
        for fd in fds:
            os.close(fd)


# ------------------------------------------------------------------- server
@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    e = Env(str(tmp_path / "vfio.sock"))
    yield e
    e.close()


def test_server_dma_map_fd_behind_posted_writes_in_one_sendmsg_each(env: Env) -> None:
    """Posted writes and a DMA_MAP with its memfd, all sent before the server looks:
    the memfd maps (the controller's registers got every write, in order)."""
    c = env.client()
    fd = os.memfd_create("ram", os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, 0x2000)
        for i in range(20):
            c.write32(BAR0, Reg.AQA, i, posted=True)
        map_id = c.send(P.Command.DMA_MAP, P.DMA_MAP.pack(argsz=32, flags=3, addr=0x400000, size=0x2000), [fd])
        header, _, rfds = c.receive()
        assert (header.msg_id, header.flags, rfds) == (map_id, P.MsgFlag.REPLY, [])
        assert env.on_thread(lambda: [(r.addr, r.size) for r in env.server.memory.regions]) == [(0x400000, 0x2000)]
        assert c.read32(BAR0, Reg.AQA) == 19
    finally:
        os.close(fd)


def test_server_message_larger_than_the_buffer(env: Env) -> None:
    """A request padded past the receive buffer (and one of the largest size allowed)
    is answered, and so are the requests behind it in the same write."""
    c = env.client()
    for size in (RX_BUFFER_SIZE + 1000, P.MAX_MESSAGE_SIZE):
        pad = bytes(size - P.HEADER_SIZE - P.DEVICE_INFO.size)
        c.sock.sendall(message(11, P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=16) + pad)  # type: ignore[union-attr]
                       + message(12, P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=16)))
        for msg_id in (11, 12):
            header, payload, _ = c.receive()
            assert (header.msg_id, header.flags, P.DEVICE_INFO.unpack(payload).num_regions) == (msg_id, P.MsgFlag.REPLY, 9)
    still_serving(c)


def test_server_eof_mid_message_with_descriptors_leaks_nothing(env: Env) -> None:
    before = open_fds()
    c = env.client()
    efd = os.eventfd(0)
    c.send_raw(doorbell(1)[:30], [efd])
    os.close(efd)
    drained(c)
    c.close()
    env.wait_for(lambda: not env.server.connected, "the server to see the client go")
    assert open_fds() == before  # both ends of the connection gone, the passed eventfd closed
    still_serving(env.client())


def test_server_framing_error_behind_good_messages(env: Env) -> None:
    """The good messages read with the bad header are handled first, then the client goes."""
    c = env.client()
    c.send_raw(message(1, P.Command.REGION_WRITE, P.REGION_RW.pack(offset=Reg.AQA, region=0, count=4)
                       + (5).to_bytes(4, "little"), flags=P.MsgFlag.NO_REPLY)
               + message(2, P.Command.REGION_READ, P.REGION_RW.pack(offset=Reg.AQA, region=0, count=4))
               + P.HEADER.pack(msg_id=3, command=4, size=8, flags=0, error=0))
    header, payload, _ = c.receive()
    assert (header.msg_id, header.flags, payload[P.REGION_RW.size:]) == (2, P.MsgFlag.REPLY, (5).to_bytes(4, "little"))
    assert_dropped(c)
    env.wait_for(lambda: not env.server.connected, "the server to drop the client")
    still_serving(env.client())


def test_a_buffered_burst_yields_to_the_iothread_every_messages_per_wakeup(env: Env) -> None:
    """1000 posted writes in one write, read in a few recvmsgs: the IOThread's other work
    (a poller, as the queues are) runs after every MESSAGES_PER_WAKEUP of them, never later."""
    c = env.client()
    seen: list[int] = []

    def poller() -> bool:
        seen.append(int.from_bytes(env.device.region_read(BAR0, Reg.AQA, 4), "little"))
        return False

    count = 1000
    burst = b"".join(message(i, P.Command.REGION_WRITE, P.REGION_RW.pack(offset=Reg.AQA, region=0, count=4)
                             + (i + 1).to_bytes(4, "little"), flags=P.MsgFlag.NO_REPLY) for i in range(count))
    env.on_thread(env.iothread.add_poller, poller)
    try:
        c.sock.sendall(burst)  # type: ignore[union-attr]
        assert c.read32(BAR0, Reg.AQA) == count
    finally:
        env.on_thread(env.iothread.remove_poller, poller)
    steps = [b - a for a, b in zip(seen, seen[1:]) if b != a]
    assert steps and max(steps) <= MESSAGES_PER_WAKEUP, steps
    assert len(steps) >= count // MESSAGES_PER_WAKEUP - 2  # the burst really was spread out


def test_unexpected_descriptors_on_a_pipelined_request_are_refused_and_closed(env: Env) -> None:
    c = env.client()
    before = open_fds()
    efd = os.eventfd(0)
    c.write32(RegionIndex.CONFIG, 0x0C, 0x20, posted=True)
    get_id = c.send(P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=16), [efd])
    os.close(efd)
    header, _, _ = c.receive()
    assert (header.msg_id, header.flags & P.MsgFlag.ERROR) == (get_id, P.MsgFlag.ERROR)
    assert open_fds() == before
    assert c.region_read(RegionIndex.CONFIG, 0x0C, 1) == b"\x20"
    still_serving(c)


def test_a_large_message_right_behind_a_full_budget(env: Env) -> None:
    """MESSAGES_PER_WAKEUP whole messages, then the start of one larger than the receive
    buffer, in one read: the wake-up ends without looking at the large one, and the next
    read must go on with it in a buffer of its own."""
    c = env.client()
    posted = b"".join(message(i, P.Command.REGION_WRITE, P.REGION_RW.pack(offset=Reg.AQA, region=0, count=4)
                              + (i + 1).to_bytes(4, "little"), flags=P.MsgFlag.NO_REPLY)
                      for i in range(MESSAGES_PER_WAKEUP))
    pad = bytes(RX_BUFFER_SIZE + 4096)
    c.sock.sendall(posted + message(500, P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=16) + pad))  # type: ignore[union-attr]
    header, payload, _ = c.receive()
    assert (header.msg_id, header.flags, P.DEVICE_INFO.unpack(payload).num_regions) == (500, P.MsgFlag.REPLY, 9)
    assert c.read32(BAR0, Reg.AQA) == MESSAGES_PER_WAKEUP
    still_serving(c)
