"""Framing vfio-user messages out of the client's byte stream, one ``recvmsg`` per wake-up.

Why it exists: QEMU sends every REGION_WRITE synchronously (the guest vCPU waits for
our reply), so each trapped doorbell's latency includes the receive path's system
calls. Reading a message as header, then body, then finding out that nothing follows
cost three ``recvmsg`` calls per message. ``MessageReader`` reads whatever the socket
holds into one preallocated buffer with a single ``recvmsg_into`` (with room for
``MAX_MSG_FDS`` SCM_RIGHTS descriptors) and frames every complete message in it;
a partial message stays for the next read, one larger than the buffer is finished in
a buffer of its own (read exactly to its end).

Which message the passed file descriptors belong to -- Linux AF_UNIX SOCK_STREAM,
checked against net/unix/af_unix.c (unix_stream_sendmsg, unix_stream_read_generic,
v5.x to v6.18):

* Sending: one ``sendmsg`` becomes one or more fresh skbs (never appended to an
  earlier one since the tail-appending ``sendpage`` path went away in 6.5), and its
  descriptors ride on the first of them only ("Only send the fds in the first buffer").
  A ``sendmsg`` without payload queues nothing, so every skb with descriptors has bytes.
* Receiving: a read walks the queued skbs and detaches an skb's descriptors the first
  time any of its bytes are copied; right after an skb that had descriptors it stops
  (``if (scm.fp) break``, or earlier when the buffer is full). So one read returns
  the descriptors of at most one skb, that skb is the last one the read touched, and
  the read's last byte lies in it.
* Therefore, for a client that sends each message with its own ``sendmsg`` (QEMU's
  ``vfio_user_send_qio``, SPDK, libvfio-user, ``client.py``): every byte of the
  descriptors' skb belongs to the message they were sent with, and so does the read's
  last byte. **Descriptors received in one read belong to the message that contains
  that read's last byte** -- whether that message starts in this read (the usual case:
  a DMA_MAP behind pipelined posted writes) or began in an earlier one (a client that
  sent the header first and the rest with the descriptors).
* What this cannot tell apart: a client that packs several messages into one
  ``sendmsg`` with descriptors. The bytes and the skbs of "M1, then M2 with fds" and
  "M1 and M2 together, with fds" read the same; no read size short of stopping at
  every message boundary (the old three calls) distinguishes them. Such a client's
  descriptors go to the last of the packed messages that the read reached; that
  command's own checks refuse descriptors it does not take, and every descriptor is
  closed either way. No known client sends that way, and the spec's clients cannot.

Descriptors are kept per message (keyed by the message's offset in the stream) until
the message is taken, and closed by ``reset()`` if it never is. ``MSG_CTRUNC`` (more
descriptors than the ancillary space; the kernel closed the excess) marks the same
message, which the server then refuses.
"""

from __future__ import annotations

import array
import os
import socket
from typing import Any, NamedTuple

from nvshell.device.vfio_user import protocol as P

#: Bytes one ``recvmsg`` can take: hundreds of pipelined small requests (a REGION_WRITE
#: doorbell is 36 bytes), allocated once per server. Larger messages get their own buffer.
RX_BUFFER_SIZE = 64 * 1024
_SIZE = P.HEADER.names.index("size")
_HEADER = P.HEADER.struct
_HEADER_TUPLE = P.HEADER.tuple
#: Building the (named) tuples without their constructors' argument handling: this is
#: the per-message path of every trapped doorbell.
_new_tuple = tuple.__new__
#: As a plain int: ``&`` with the IntFlag costs more than the rest of a small read.
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


class Message(NamedTuple):
    header: Any
    payload: bytes
    #: Descriptors passed with the message: the taker owns (and closes) them.
    fds: list[int]
    #: The client passed more descriptors than ``MAX_MSG_FDS`` (the excess is lost).
    fds_truncated: bool


class FramingError(Exception):
    """A header whose size cannot be right: the stream cannot be resynchronised."""

    def __init__(self, header: Any):
        self.header = header
        super().__init__(f"message size {header.size}")


class MessageReader:
    """Receive buffer and framer of one connection (see module docstring).

    ``fill(sock)`` is called only when ``ready()`` is False (nothing whole is buffered),
    so the buffer then holds at most one partial message, at ``_start``; the caller
    takes every message ``next()`` returns before it reads again.
    """

    def __init__(self, buffer_size: int = RX_BUFFER_SIZE, max_fds: int = P.MAX_MSG_FDS):
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._cmsg_space = socket.CMSG_SPACE(4 * max_fds)
        #: Unconsumed bytes are ``_buf[_start:_end]``; ``_start`` is a message boundary.
        self._start = 0
        self._end = 0
        #: Stream offset of ``_buf[0]`` (keys of ``_fds``).
        self._base = 0
        #: A message larger than the buffer, being read into its own bytearray.
        self._big: bytearray | None = None
        self._big_header: Any = None
        self._big_got = 0
        self._big_key = 0
        #: Descriptors (and MSG_CTRUNC marks) by the stream offset of their message.
        self._fds: dict[int, list[int]] = {}
        self._truncated: set[int] = set()

    # ------------------------------------------------------------ reading
    def fill(self, sock: socket.socket) -> int:
        """One ``recvmsg`` (0: EOF). ``BlockingIOError``/``OSError`` propagate."""
        if self._big is None and self._start == self._end:  # the usual case: everything taken
            self._base += self._start
            self._start = self._end = 0
            target = self._view
        else:
            target = self._target()  # may switch to an oversized message's own buffer
        n, ancdata, msg_flags, _ = sock.recvmsg_into([target], self._cmsg_space)
        if self._big is not None:
            self._big_got += n
        else:
            self._end += n
        if ancdata or msg_flags & _MSG_CTRUNC:
            self._attach(ancdata, bool(msg_flags & _MSG_CTRUNC), n)
        return n

    def _target(self) -> memoryview:
        """Where the next read goes: the rest of an oversized message, else the buffer's
        free tail (the partial message there first moved to the front)."""
        if self._big is None:
            start, end = self._start, self._end
            if start == end:
                self._base += start
                self._start = self._end = 0
            elif start:
                # only a partial message is moved: rare (QEMU sends whole messages)
                self._view[:end - start] = self._view[start:end]
                self._base += start
                self._start, self._end = 0, end - start
            if self._end >= P.HEADER_SIZE:
                header = P.HEADER.unpack(self._buf)
                if len(self._buf) < header.size <= P.MAX_MESSAGE_SIZE:
                    self._go_big(header, 0, self._end)
        if self._big is not None:
            return memoryview(self._big)[self._big_got:]
        if self._end == len(self._buf):
            raise RuntimeError("MessageReader.fill() while a whole message is buffered (call next() first)")
        return self._view[self._end:]

    def _attach(self, ancdata: list[tuple[int, int, bytes]], truncated: bool, n: int) -> None:
        fds = array.array("i")
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
        if n == 0:  # cannot happen (descriptors ride on bytes); never leak them anyway
            for fd in fds:
                _close(fd)
            return
        key = self._big_key if self._big is not None else self._owner_of_last_byte()
        if fds:
            self._fds.setdefault(key, []).extend(fds)
        if truncated:
            self._truncated.add(key)

    def _owner_of_last_byte(self) -> int:
        """Stream offset of the message holding the last byte read (see module docstring)."""
        buf, p, last = self._buf, self._start, self._end - 1
        while self._end - p >= P.HEADER_SIZE:
            size = _HEADER.unpack_from(buf, p)[_SIZE]
            if size < P.HEADER_SIZE or p + size > last:
                break  # holds the last byte (or is a framing error: dropped with its fds)
            p += size
        return self._base + p

    # ------------------------------------------------------------ framing
    def ready(self) -> bool:
        """``next()`` would return a message or raise: no read is needed first."""
        if self._big is not None:
            return self._big_got == len(self._big)
        avail = self._end - self._start
        if avail < P.HEADER_SIZE:
            return False
        size = _HEADER.unpack_from(self._buf, self._start)[_SIZE]
        return avail >= size or size < P.HEADER_SIZE or size > P.MAX_MESSAGE_SIZE

    def next(self) -> Message | None:
        """The next complete message, or None until more bytes arrive; ``FramingError``
        for a header whose size cannot be right (as soon as the header is in)."""
        big = self._big
        if big is not None:
            if self._big_got < len(big):
                return None
            self._big = None
            return self._take(self._big_key, self._big_header, bytes(big[P.HEADER_SIZE:]))
        p = self._start
        avail = self._end - p
        if avail < P.HEADER_SIZE:
            return None
        header = _new_tuple(_HEADER_TUPLE, _HEADER.unpack_from(self._buf, p))
        size = header.size
        if size < P.HEADER_SIZE or size > P.MAX_MESSAGE_SIZE:
            raise FramingError(header)
        if avail < size:
            if size > len(self._buf):
                self._go_big(header, p, avail)
            return None
        self._start = p + size
        payload = self._view[p + P.HEADER_SIZE:p + size].tobytes()
        if not self._fds and not self._truncated:
            return _new_tuple(Message, (header, payload, [], False))
        return self._take(self._base + p, header, payload)

    def _take(self, key: int, header: Any, payload: bytes) -> Message:
        truncated = key in self._truncated
        self._truncated.discard(key)
        return _new_tuple(Message, (header, payload, self._fds.pop(key, []), truncated))

    def _go_big(self, header: Any, p: int, avail: int) -> None:
        """Finish this message in a buffer of its own, reading exactly to its end."""
        big = bytearray(header.size)
        big[:avail] = self._view[p:p + avail]
        self._big, self._big_header, self._big_got = big, header, avail
        self._big_key = self._base + p
        self._base = self._big_key + header.size  # where the main buffer resumes
        self._start = self._end = 0

    # ------------------------------------------------------------ lifecycle
    def reset(self) -> None:
        """Forget everything buffered (the client is gone); close undelivered descriptors."""
        for fds in self._fds.values():
            for fd in fds:
                _close(fd)
        self._fds.clear()
        self._truncated.clear()
        self._big = self._big_header = None
        self._big_got = self._big_key = 0
        self._start = self._end = self._base = 0


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
