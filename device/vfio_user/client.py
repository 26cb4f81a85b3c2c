"""A small blocking vfio-user client, for tests and benchmarks.

It speaks only the wire protocol (``protocol.py``), so it works against any
vfio-user server (nvshell, libvfio-user samples, SPDK), and plays the part QEMU
plays: guest RAM is a memfd passed with DMA_MAP, interrupts are eventfds passed
with SET_IRQS, and the sparse mmap area of a region can be mapped so a test
writes doorbells straight into shared memory. Like QEMU's vfio-pci it knows the
PCI config layout (``device/pci/config.py``): ``set_msix_eventfds`` first sets
MSI-X Enable in the device's config space, as a guest enabling MSI-X does before
QEMU assigns the vectors; ``set_msi_eventfds`` does the same for MSI, and
``set_intx_eventfd``/``unmask_intx`` play QEMU's INTx part (unmask after EOI).

One request at a time: ``request()`` sends and waits for the reply with the
same msg_id. A reply with another id is a protocol error (the server answered a
posted write, or out of order), which is exactly what tests want to catch.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from nvshell.device.pci.config import CAP_ID_MSI, CAP_ID_MSIX, CAP_PTR, MSI_CTL_ENABLE, MSIX_CTL_ENABLE
from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.interface import IrqIndex, RegionIndex

_CONFIG_REGION = RegionIndex.CONFIG
_INTX, _MSI = IrqIndex.INTX, IrqIndex.MSI


class VfioUserError(OSError):
    """The server answered with an error reply."""

    def __init__(self, errno: int, command: int = 0):
        self.command = command
        super().__init__(errno, f"{P.command_name(command)}: {os.strerror(errno) if errno else 'error'}")


class VfioUserProtocolError(Exception):
    """The server broke the protocol (bad reply, closed connection, wrong msg_id)."""


@dataclass
class GuestRam:
    """A guest-physical range backed by a memfd the client shared with DMA_MAP."""

    addr: int
    size: int
    fd: int
    mem: mmap.mmap
    #: Where ``addr`` lives in the memfd (the DMA_MAP offset).
    file_offset: int = 0

    def _off(self, addr: int, length: int) -> int:
        if addr < self.addr or addr + length > self.addr + self.size:
            raise ValueError(f"[{addr:#x}, +{length:#x}) outside guest RAM [{self.addr:#x}, +{self.size:#x})")
        return addr - self.addr + self.file_offset

    def read(self, addr: int, length: int) -> bytes:
        off = self._off(addr, length)
        return bytes(self.mem[off:off + length])

    def write(self, addr: int, data: bytes) -> None:
        off = self._off(addr, len(data))
        self.mem[off:off + len(data)] = data

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


class Header(NamedTuple):
    msg_id: int
    command: int
    size: int
    flags: int
    error: int


class VfioUserClient:
    """Blocking vfio-user client (see module docstring)."""

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.server_caps: dict[str, Any] = {}
        self.ram: list[GuestRam] = []
        self.irq_fds: dict[int, int] = {}
        #: MSI message -> eventfd, and the INTx trigger eventfd.
        self.msi_fds: dict[int, int] = {}
        self.intx_fd: int | None = None
        self.region_fds: list[int] = []
        self._area_maps: list[mmap.mmap] = []
        self._msg_id = 0

    # ------------------------------------------------------------ plumbing
    def connect(self, path: str | os.PathLike[str]) -> "VfioUserClient":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        sock.connect(os.fspath(path))
        self.sock = sock
        return self

    def __enter__(self) -> "VfioUserClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _next_id(self) -> int:
        self._msg_id = (self._msg_id + 1) & 0xFFFF
        return self._msg_id

    def send_raw(self, data: bytes, fds: Iterable[int] = ()) -> None:
        """Write bytes as they are (malformed-input tests)."""
        assert self.sock is not None, "not connected"
        fds = list(fds)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        view = memoryview(data)
        sent = self.sock.sendmsg([view], anc)
        if sent < len(view):
            self.sock.sendall(view[sent:])

    def send(self, command: int, payload: bytes = b"", fds: Iterable[int] = (), flags: int = 0) -> int:
        """Send one command message; returns its msg_id."""
        msg_id = self._next_id()
        self.send_raw(P.pack_header(msg_id, command, len(payload), flags) + payload, fds)
        return msg_id

    def _recv_exact(self, count: int, fds: list[int]) -> bytes:
        assert self.sock is not None, "not connected"
        buf = bytearray()
        while len(buf) < count:
            data, ancdata, flags, _ = self.sock.recvmsg(count - len(buf), socket.CMSG_SPACE(4 * 16))
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    got = array.array("i")
                    got.frombytes(cdata[: len(cdata) - len(cdata) % got.itemsize])
                    fds.extend(got)
            if not data:
                raise VfioUserProtocolError("server closed the connection")
            buf += data
        return bytes(buf)

    def receive(self) -> tuple[Header, bytes, list[int]]:
        """Read one whole message (header, payload, passed fds)."""
        fds: list[int] = []
        header = Header(*P.HEADER.unpack(self._recv_exact(P.HEADER_SIZE, fds)))
        if header.size < P.HEADER_SIZE:
            raise VfioUserProtocolError(f"bad message size {header.size}")
        payload = self._recv_exact(header.size - P.HEADER_SIZE, fds) if header.size > P.HEADER_SIZE else b""
        return header, payload, fds

    def request_fds(self, command: int, payload: bytes = b"", fds: Iterable[int] = ()
                    ) -> tuple[Header, bytes, list[int]]:
        """Send a command and wait for its reply; the caller owns returned fds."""
        msg_id = self.send(command, payload, fds)
        header, reply, rfds = self.receive()
        if header.msg_id != msg_id or header.command != command:
            for fd in rfds:
                os.close(fd)
            raise VfioUserProtocolError(f"reply id {header.msg_id} command {header.command} to request "
                                        f"id {msg_id} command {command}")
        if header.flags & P.TYPE_MASK != P.MsgFlag.REPLY:
            raise VfioUserProtocolError(f"expected a reply, got flags {header.flags:#x}")
        if header.flags & P.MsgFlag.ERROR:
            for fd in rfds:
                os.close(fd)
            raise VfioUserError(header.error, command)
        return header, reply, rfds

    def request(self, command: int, payload: bytes = b"", fds: Iterable[int] = ()) -> tuple[Header, bytes]:
        """Send a command, wait for the reply; ``VfioUserError`` on an error reply."""
        header, reply, rfds = self.request_fds(command, payload, fds)
        for fd in rfds:
            os.close(fd)
        if rfds:
            raise VfioUserProtocolError(f"unexpected {len(rfds)} fds in reply to {P.command_name(command)}")
        return header, reply

    # ------------------------------------------------------------ commands
    def negotiate(self, caps: dict[str, Any] | None = None, major: int = 0, minor: int = 0) -> dict[str, Any]:
        """VERSION with QEMU-like capabilities; returns the server's capabilities."""
        if caps is None:
            caps = {"capabilities": {"max_msg_fds": 16, "max_data_xfer_size": 1 << 20, "pgsizes": 4096,
                                     "max_dma_maps": 65535, "write_multiple": True}}
        _, reply = self.request(P.Command.VERSION, P.encode_version(major, minor, caps))
        version = P.VERSION.unpack(reply)
        if version.major != 0:
            raise VfioUserProtocolError(f"server replied major {version.major}")
        self.server_caps = {**P.DEFAULT_CAPS, **P.decode_version_json(reply[P.VERSION.size:]).get("capabilities", {})}
        return self.server_caps

    def map_memory(self, addr: int, size: int, *, prot: int = P.DmaMapFlag.READ | P.DmaMapFlag.WRITE,
                   offset: int = 0) -> GuestRam:
        """Create a memfd-backed guest RAM range and DMA_MAP it (fd passed). Sealed
        against shrinking and growing, as QEMU's memory-backend-memfd does."""
        fd = os.memfd_create(f"guest-ram-{addr:#x}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size + offset)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            mem = mmap.mmap(fd, size + offset, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            self.dma_map(addr, size, fd=fd, offset=offset, prot=prot)
        except BaseException:
            os.close(fd)
            raise
        ram = GuestRam(addr, size, fd, mem, offset)
        self.ram.append(ram)
        return ram

    def dma_map(self, addr: int, size: int, *, fd: int | None = None, offset: int = 0,
                prot: int = P.DmaMapFlag.READ | P.DmaMapFlag.WRITE) -> None:
        payload = P.DMA_MAP.pack(argsz=P.DMA_MAP.size, flags=prot, offset=offset, addr=addr, size=size)
        self.request(P.Command.DMA_MAP, payload, [fd] if fd is not None else [])

    def unmap(self, addr: int, size: int, *, all: bool = False) -> bytes:
        """DMA_UNMAP (or unmap-all); returns the reply payload. Drops our RAM object."""
        payload = P.DMA_UNMAP.pack(argsz=P.DMA_UNMAP.size, flags=P.DmaUnmapFlag.ALL if all else 0,
                                   addr=addr, size=size)
        _, reply = self.request(P.Command.DMA_UNMAP, payload)
        for ram in [r for r in self.ram if all or (r.addr == addr and r.size == size)]:
            self.ram.remove(ram)
            ram.close()
        return reply

    def device_info(self) -> Any:
        _, reply = self.request(P.Command.DEVICE_GET_INFO, P.DEVICE_INFO.pack(argsz=P.DEVICE_INFO.size))
        return P.DEVICE_INFO.unpack(reply)

    def region_info(self, index: int) -> P.RegionInfoReply:
        """GET_REGION_INFO with the argsz handshake QEMU does (ask with 32, then the full size).
        The returned ``fd`` (if any) stays owned by the client (closed in ``close()``)."""
        argsz = P.REGION_INFO.size
        for _ in range(2):
            _, reply, fds = self.request_fds(P.Command.DEVICE_GET_REGION_INFO,
                                             P.REGION_INFO.pack(argsz=argsz, index=index))
            info = P.decode_region_info(reply)
            if info.argsz <= argsz and len(fds) <= 1:
                self.region_fds.extend(fds)
                info.fd = fds[0] if fds else None
                return info
            for fd in fds:
                os.close(fd)
            if fds:
                raise VfioUserProtocolError(f"{len(fds)} fd(s) in a region info reply of argsz {info.argsz}")
            argsz = info.argsz
        raise VfioUserProtocolError("region info argsz keeps growing")

    def region_read(self, index: int, offset: int, count: int) -> bytes:
        _, reply = self.request(P.Command.REGION_READ, P.REGION_RW.pack(offset=offset, region=index, count=count))
        rw = P.REGION_RW.unpack(reply)
        data = reply[P.REGION_RW.size:]
        if rw.count != count or len(data) != count:
            raise VfioUserProtocolError(f"read of {count} bytes returned {rw.count}/{len(data)}")
        return data

    def region_write(self, index: int, offset: int, data: bytes, posted: bool = False) -> None:
        """REGION_WRITE; ``posted`` sends it NO_REPLY (no answer, errors are silent)."""
        payload = P.REGION_RW.pack(offset=offset, region=index, count=len(data)) + bytes(data)
        if posted:
            self.send(P.Command.REGION_WRITE, payload, flags=P.MsgFlag.NO_REPLY)
        else:
            self.request(P.Command.REGION_WRITE, payload)

    def read32(self, index: int, offset: int) -> int:
        return int.from_bytes(self.region_read(index, offset, 4), "little")

    def write32(self, index: int, offset: int, value: int, posted: bool = False) -> None:
        self.region_write(index, offset, value.to_bytes(4, "little"), posted)

    def mmap_region_area(self, index: int, area: int = 0) -> mmap.mmap:
        """mmap a region's sparse area as QEMU does (fd offset = region offset + area offset)."""
        info = self.region_info(index)
        if info.fd is None or not info.areas:
            raise VfioUserProtocolError(f"region {index} has no mappable area")
        off, size = info.areas[area]
        mem = mmap.mmap(info.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                        offset=info.offset + off)
        self._area_maps.append(mem)
        return mem

    def irq_info(self, index: int) -> Any:
        _, reply = self.request(P.Command.DEVICE_GET_IRQ_INFO, P.IRQ_INFO.pack(argsz=P.IRQ_INFO.size, index=index))
        return P.IRQ_INFO.unpack(reply)

    def set_irqs(self, index: int, flags: int, start: int, count: int, data: bytes = b"",
                 fds: Iterable[int] = ()) -> None:
        payload = P.IRQ_SET.pack(argsz=P.IRQ_SET.size + len(data), flags=flags, index=index, start=start,
                                 count=count) + data
        self.request(P.Command.DEVICE_SET_IRQS, payload, fds)

    def capability(self, cap_id: int) -> int | None:
        """Offset of the first PCI capability ``cap_id`` in config space, or None."""
        if not self.region_info(_CONFIG_REGION).size:
            return None
        config = self.region_read(_CONFIG_REGION, 0, 256)
        ptr, seen = config[CAP_PTR] & 0xFC, set()
        while ptr and ptr not in seen:
            seen.add(ptr)
            if config[ptr] == cap_id:
                return ptr
            ptr = config[ptr + 1] & 0xFC
        return None

    def set_msg_enable(self, cap_id: int, enable_bit: int, on: bool) -> bool:
        """Set or clear an MSI/MSI-X Enable bit as the guest does; False if there is no such capability."""
        offset = self.capability(cap_id)
        if offset is None:
            return False
        ctl = int.from_bytes(self.region_read(_CONFIG_REGION, offset + 2, 2), "little")
        ctl = ctl | enable_bit if on else ctl & ~enable_bit
        self.region_write(_CONFIG_REGION, offset + 2, ctl.to_bytes(2, "little"))
        return True

    def set_msix_eventfds(self, count: int, start: int = 0) -> list[int]:
        """Enable MSI-X in config space (if the device has the capability), then create one eventfd
        per vector and assign them (chunked by the server's max_msg_fds, as QEMU)."""
        self.set_msg_enable(CAP_ID_MSIX, MSIX_CTL_ENABLE, True)
        fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
        chunk = max(1, int(self.server_caps.get("max_msg_fds", 1)))
        flags = P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER
        for first in range(0, count, chunk):
            part = fds[first:first + chunk]
            self.set_irqs(2, flags, start + first, len(part), fds=part)
        for i, fd in enumerate(fds):
            old = self.irq_fds.pop(start + i, None)
            if old is not None:
                os.close(old)
            self.irq_fds[start + i] = fd
        return fds

    def disable_msix(self) -> None:
        self.set_irqs(2, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_TRIGGER, 0, 0)

    def set_msi_eventfds(self, count: int = 1) -> list[int]:
        """Enable MSI in config space, then assign one eventfd per message (as QEMU's vfio_msi_enable)."""
        self.set_msg_enable(CAP_ID_MSI, MSI_CTL_ENABLE, True)
        fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(count)]
        self.set_irqs(_MSI, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER, 0, count, fds=fds)
        for i, fd in enumerate(fds):
            old = self.msi_fds.pop(i, None)
            if old is not None:
                os.close(old)
            self.msi_fds[i] = fd
        return fds

    def set_intx_eventfd(self) -> int:
        """Assign the INTx trigger eventfd (QEMU does at realize when the Interrupt Pin is set)."""
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.set_irqs(_INTX, P.IrqSetFlag.DATA_EVENTFD | P.IrqSetFlag.ACTION_TRIGGER, 0, 1, fds=[fd])
        if self.intx_fd is not None:
            os.close(self.intx_fd)
        self.intx_fd = fd
        return fd

    def unmask_intx(self) -> None:
        """What QEMU sends after the guest's EOI (the line masked itself when it fired)."""
        self.set_irqs(_INTX, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_UNMASK, 0, 1)

    def mask_intx(self) -> None:
        self.set_irqs(_INTX, P.IrqSetFlag.DATA_NONE | P.IrqSetFlag.ACTION_MASK, 0, 1)

    def wait_irq(self, vector: int, timeout: float = 1.0) -> bool:
        """True once the MSI-X vector's eventfd fired (its counter is consumed)."""
        return self.wait_eventfd(self.irq_fds[vector], timeout)

    def wait_msi(self, message: int = 0, timeout: float = 1.0) -> bool:
        return self.wait_eventfd(self.msi_fds[message], timeout)

    def wait_intx(self, timeout: float = 1.0) -> bool:
        assert self.intx_fd is not None, "set_intx_eventfd first"
        return self.wait_eventfd(self.intx_fd, timeout)

    @staticmethod
    def wait_eventfd(fd: int, timeout: float) -> bool:
        """True once ``fd`` fired (its counter is consumed), False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.eventfd_read(fd)
                return True
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([fd], [], [], left)

    def reset(self) -> None:
        self.request(P.Command.DEVICE_RESET)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for mem in self._area_maps:
            mem.close()
        self._area_maps = []
        for ram in self.ram:
            ram.close()
        self.ram = []
        intx = [self.intx_fd] if self.intx_fd is not None else []
        for fd in list(self.irq_fds.values()) + list(self.msi_fds.values()) + intx + self.region_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.irq_fds = {}
        self.msi_fds = {}
        self.intx_fd = None
        self.region_fds = []


__all__ = ["VfioUserClient", "VfioUserError", "VfioUserProtocolError", "GuestRam", "Header"]
