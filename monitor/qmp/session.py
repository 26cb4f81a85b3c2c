"""One QMP client: greeting, capabilities negotiation, request dispatch, events.

State machine (each client has its own)::

    GREETING --greeting sent--> NEGOTIATING --qmp_capabilities--> READY
        any state --EOF / error / server close--> CLOSED

Why explicit states: QEMU refuses every command but ``qmp_capabilities`` before
negotiation and must not send events then (``QMPClient`` reads exactly one reply to
its ``qmp_capabilities`` and fails on anything else).

Requests of one client run one at a time, in order, on the loop thread.  Events that
arrive while a command runs are held back until its reply is written, so a client
always sees ``{"return": {}}`` for ``device_del`` before ``DEVICE_DELETED``.  A client
that goes away mid-command lets the command finish; its reply is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import json
import logging
from typing import Any, Callable, Optional

from nvshell.monitor.errors import ALREADY_NEGOTIATED, CommandNotFound, GenericError, QMPError, to_qmp_error
from nvshell.monitor.qmp.parser import MAX_MESSAGE, JSONStreamParser, Message, ParseError
from nvshell.monitor.registry import Registry

log = logging.getLogger("nvshell.monitor.qmp")

READ_SIZE = 65536
# Memory a QMP client can make us hold (issue 13: "bound memory per session and in
# total"). Input: at most ``max_message`` (10 MiB) of one unfinished message per
# session and MAX_TOTAL_INPUT over all sessions; the session that would pass the
# total is told and closed. Output: replies are flow-controlled -- past
# OUTPUT_HIGH_WATER queued bytes the session stops reading requests until the
# client reads -- and events, which cannot wait, are capped per session at
# MAX_OUTPUT_BUFFER or an equal share of MAX_TOTAL_OUTPUT, whichever is smaller
# (but at least MIN_OUTPUT_BUFFER); a client over its cap is dropped.
MAX_TOTAL_INPUT = 64 * 1024 * 1024
OUTPUT_HIGH_WATER = 1024 * 1024
MAX_OUTPUT_BUFFER = 16 * 1024 * 1024
MAX_TOTAL_OUTPUT = 64 * 1024 * 1024
MIN_OUTPUT_BUFFER = 2 * OUTPUT_HIGH_WATER
NEGOTIATION_EXPECTED = "Expecting capabilities negotiation with 'qmp_capabilities'"


#: The session whose command is running (None outside a QMP command: shell, HMP script).
#: Why a context variable: handlers get only ``(ctx, args)``, and ``ctx`` is shared by every
#: client; a command that must act for *its* client (``x-trace-subscribe``) reads this.
CURRENT_SESSION: contextvars.ContextVar[Optional["QMPSession"]] = contextvars.ContextVar(
    "qmp_current_session", default=None)


class SessionState(enum.Enum):
    GREETING = "greeting"
    NEGOTIATING = "negotiating"
    READY = "ready"
    #: The monitor is going away: its output and EOF are sent, the client's input is discarded
    #: until the client closes (see ``QMPSession.finish``).
    FINISHING = "finishing"
    CLOSED = "closed"


def encode(message: dict) -> bytes:
    """One compact JSON line terminated by CRLF, as QEMU writes it."""
    return json.dumps(message, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\r\n"


class RequestError(Exception):
    """A request that cannot be dispatched; carries the id to echo, if any."""

    def __init__(self, error: QMPError, has_id: bool, ident: Any):
        super().__init__(error.desc)
        self.error, self.has_id, self.ident = error, has_id, ident


def parse_request(value: Any) -> tuple[str, Optional[dict], bool, Any]:
    """Check a request's envelope like QEMU's ``qmp_dispatch``: (name, arguments, has_id, id)."""
    if not isinstance(value, dict):
        raise RequestError(GenericError("QMP input must be a JSON object"), False, None)
    has_id, ident = "id" in value, value.get("id")

    def fail(desc: str) -> RequestError:
        return RequestError(GenericError(desc), has_id, ident)

    for key, member in value.items():
        if key == "execute":
            if not isinstance(member, str):
                raise fail("QMP input member 'execute' must be a string")
        elif key == "arguments":
            if not isinstance(member, dict):
                raise fail("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise fail(f"QMP input member '{key}' is unexpected")
    if "execute" not in value:
        raise fail("QMP input lacks member 'execute'")
    return value["execute"], value.get("arguments"), has_id, ident


class QMPSession:
    """Serve one connected client until it leaves or the server closes."""

    #: Bytes of unfinished input held by all sessions, and how many sessions are open
    #: (the monitor is one asyncio loop: plain class attributes suffice).
    input_total = 0
    live = 0

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registry: Registry, ctx: Any,
                 *, peer: str = "", max_message: int = MAX_MESSAGE,
                 on_close: Optional[Callable[["QMPSession"], None]] = None) -> None:
        self.reader, self.writer = reader, writer
        self.registry, self.ctx = registry, ctx
        self.peer = peer
        self.state = SessionState.GREETING
        self.parser = JSONStreamParser(max_size=max_message)
        self._busy = False
        self._held_events: list[dict] = []
        self._on_close = on_close
        self._close_callbacks: list[Callable[["QMPSession"], None]] = []
        self._input_held = 0
        QMPSession.live += 1
        transport = writer.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=OUTPUT_HIGH_WATER)

    # -- output ---------------------------------------------------------------
    def _write(self, message: dict) -> bool:
        if self.state in (SessionState.CLOSED, SessionState.FINISHING) or self.writer.is_closing():
            return False
        try:
            data = encode(message)
        except (TypeError, ValueError) as exc:
            log.error("cannot encode reply %r: %s", message, exc)
            data = encode({**{k: v for k, v in message.items() if k == "id"},
                           "error": GenericError(f"internal error: reply is not JSON: {exc}").to_json()})
        try:
            self.writer.write(data)
        except Exception:  # the transport went away under us
            self.abort()
            return False
        transport = self.writer.transport
        if transport is not None and transport.get_write_buffer_size() > self.output_cap():
            log.warning("QMP client %s does not read its output; dropping it", self.peer)
            self.abort()
            return False
        return True

    @staticmethod
    def output_cap() -> int:
        """Queued output above which a session is dropped (see MAX_TOTAL_OUTPUT)."""
        share = MAX_TOTAL_OUTPUT // max(1, QMPSession.live)
        return max(MIN_OUTPUT_BUFFER, min(MAX_OUTPUT_BUFFER, share))

    def _account_input(self) -> bool:
        """Track this session's unfinished input in the total; False if over the limit."""
        held = self.parser.pending
        QMPSession.input_total += held - self._input_held
        self._input_held = held
        return QMPSession.input_total <= MAX_TOTAL_INPUT

    def deliver_event(self, event: dict) -> None:
        """Called on the loop thread for every monitor event."""
        if self.state is not SessionState.READY:
            return
        if self._busy:
            self._held_events.append(event)
        else:
            self._write(event)

    def add_close_callback(self, callback: Callable[["QMPSession"], None]) -> None:
        """Call ``callback(session)`` once when the client goes away (per-client state cleanup)."""
        if self.state is SessionState.CLOSED:
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def remove_close_callback(self, callback: Callable[["QMPSession"], None]) -> None:
        try:
            self._close_callbacks.remove(callback)
        except ValueError:
            pass

    def _reply(self, has_id: bool, ident: Any, *, result: Any = None, error: Optional[QMPError] = None) -> None:
        message: dict[str, Any] = {"error": error.to_json()} if error is not None else {"return": result}
        if has_id:
            message["id"] = ident
        self._write(message)

    # -- input ----------------------------------------------------------------
    async def run(self) -> None:
        """Greet, then read and dispatch until EOF."""
        try:
            self._write({"QMP": {"version": self.ctx.version_info(), "capabilities": []}})
            self.state = SessionState.NEGOTIATING
            while self.state is not SessionState.CLOSED:
                try:
                    data = await self.reader.read(READ_SIZE)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                if self.state is SessionState.FINISHING:
                    continue                      # the monitor is going away: nothing more runs
                items = self.parser.feed(data)
                if not self._account_input():
                    log.warning("QMP client %s: unfinished input of all clients exceeds %d bytes; dropping it",
                                self.peer, MAX_TOTAL_INPUT)
                    items.append(ParseError(f"JSON parse error, the monitor holds more than {MAX_TOTAL_INPUT} "
                                            "bytes of unfinished input", fatal=True))
                for item in items:
                    if isinstance(item, ParseError):
                        self._reply(False, None, error=GenericError(item.desc))
                        if item.fatal:
                            await self._flush()
                            self.close()
                            break
                    else:
                        await self._handle(item)
                        if self._output_queued() > OUTPUT_HIGH_WATER:
                            await self._flush()  # wait for the client to read: replies never pile up
                    if self.state in (SessionState.CLOSED, SessionState.FINISHING):
                        break
                await self._flush()
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in here must only cost this client
            log.exception("QMP session %s failed", self.peer)
        finally:
            self.close()

    def _output_queued(self) -> int:
        transport = self.writer.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    async def _flush(self) -> None:
        if self.state is SessionState.CLOSED or self.writer.is_closing():
            return
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.abort()

    async def _handle(self, item: Message) -> None:
        try:
            name, arguments, has_id, ident = parse_request(item.value)
        except RequestError as exc:
            self._reply(exc.has_id, exc.ident, error=exc.error)
            return
        self._busy = True
        try:
            result = await self._dispatch(name, arguments)
        except QMPError as exc:
            self._reply(has_id, ident, error=exc)
        except Exception as exc:
            self._reply(has_id, ident, error=to_qmp_error(exc))
        else:
            self._reply(has_id, ident, result=result)
        finally:
            self._busy = False
            held, self._held_events = self._held_events, []
            for event in held:
                self._write(event)

    async def _dispatch(self, name: str, arguments: Optional[dict]) -> Any:
        if self.state is SessionState.NEGOTIATING:
            if name != "qmp_capabilities":
                raise CommandNotFound(NEGOTIATION_EXPECTED)
            arguments = arguments or {}
            self.registry.check(name, arguments)
            for capability in arguments.get("enable", []):
                raise GenericError(f"Capability '{capability}' not available")
            self.state = SessionState.READY
            return {}
        if name == "qmp_capabilities":
            raise CommandNotFound(ALREADY_NEGOTIATED)
        token = CURRENT_SESSION.set(self)
        try:
            return await self.registry.execute(name, arguments, self.ctx)
        finally:
            CURRENT_SESSION.reset(token)

    # -- teardown ---------------------------------------------------------------
    def finish(self) -> None:
        """The monitor is going away: send what is queued (held events first), then EOF, but
        keep the connection until the client closes it (``run`` reads and discards meanwhile).

        Why not close at once: a client may be writing a command as we close (the remote
        shell's toolbar polls once a second).  Its write would fail with EPIPE, and an asyncio
        client (qemu.qmp, ``nvshell --connect``) then marks the stream broken and never reads
        the SHUTDOWN already sent.  After EOF it reads everything, then disconnects."""
        if self.state in (SessionState.CLOSED, SessionState.FINISHING):
            return
        held, self._held_events = self._held_events, []
        for event in held:
            self._write(event)
        self.state = SessionState.FINISHING
        try:
            if not self.writer.can_write_eof() or self.writer.is_closing():
                raise OSError("no half-close")
            self.writer.write_eof()
        except Exception:
            self.close()

    def close(self) -> None:
        """Close politely: queued output is still sent."""
        if self.state is SessionState.CLOSED:
            return
        # Events held back while a command ran are still the client's (QEMU's clients see SHUTDOWN
        # after ``quit`` even when another of their commands was in flight): send them first.
        held, self._held_events = self._held_events, []
        for event in held:
            self._write(event)
        self.state = SessionState.CLOSED
        QMPSession.live -= 1
        # Free what the client made us hold now, not when a GC pass breaks the
        # asyncio reference cycles around a closed connection.
        self.parser.discard()
        self._account_input()
        self._held_events = []
        try:
            self.writer.close()
        except Exception:
            pass
        if self._on_close is not None:
            self._on_close(self)
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # cleanup of one feature must not stop the others
                log.exception("QMP session %s: close callback failed", self.peer)

    def abort(self) -> None:
        """Drop the connection at once (dead or unresponsive peer)."""
        transport = self.writer.transport
        if transport is not None:
            transport.abort()
        self.close()
