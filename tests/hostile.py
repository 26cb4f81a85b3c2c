"""Shared pieces of the hostile-client tests: a real controller behind the real
vfio-user server, and raw message helpers for what the project's client refuses
to send.

Why a separate helper: the regression and fuzz tests for vfio-user and NVMe
input all need the same "controller on a socket, client with guest RAM"
setup; ``nvshell.testing.NvmeTestHost`` is the NVMe side.
"""

from __future__ import annotations

import os
import socket
from typing import Iterable

from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.client import Header, VfioUserClient


def raw(client: VfioUserClient, command: int, payload: bytes = b"", fds: Iterable[int] = (),
        flags: int = 0, msg_id: int = 0x4242) -> tuple[Header, bytes]:
    """Send one message as given (no client-side checks) and read the answer."""
    client.send_raw(P.pack_header(msg_id, command, len(payload), flags) + payload, fds)
    header, reply, rfds = client.receive()
    for fd in rfds:
        os.close(fd)
    assert header.msg_id == msg_id, header
    return header, reply


def errno_of(header: Header) -> int:
    """0 for a success reply, the errno of an error reply."""
    assert header.flags & P.TYPE_MASK == P.MsgFlag.REPLY, header
    return header.error if header.flags & P.MsgFlag.ERROR else 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def alive(path: str) -> bool:
    """The server at ``path`` still answers a fresh client's VERSION (after the current one leaves)."""
    with VfioUserClient(timeout=3.0).connect(path) as c:
        c.negotiate()
        return c.device_info().num_regions > 0


def peer_closed(client: VfioUserClient, timeout: float = 3.0) -> bool:
    """The server dropped this client (EOF within ``timeout``)."""
    assert client.sock is not None
    client.sock.settimeout(timeout)
    try:
        while True:
            data = client.sock.recv(4096)
            if not data:
                return True
    except (socket.timeout, TimeoutError):
        return False
    except OSError:
        return True
