"""Listening sockets for QMP and event broadcast to their negotiated clients.

Why one class per set of sockets: the program may serve several ``-qmp`` addresses;
each ``QMPServer`` subscribes to the shared ``EventBus`` and fans events out to its own
sessions.  UNIX sockets are created owner-only with no window in which another user
could connect: bound under a temporary name, chmod 0600, then renamed into place.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from typing import Any, Callable, Optional

from nvshell.monitor.errors import MonitorError
from nvshell.monitor.qmp.address import QMPAddress
from nvshell.monitor.qmp.parser import MAX_MESSAGE
from nvshell.monitor.qmp.session import QMPSession
from nvshell.monitor.registry import Registry

log = logging.getLogger("nvshell.monitor.qmp")


class QMPServer:
    """``QMPServer(ctx, registry=None)``; ``await listen(address)`` / ``listen_unix`` / ``listen_tcp``; ``close()``."""

    def __init__(self, ctx: Any, registry: Optional[Registry] = None, *, max_message: int = MAX_MESSAGE) -> None:
        self.ctx = ctx
        self.registry = registry if registry is not None else ctx.registry
        self.max_message = max_message
        self.sessions: set[QMPSession] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_paths: list[tuple[str, int]] = []  # (path, inode) to unlink on close
        self._addresses: list[str] = []
        self._tasks: set[asyncio.Task] = set()
        self._unsubscribe: Optional[Callable[[], None]] = None
        self._closed = False

    # -- listening --------------------------------------------------------------
    def _start(self) -> None:
        if self._closed:
            raise MonitorError("QMP server is closed")
        if self._unsubscribe is None:
            self.ctx.events.attach_loop(asyncio.get_running_loop())
            self._unsubscribe = self.ctx.events.subscribe(self._broadcast)

    async def listen(self, address: QMPAddress) -> str:
        """Listen on a parsed ``-qmp`` address; returns its description."""
        if address.kind == "unix":
            assert address.path is not None
            return await self.listen_unix(address.path)
        assert address.port is not None
        host, port = await self.listen_tcp(address.host, address.port)
        return f"tcp:{host}:{port}"

    async def listen_unix(self, path: str | os.PathLike) -> str:
        """Serve on a UNIX socket with mode 0600; a stale socket at ``path`` is replaced."""
        self._start()
        path = os.fspath(path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise MonitorError(f"QMP socket path {path} exists and is not a socket")
            os.unlink(path)
        tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.getpid()}.tmp")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(16)
            os.rename(tmp, path)
        except BaseException:
            sock.close()
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        server = await asyncio.start_unix_server(self._accept, sock=sock)
        self._servers.append(server)
        self._unix_paths.append((path, os.lstat(path).st_ino))
        self._addresses.append(f"unix:{path}")
        return path

    async def listen_tcp(self, host: Optional[str], port: int) -> tuple[str, int]:
        """Serve on TCP; ``port`` 0 picks a free port.  Returns the bound (host, port)."""
        self._start()
        server = await asyncio.start_server(self._accept, host=host, port=port)
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        self._addresses.append(f"tcp:{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"tcp:[{bound[0]}]:{bound[1]}")
        return bound[0], bound[1]

    @property
    def addresses(self) -> list[str]:
        return list(self._addresses)

    def describe(self) -> str:
        """Where clients connect, e.g. ``unix:/run/user/0/nvshell/qmp.sock``."""
        return ", ".join(self._addresses)

    # -- sessions -----------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername") or "unix")
        if self._closed:
            writer.close()
            return
        session = QMPSession(reader, writer, self.registry, self.ctx, peer=peer, max_message=self.max_message,
                             on_close=self.sessions.discard)
        self.sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            if task is not None:
                self._tasks.discard(task)

    def _broadcast(self, event: dict) -> None:
        for session in list(self.sessions):
            session.deliver_event(event)

    async def close(self) -> None:
        """Stop listening, disconnect every client, remove UNIX socket files."""
        if self._closed:
            return
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
        for server in self._servers:
            server.close()
        for session in list(self.sessions):
            session.finish()        # output and EOF now; the client closes (bounded below)
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
        for session in list(self.sessions):
            session.close()
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        for path, inode in self._unix_paths:
            try:
                if os.lstat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
