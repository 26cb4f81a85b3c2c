"""Helpers for the QMP tests: a monitor served from a background event-loop thread.

Why a thread: the same server is driven by async ``QMPClient`` code, by plain blocking
sockets (malformed input) and by a ``qmp-shell`` child process (pexpect); running it on
its own loop lets every kind of client talk to it from the test thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Optional

from nvshell.device import trace as T
from nvshell.device.trace import TracePoint, TraceRegistry
from nvshell.monitor.context import MonitorContext
from nvshell.monitor.qmp.server import QMPServer


def trace_registry(*points: TracePoint, enabled: tuple[TracePoint, ...] = ()) -> TraceRegistry:
    """A fresh real ``TraceRegistry`` holding copies of the given declared trace points
    (device/trace.py), so a test can switch states without touching the process-wide
    ``TRACE``, and a renamed trace point changes the names the tests expect (they fail)."""
    registry = TraceRegistry()
    for tp in points:
        registry.point(tp.name, doc=tp.doc, **tp.fields)
    for tp in enabled:
        registry.set_state(tp.name, True)
    return registry


class MonitorThread:
    """A QMPServer on its own loop thread, listening on a UNIX socket and on TCP."""

    def __init__(self, tmp_path: Any, machine: Any = None, *, max_message: Optional[int] = None) -> None:
        self.tmp_path = str(tmp_path)
        self.machine = machine
        self.loop = asyncio.new_event_loop()
        self.shutdown_requests = 0
        self.trace = trace_registry(T.NVME_CMD_SUBMIT, T.NVME_CMD_COMPLETE, T.VFU_MSG_IN, enabled=(T.VFU_MSG_IN,))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.unix_path = os.path.join(self.tmp_path, "qmp.sock")
        self.server, self.ctx, self.tcp = self.call(self._start(max_message))

    async def _start(self, max_message: Optional[int]) -> tuple:
        if hasattr(self.machine, "set_control_plane"):
            self.machine.set_control_plane(asyncio.get_running_loop().call_soon_threadsafe)
        ctx = MonitorContext(machine=self.machine, request_shutdown=self._on_shutdown, trace=self.trace)
        kwargs = {} if max_message is None else {"max_message": max_message}
        server = QMPServer(ctx, **kwargs)
        await server.listen_unix(self.unix_path)
        tcp = await server.listen_tcp("127.0.0.1", 0)
        return server, ctx, tcp

    def _on_shutdown(self) -> None:
        self.shutdown_requests += 1

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], Any]) -> Any:
        """Run a plain function on the loop thread."""
        async def wrapper() -> Any:
            return fn()
        return self.call(wrapper())

    def stop(self) -> None:
        from nvshell.monitor.commands_tracing import has_tracing, tracing_of
        try:
            self.call(self.server.close())
            if has_tracing(self.ctx):  # its latency sink sits in the process-wide TRACE
                self.run(tracing_of(self.ctx).close)
            if self.machine is not None:
                self.run(self.machine.shutdown)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


class RawClient:
    """A blocking socket client that reads CRLF-terminated JSON lines."""

    def __init__(self, path_or_addr: Any, negotiate: bool = True, timeout: float = 5) -> None:
        family = socket.AF_UNIX if isinstance(path_or_addr, str) else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path_or_addr)
        self.buf = b""
        self.greeting = self.recv()
        if negotiate:
            self.send(b'{"execute": "qmp_capabilities"}')
            assert self.recv() == {"return": {}}

    def send(self, data: bytes | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data).encode()
        self.sock.sendall(data)

    def recv_line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def recv(self) -> Any:
        line = self.recv_line()
        assert b"\n" not in line and line == line.strip()
        return json.loads(line)

    def cmd(self, name: str, **args: Any) -> Any:
        msg: dict = {"execute": name}
        if args:
            msg["arguments"] = args
        self.send(msg)
        return self.recv()

    def closed_by_peer(self, timeout: float = 5) -> bool:
        """True once the server closed the connection (draining anything still queued)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(65536):
                    return True
            except socket.timeout:
                continue
            except ConnectionResetError:
                return True
        return False

    def close(self) -> None:
        self.sock.close()
