"""The vfio-user server: one UNIX socket, one client at a time, all on one IOThread.

Why it looks the way it does:

* Everything (accept, receive, dispatch, device calls, replies) runs on the
  controller's IOThread, so a trapped doorbell write reaches the queues without
  a thread hop and device methods never need locks. Only ``start()`` and
  ``close()`` are called from other threads; they hop over with ``iothread.run``.
* One ``recvmsg`` per readable event into a preallocated buffer, then every
  complete message in it is handled (``receive.MessageReader``): QEMU waits for
  each REGION_WRITE's reply, so a trapped doorbell pays for every system call
  here. Passed fds are attributed from what the kernel guarantees about SCM_RIGHTS
  on stream sockets (receive.py says how), also when the client pipelines requests
  (QEMU does, for DMA_MAP/UNMAP and posted writes). Partial messages are kept for
  the next read; the socket is non-blocking.
* At most MESSAGES_PER_WAKEUP messages per loop iteration: what a read brought
  beyond that waits in the buffer, the socket's reader is switched off and a
  backlog eventfd brings the loop back on its next iteration, after the other work
  (the queues) had its turn -- as a socket still holding unread data would.
* Requests are processed strictly in order. Every bad request gets a
  header-only error reply (flags 0x21, errno) and the connection goes on; only
  framing errors (a header whose size cannot be right) drop the client, since
  the byte stream cannot be resynchronised. No exception from a device escapes
  into the IOThread.
* Reply sizes follow the spec exactly: QEMU receives replies into buffers as
  large as the spec says and desyncs on anything larger.
"""

from __future__ import annotations

import array
import errno as E
import logging
import os
import select
import socket
import stat
import struct
import time
from typing import Any, Callable, NamedTuple

from nvshell.device import trace as T
from nvshell.device.iothread import IOThread
from nvshell.device.vfio_user import protocol as P
from nvshell.device.vfio_user.dma import DmaMapError, GuestMemory, seal_against_shrink
from nvshell.device.vfio_user.interface import (
    NUM_IRQS,
    NUM_REGIONS,
    IrqIndex,
    RegionAccessError,
    RegionFlag,
    VfioUserDevice,
)
from nvshell.device.vfio_user.irq import ClientInterrupts, IntxLine, MsixEventfds, check_eventfd
from nvshell.device.vfio_user.receive import FramingError, MessageReader

log = logging.getLogger(__name__)

#: Longest we block the IOThread waiting for a client to drain its socket
#: before giving up on it (QEMU itself times requests out after 5 s).
SEND_TIMEOUT = 5.0
#: Messages handled per readable event before yielding to other IOThread work.
MESSAGES_PER_WAKEUP = 64
#: Commands that may carry file descriptors. DMA_UNMAP is here although the
#: protocol gives it none: libvfio-user-based clients (SPDK's userspace NVMe
#: driver and the apps built on it) attach the region's fd to DMA_UNMAP as well,
#: and libvfio-user's own server closes it and unmaps. We do the same (the fds
#: are closed, the unmap answered). Every other command with an fd is refused.
_FD_COMMANDS = frozenset({P.Command.DMA_MAP, P.Command.DMA_UNMAP, P.Command.DEVICE_SET_IRQS})
#: At most one "unexpected message type" warning per this many seconds per server:
#: a client streaming REPLY-type messages must not turn into a log flood.
UNEXPECTED_WARN_INTERVAL = 10.0
#: Size passed to device.dma_unmapping() for "everything".
ALL_MEMORY = 1 << 64
# The flags every message tests, as plain ints: an operator on an IntFlag member costs
# about a microsecond, several times over per trapped doorbell.
_TYPE_MASK = int(P.TYPE_MASK)
_COMMAND = int(P.MsgFlag.COMMAND)
_NO_REPLY = int(P.MsgFlag.NO_REPLY)
_REPLY = int(P.MsgFlag.REPLY)
_ERROR_REPLY = int(P.ERROR_REPLY_FLAGS)
_MSG_NOSIGNAL = int(socket.MSG_NOSIGNAL)

EventCallback = Callable[[str, dict[str, Any]], Any]
TraceCallback = Callable[[str, int, int], Any]


class _Reject(Exception):
    """A request we answer with an error reply carrying ``errno``."""

    def __init__(self, errno: int, why: str):
        self.errno = errno
        super().__init__(why)


class _Reply(NamedTuple):
    payload: bytes
    fds: list[int]


_EMPTY = _Reply(b"", [])


class VfioUserServer:
    """Serve one ``VfioUserDevice`` on a UNIX socket (see module docstring)."""

    def __init__(self, path: str | os.PathLike[str], device: VfioUserDevice, iothread: IOThread, *,
                 name: str = "", on_event: EventCallback | None = None):
        self.path = os.fspath(path)
        self.device = device
        self.iothread = iothread
        self.name = name or os.path.basename(self.path)
        self.on_event = on_event
        #: Optional tracing hook: ``trace(direction "rx"/"tx", command, size)``.
        self.trace: TraceCallback | None = None
        self.memory = GuestMemory()
        #: MSI-X vectors, MSI messages and the INTx line, as the client assigned them.
        self.interrupts = MsixEventfds()
        self.msi = MsixEventfds()
        self.intx = IntxLine()
        #: Eventfds of the other IRQ indexes (ERR, REQ; only if a device reports any).
        self._other_irqs: dict[int, MsixEventfds] = {}
        self._listener: socket.socket | None = None
        self._listen_ino: int | None = None
        self._conn: socket.socket | None = None
        self._negotiated = False
        self._closed = False
        #: Capabilities the current client announced (spec defaults filled in).
        self.client_caps: dict[str, Any] = {}
        self.client_pid: int | None = None
        self._region_sizes: list[int] = []
        self._rx = MessageReader()
        #: Readable while whole messages wait in ``_rx`` beyond one event's budget
        #: (``_backlogged``; the socket's reader is off meanwhile).
        self._backlog: int | None = None
        self._backlogged = False
        self._unexpected = _RateLimited(UNEXPECTED_WARN_INTERVAL)
        self._handlers: dict[int, Callable[[Any, bytes, list[int]], _Reply]] = {
            P.Command.VERSION: self._h_version,
            P.Command.DMA_MAP: self._h_dma_map,
            P.Command.DMA_UNMAP: self._h_dma_unmap,
            P.Command.DEVICE_GET_INFO: self._h_device_info,
            P.Command.DEVICE_GET_REGION_INFO: self._h_region_info,
            P.Command.DEVICE_GET_IRQ_INFO: self._h_irq_info,
            P.Command.DEVICE_SET_IRQS: self._h_set_irqs,
            P.Command.REGION_READ: self._h_region_read,
            P.Command.REGION_WRITE: self._h_region_write,
            P.Command.DEVICE_RESET: self._h_reset,
        }
        device.bind(self.memory, ClientInterrupts(self.interrupts, self.msi, self.intx))

    # ------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        """A client is connected and finished VERSION negotiation."""
        return self._conn is not None and self._negotiated

    def start(self) -> None:
        """Create the listening socket (any thread) and register it on the IOThread."""
        if self._listener is not None or self._closed:
            raise RuntimeError(f"vfio-user server {self.name} already started or closed")
        _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Owner-only whatever the umask: whoever connects can read BAR0 and DMA-map
        # its memory, i.e. read and write the namespaces. Bound under a temporary
        # name, chmod 0600, listening, and only then renamed into place, so the
        # path never names a socket another user could connect to (as QMP's).
        tmp = os.path.join(os.path.dirname(self.path) or ".", f".{os.path.basename(self.path)}.{os.getpid()}.tmp")
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(4)
            os.rename(tmp, self.path)
            self._listen_ino = os.stat(self.path).st_ino
            sock.setblocking(False)
            self._listener = sock
            self._backlog = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.iothread.run(self._register, sock.fileno(), self._backlog)
        except BaseException:
            self._listener = None
            sock.close()
            self._close_backlog()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._unlink()
            raise
        log.info("vfio-user %s: listening on %s", self.name, self.path)

    def _register(self, listen_fd: int, backlog_fd: int) -> None:
        self.iothread.add_reader(listen_fd, self._on_accept)
        self.iothread.add_reader(backlog_fd, self._on_backlog)

    def close(self) -> None:
        """Stop listening, drop the client, unlink the socket; any thread, idempotent."""
        if self.iothread.running:
            self.iothread.run(self._close)
        else:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._drop_client("server closing")
        if self._listener is not None:
            self.iothread.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            self._unlink()
        self._close_backlog()
        self._close_irqs()

    def _close_backlog(self) -> None:
        fd, self._backlog = self._backlog, None
        if fd is not None:
            if self.iothread.running:
                self.iothread.run(self.iothread.remove_reader, fd)
            _close(fd)

    def _close_irqs(self) -> None:
        self.interrupts.close_all()
        self.msi.close_all()
        self._set_intx_unmask_fd(None)
        self.intx.close_all()
        for sink in self._other_irqs.values():
            sink.close_all()

    def _unlink(self) -> None:
        try:
            if self._listen_ino is None or os.stat(self.path).st_ino == self._listen_ino:
                os.unlink(self.path)
        except OSError:
            pass

    # --------------------------------------------------------- connections
    def _on_accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("vfio-user %s: accept failed: %s", self.name, exc)
                return
            if self._conn is not None and not self._backlogged:
                # The current client may already be gone with its EOF not yet
                # read (a quick probe, a QEMU restart): look before refusing.
                self._on_readable()
            if self._conn is not None:
                log.warning("vfio-user %s: refusing a second client (pid %s) while one is connected",
                            self.name, _peer_pid(conn))
                conn.close()
                continue
            conn.setblocking(False)
            self._conn = conn
            self.client_pid = _peer_pid(conn)
            self._negotiated = False
            self._rx.reset()
            self.iothread.add_reader(conn.fileno(), self._on_readable)
            log.info("vfio-user %s: client connected (pid %s)", self.name, self.client_pid)

    def _drop_client(self, reason: str) -> None:
        """Forget the client: DMA, eventfds, partial input; tell the device; accept the next."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        self.iothread.remove_reader(conn.fileno())
        conn.close()
        self._rx.reset()
        self._backlogged = False
        was_negotiated, self._negotiated = self._negotiated, False
        log.info("vfio-user %s: client disconnected (%s)", self.name, reason)
        if len(self.memory):
            self._guard(self.device.dma_unmapping, 0, ALL_MEMORY)
        self.memory.unmap_all()
        self._close_irqs()
        if was_negotiated:
            self._guard(self.device.client_disconnected)
            self._emit("disconnected", {"reason": reason})
        self.client_caps = {}
        self.client_pid = None

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("vfio-user %s: device callback %s failed", self.name, getattr(fn, "__name__", fn))

    def _emit(self, kind: str, extra: dict[str, Any]) -> None:
        if kind == "connected" and T.VFU_CLIENT_CONNECT.enabled:
            T.VFU_CLIENT_CONNECT.emit(ctrl=self.name)
        elif kind == "disconnected" and T.VFU_CLIENT_DISCONNECT.enabled:
            T.VFU_CLIENT_DISCONNECT.emit(ctrl=self.name, reason=str(extra.get("reason", "")))
        if self.on_event is None:
            return
        data = {"name": self.name, "path": self.path, "pid": self.client_pid, **extra}
        try:
            self.on_event(kind, data)
        except Exception:
            log.exception("vfio-user %s: on_event(%s) failed", self.name, kind)

    # ------------------------------------------------------------- receive
    def _on_readable(self) -> None:
        """The socket is readable: one read (unless whole messages wait from the last
        one), then up to MESSAGES_PER_WAKEUP messages handled in order."""
        conn = self._conn
        if conn is None:
            return
        rx = self._rx
        if not rx.ready():
            try:
                n = rx.fill(conn)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._drop_client(f"receive error: {exc}")
                return
            if n == 0:
                self._drop_client("client closed the connection")
                return
        if self._handle_messages(conn):
            # More whole messages than one event's budget: the socket's reader is off and
            # the backlog eventfd on, so each loop iteration handles one budget's worth.
            self.iothread.remove_reader(conn.fileno())
            self._backlogged = True
            self._signal_backlog()

    def _on_backlog(self) -> None:
        fd = self._backlog
        if fd is None:
            return
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        conn = self._conn
        if conn is None or not self._backlogged:
            return
        if self._handle_messages(conn):
            self._signal_backlog()
        elif self._conn is conn:
            self._backlogged = False
            self.iothread.add_reader(conn.fileno(), self._on_readable)

    def _signal_backlog(self) -> None:
        if self._backlog is not None:
            _write_eventfd(self._backlog)

    def _handle_messages(self, conn: socket.socket) -> bool:
        """Up to MESSAGES_PER_WAKEUP buffered messages; True if whole ones are left."""
        rx = self._rx
        for _ in range(MESSAGES_PER_WAKEUP):
            try:
                msg = rx.next()
            except FramingError as exc:
                log.warning("vfio-user %s: bad message size %d (command %d): dropping the client",
                            self.name, exc.header.size, exc.header.command)
                self._drop_client(f"framing error: {exc}")
                return False
            if msg is None:
                return False
            self._dispatch(*msg)
            if self._conn is not conn:
                return False
        return rx.ready()

    # ------------------------------------------------------------ dispatch
    def _dispatch(self, header: Any, payload: bytes, fds: list[int], fds_truncated: bool) -> None:
        command = header.command
        if self.trace is not None:
            self.trace("rx", command, header.size)
        if T.VFU_MSG_IN.enabled:
            T.VFU_MSG_IN.emit(ctrl=self.name, cmd=P.command_name(command), msg_id=header.msg_id, size=header.size)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("vfio-user %s: rx %s id=%d size=%d flags=%#x fds=%d", self.name, P.command_name(command),
                      header.msg_id, header.size, header.flags, len(fds))
        if header.flags & _TYPE_MASK != _COMMAND:
            suppressed = self._unexpected.allow()
            if suppressed is not None:
                log.warning("vfio-user %s: ignoring unexpected message type (flags %#x, command %d)%s",
                            self.name, header.flags, command,
                            f" ({suppressed} more since the last warning)" if suppressed else "")
            for fd in fds:
                _close(fd)
            return
        no_reply = bool(header.flags & _NO_REPLY)
        failure: tuple[int, str] | None = None
        try:
            if fds_truncated:
                raise _Reject(E.EINVAL, f"more than {P.MAX_MSG_FDS} file descriptors")
            if not self._negotiated and command != P.Command.VERSION:
                raise _Reject(E.EINVAL, "request before VERSION negotiation")
            handler = self._handlers.get(command)
            if handler is None:
                raise _Reject(E.ENOSYS, "unsupported command")
            if fds and command not in _FD_COMMANDS:
                raise _Reject(E.EINVAL, f"{len(fds)} unexpected file descriptor(s)")
            reply = handler(header, payload, fds)
        except _Reject as exc:
            failure = exc.errno, str(exc)
        except (RegionAccessError, DmaMapError) as exc:
            failure = getattr(exc, "errno", E.EINVAL), str(exc)
        except Exception as exc:
            log.exception("vfio-user %s: %s failed", self.name, P.command_name(command))
            failure = E.EINVAL, f"internal error: {exc}"
        finally:
            # Whatever the handler did not take ownership of, closed before any
            # reply so a client that counts its fds sees them gone.
            for fd in fds:
                _close(fd)
        if failure is not None:
            self._error(header, no_reply, *failure)
        elif not no_reply:
            self._send(header.msg_id, command, _REPLY, 0, reply.payload, reply.fds)

    def _error(self, header: Any, no_reply: bool, errno: int, why: str) -> None:
        level = logging.DEBUG if errno == E.ENOSYS else logging.INFO
        log.log(level, "vfio-user %s: %s id=%d refused (%s): %s", self.name, P.command_name(header.command),
                header.msg_id, E.errorcode.get(errno, errno), why)
        if not no_reply:
            self._send(header.msg_id, header.command, _ERROR_REPLY, errno, b"", [])

    def _send(self, msg_id: int, command: int, flags: int, error: int, payload: bytes, fds: list[int]) -> bool:
        """Send one message (blocking the IOThread at most SEND_TIMEOUT on a full socket)."""
        conn = self._conn
        if conn is None:
            return False
        data = P.pack_header(msg_id, command, len(payload), flags, error) + payload
        if self.trace is not None:
            self.trace("tx", command, len(data))
        if T.VFU_MSG_OUT.enabled:
            T.VFU_MSG_OUT.emit(ctrl=self.name, cmd=P.command_name(command), msg_id=msg_id, size=len(data),
                               error=error)
        view = memoryview(data)
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        deadline = 0.0
        while view:
            try:
                sent = conn.sendmsg([view], anc, _MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                now = time.monotonic()
                deadline = deadline or now + SEND_TIMEOUT
                if now >= deadline or not _wait_writable(conn, deadline - now):
                    self._drop_client("client does not read its replies")
                    return False
                continue
            except OSError as exc:
                self._drop_client(f"send error: {exc}")
                return False
            anc = []
            view = view[sent:]
        return True

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _parse(layout: Any, payload: bytes, what: str) -> Any:
        if len(payload) < layout.size:
            raise _Reject(E.EINVAL, f"{what}: payload of {len(payload)} bytes, need {layout.size}")
        return layout.unpack(payload)

    def _refresh_regions(self) -> list[Any]:
        regions = list(self.device.regions())
        self._region_sizes = [r.size for r in regions]
        return regions

    def _check_access(self, index: int, offset: int, count: int) -> None:
        if index >= NUM_REGIONS:
            raise _Reject(E.EINVAL, f"no region {index}")
        if not self._region_sizes:
            self._refresh_regions()
        size = self._region_sizes[index] if index < len(self._region_sizes) else 0
        if count > P.MAX_DATA_XFER_SIZE:
            raise _Reject(E.EINVAL, f"count {count} above max_data_xfer_size")
        if offset + count > size:
            raise _Reject(E.EINVAL, f"access [{offset:#x}, +{count:#x}) beyond region {index} of size {size:#x}")

    def _irq_sink(self, index: int) -> MsixEventfds:
        if index == IrqIndex.MSIX:
            return self.interrupts
        if index == IrqIndex.MSI:
            return self.msi
        return self._other_irqs.setdefault(index, MsixEventfds())

    # ------------------------------------------------------------ commands
    def _h_version(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        if self._negotiated:
            raise _Reject(E.EINVAL, "VERSION already negotiated")
        version = self._parse(P.VERSION, payload, "VERSION")
        if version.major != 0:
            raise _Reject(E.ENOTSUP, f"unsupported protocol major version {version.major}")
        try:
            caps = P.decode_version_json(payload[P.VERSION.size:])
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Reject(E.EINVAL, f"bad VERSION capabilities: {exc}") from None
        client_caps = caps.get("capabilities", {})
        if not isinstance(client_caps, dict):
            raise _Reject(E.EINVAL, "VERSION 'capabilities' is not an object")
        reply = P.encode_version(0, 0, P.server_capabilities())
        if P.HEADER_SIZE + len(reply) > header.size:
            # QEMU receives the reply in its request buffer: never answer longer than asked.
            reply = P.encode_version(0, 0, {})
        self.client_caps = {**P.DEFAULT_CAPS, **client_caps}
        self._refresh_regions()
        self.device.client_connected()
        self._negotiated = True
        log.info("vfio-user %s: negotiated version 0.%d, client caps %s", self.name, version.minor, client_caps)
        self._emit("connected", {"version": f"0.{min(version.minor, 0)}"})
        return _Reply(reply, [])

    def _h_dma_map(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.DMA_MAP, payload, "DMA_MAP")
        if req.argsz < P.DMA_MAP.size:
            raise _Reject(E.EINVAL, f"DMA_MAP argsz {req.argsz}")
        if req.flags & ~P.DMA_MAP_VALID_FLAGS:
            raise _Reject(E.EINVAL, f"DMA_MAP flags {req.flags:#x}")
        if len(fds) > 1:
            raise _Reject(E.EINVAL, f"DMA_MAP with {len(fds)} file descriptors")
        if len(self.memory) >= P.MAX_DMA_MAPS:
            raise _Reject(E.ENOSPC, "too many DMA mappings")
        if fds:
            seal_against_shrink(fds[0], req.offset + req.size)
        self.memory.map(req.addr, req.size, fds[0] if fds else None, req.offset, req.flags)
        if T.VFU_DMA_MAP.enabled:
            prot = ("r" if req.flags & P.DmaMapFlag.READ else "") + ("w" if req.flags & P.DmaMapFlag.WRITE else "")
            T.VFU_DMA_MAP.emit(ctrl=self.name, addr=req.addr, size=req.size, offset=req.offset, prot=prot)
        # the mapping holds its own reference: the fd is closed by _dispatch
        return _EMPTY

    def _h_dma_unmap(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.DMA_UNMAP, payload, "DMA_UNMAP")
        if req.argsz < P.DMA_UNMAP.size:
            raise _Reject(E.EINVAL, f"DMA_UNMAP argsz {req.argsz}")
        if req.flags & ~P.DMA_UNMAP_VALID_FLAGS:
            raise _Reject(E.EINVAL, f"DMA_UNMAP flags {req.flags:#x} (dirty page tracking unsupported)")
        if fds:
            # libvfio-user-based clients send the region's fd (see _FD_COMMANDS);
            # _dispatch closes it. Not an error, so not logged above DEBUG.
            log.debug("vfio-user %s: DMA_UNMAP with %d file descriptor(s): closed", self.name, len(fds))
        if T.VFU_DMA_UNMAP.enabled:
            T.VFU_DMA_UNMAP.emit(ctrl=self.name, addr=req.addr, size=req.size)
        if req.flags & P.DMA_UNMAP_VALID_FLAGS:
            if req.addr or req.size:
                raise _Reject(E.EINVAL, "DMA_UNMAP all with a nonzero range")
            self.device.dma_unmapping(0, ALL_MEMORY)
            self.memory.unmap_all()
        else:
            self.device.dma_unmapping(req.addr, req.size)
            self.memory.unmap(req.addr, req.size)
        return _Reply(payload[:P.DMA_UNMAP.size], [])

    def _h_device_info(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.DEVICE_INFO, payload, "DEVICE_GET_INFO")
        if req.argsz < P.DEVICE_INFO.size:
            raise _Reject(E.EINVAL, f"DEVICE_GET_INFO argsz {req.argsz}")
        return _Reply(P.DEVICE_INFO.pack(argsz=P.DEVICE_INFO.size, flags=P.DeviceFlag.RESET | P.DeviceFlag.PCI,
                                         num_regions=NUM_REGIONS, num_irqs=NUM_IRQS), [])

    def _h_region_info(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.REGION_INFO, payload, "DEVICE_GET_REGION_INFO")
        if req.argsz < P.REGION_INFO.size:
            raise _Reject(E.EINVAL, f"DEVICE_GET_REGION_INFO argsz {req.argsz}")
        if req.index >= NUM_REGIONS:
            raise _Reject(E.EINVAL, f"no region {req.index}")
        regions = self._refresh_regions()
        if req.index >= len(regions):
            raise _Reject(E.EINVAL, f"device has no region {req.index}")
        region = regions[req.index]
        flags = int(region.flags) & ~(RegionFlag.MMAP | RegionFlag.CAPS)
        areas: list[tuple[int, int]] = []
        if region.size and region.mmap_fd is not None and region.mmap_areas:
            areas = list(region.mmap_areas)
            flags |= RegionFlag.MMAP | RegionFlag.CAPS
        full = P.encode_region_info(req.index, flags, region.size, region.file_offset, areas)
        if req.argsz >= len(full):
            return _Reply(full, [region.mmap_fd] if areas else [])
        # Too small for the capabilities: the 32-byte info with argsz = the size needed
        # (and cap_offset already pointing past it); the client asks again.
        return _Reply(full[:req.argsz], [])

    def _h_irq_info(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.IRQ_INFO, payload, "DEVICE_GET_IRQ_INFO")
        if req.argsz < P.IRQ_INFO.size:
            raise _Reject(E.EINVAL, f"DEVICE_GET_IRQ_INFO argsz {req.argsz}")
        if req.index >= NUM_IRQS:
            raise _Reject(E.EINVAL, f"no IRQ index {req.index}")
        count = self.device.irq_count(req.index)
        flags = P.IrqInfoFlag.EVENTFD if count else 0
        if req.index == IrqIndex.INTX and count:
            # As the kernel's vfio-pci: the line masks itself when it fires.
            flags |= P.IrqInfoFlag.MASKABLE | P.IrqInfoFlag.AUTOMASKED
        elif req.index in (IrqIndex.MSI, IrqIndex.MSIX) and count:
            flags |= P.IrqInfoFlag.NORESIZE
        return _Reply(P.IRQ_INFO.pack(argsz=P.IRQ_INFO.size, flags=flags, index=req.index, count=count), [])

    def _h_set_irqs(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.IRQ_SET, payload, "DEVICE_SET_IRQS")
        if req.argsz < P.IRQ_SET.size:
            raise _Reject(E.EINVAL, f"DEVICE_SET_IRQS argsz {req.argsz}")
        data = req.flags & P.IRQ_SET_DATA_MASK
        action = req.flags & P.IRQ_SET_ACTION_MASK
        if (req.flags & ~(P.IRQ_SET_DATA_MASK | P.IRQ_SET_ACTION_MASK) or bin(data).count("1") != 1
                or bin(action).count("1") != 1):
            raise _Reject(E.EINVAL, f"DEVICE_SET_IRQS flags {req.flags:#x}")
        if req.index >= NUM_IRQS:
            raise _Reject(E.EINVAL, f"no IRQ index {req.index}")
        if fds and data != P.IrqSetFlag.DATA_EVENTFD:
            raise _Reject(E.EINVAL, "file descriptors without DATA_EVENTFD")
        for fd in fds:
            try:
                check_eventfd(fd)
            except ValueError as exc:
                raise _Reject(E.EINVAL, str(exc)) from None
        total = self.device.irq_count(req.index)
        if req.index == IrqIndex.INTX and total:
            return self._set_intx(action, data, req, payload, fds)
        sink = self._irq_sink(req.index)
        if data == P.IrqSetFlag.DATA_NONE and req.count == 0:
            if req.start != 0:
                raise _Reject(E.EINVAL, "disable-all with nonzero start")
            if action == P.IrqSetFlag.ACTION_TRIGGER:
                sink.close_all()
            return _EMPTY
        if req.start + req.count > total:
            raise _Reject(E.EINVAL, f"vectors [{req.start}, +{req.count}) beyond {total} for index {req.index}")
        if action != P.IrqSetFlag.ACTION_TRIGGER:
            raise _Reject(E.EINVAL, f"mask/unmask of IRQ index {req.index} unsupported (the client emulates "
                                    "MSI and MSI-X masking; only INTx is maskable)")
        vectors = range(req.start, req.start + req.count)
        if data == P.IrqSetFlag.DATA_EVENTFD:
            if not fds:
                for vector in vectors:
                    sink.deassign(vector)
            elif len(fds) != req.count:
                raise _Reject(E.EINVAL, f"{len(fds)} eventfds for {req.count} vectors")
            else:
                for vector, fd in zip(vectors, fds):
                    sink.assign(vector, fd)
                fds.clear()  # ownership moved to the sink
        elif data == P.IrqSetFlag.DATA_BOOL:
            flags = payload[P.IRQ_SET.size:P.IRQ_SET.size + req.count]
            if len(flags) != req.count:
                raise _Reject(E.EINVAL, "DATA_BOOL array shorter than count")
            for vector, fire in zip(vectors, flags):
                if fire:
                    sink.trigger(vector)
        else:
            for vector in vectors:
                sink.trigger(vector)
        return _EMPTY

    def _set_intx(self, action: int, data: int, req: Any, payload: bytes, fds: list[int]) -> _Reply:
        """SET_IRQS for the INTx index (one line): trigger eventfd, mask, unmask (level semantics)."""
        intx = self.intx
        if action == P.IrqSetFlag.ACTION_TRIGGER and data == P.IrqSetFlag.DATA_NONE and req.count == 0:
            if req.start != 0:
                raise _Reject(E.EINVAL, "disable-all with nonzero start")
            self._set_intx_unmask_fd(None)
            intx.deassign()
            return _EMPTY
        if req.start != 0 or req.count != 1:
            raise _Reject(E.EINVAL, f"INTx has one line: start {req.start}, count {req.count} (need 0, 1)")
        if data == P.IrqSetFlag.DATA_EVENTFD and len(fds) > 1:
            raise _Reject(E.EINVAL, f"{len(fds)} eventfds for the one INTx line")
        fire = True
        if data == P.IrqSetFlag.DATA_BOOL:
            flags = payload[P.IRQ_SET.size:P.IRQ_SET.size + 1]
            if len(flags) != 1:
                raise _Reject(E.EINVAL, "DATA_BOOL array shorter than count")
            fire = bool(flags[0])
        if action == P.IrqSetFlag.ACTION_TRIGGER:
            if data == P.IrqSetFlag.DATA_EVENTFD:
                if fds:
                    intx.assign(fds.pop())
                else:
                    intx.deassign()
            elif fire and intx.fd is not None:
                _write_eventfd(intx.fd)     # a loopback test of the eventfd, as the kernel's vfio-pci
            return _EMPTY
        if data == P.IrqSetFlag.DATA_EVENTFD:
            if action == P.IrqSetFlag.ACTION_MASK:
                raise _Reject(E.ENOTSUP, "an INTx mask eventfd is unsupported (use DATA_NONE or DATA_BOOL)")
            self._set_intx_unmask_fd(fds.pop() if fds else None)
            return _EMPTY
        if fire:
            if action == P.IrqSetFlag.ACTION_MASK:
                intx.mask()
            else:
                self._unmask_intx()
        return _EMPTY

    def _unmask_intx(self) -> None:
        """The guest EOId: the device brings its level up to date (e.g. from shadow CQ heads),
        then a level still high is signalled again."""
        self._guard(self.device.irq_unmasked, IrqIndex.INTX)
        self.intx.unmask()

    def _set_intx_unmask_fd(self, fd: int | None) -> None:
        """KVM's resample eventfd: each time it is readable, INTx is unmasked."""
        old = self.intx.unmask_fd
        if old is not None:
            self.iothread.remove_reader(old)
            _close(old)
        self.intx.unmask_fd = fd
        if fd is not None:
            os.set_blocking(fd, False)
            self.iothread.add_reader(fd, self._on_intx_resample)

    def _on_intx_resample(self) -> None:
        fd = self.intx.unmask_fd
        if fd is None:
            return
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("vfio-user %s: INTx unmask eventfd: %s", self.name, exc)
            self._set_intx_unmask_fd(None)
            return
        self._unmask_intx()

    def _h_region_read(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.REGION_RW, payload, "REGION_READ")
        self._check_access(req.region, req.offset, req.count)
        data = self.device.region_read(req.region, req.offset, req.count)
        if len(data) != req.count:
            raise _Reject(E.EINVAL, f"device returned {len(data)} bytes for a {req.count}-byte read")
        return _Reply(payload[:P.REGION_RW.size] + bytes(data), [])

    def _h_region_write(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        req = self._parse(P.REGION_RW, payload, "REGION_WRITE")
        data = payload[P.REGION_RW.size:]
        if len(data) != req.count:
            raise _Reject(E.EINVAL, f"REGION_WRITE count {req.count} but {len(data)} data bytes")
        self._check_access(req.region, req.offset, req.count)
        self.device.region_write(req.region, req.offset, data)
        return _Reply(payload[:P.REGION_RW.size], [])

    def _h_reset(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:
        self.device.reset()
        return _EMPTY


# ------------------------------------------------------------------ misc
class _RateLimited:
    """At most one event per ``interval`` seconds; counts the ones it swallowed."""

    def __init__(self, interval: float):
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def allow(self) -> int | None:
        """None: stay quiet; else the number suppressed since the last allowed one."""
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return None
        self._next = now + self.interval
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _write_eventfd(fd: int) -> None:
    try:
        os.eventfd_write(fd, 1)
    except OSError:
        pass  # saturated or gone: nothing more to signal


def _peer_pid(conn: socket.socket) -> int | None:
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]
    except OSError:
        return None


def _wait_writable(conn: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLOUT)
    events = poller.poll(max(timeout, 0.0) * 1000)
    return any(ev & select.POLLOUT for _, ev in events)


def _remove_stale_socket(path: str) -> None:
    """Unlink a socket left behind by a dead server; refuse to touch a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(E.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listening: stale
        return
    finally:
        probe.close()
    raise OSError(E.EADDRINUSE, f"{path}: a server is already listening there")
