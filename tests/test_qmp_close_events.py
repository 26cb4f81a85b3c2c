"""Events a session held back while one of its commands ran are delivered when the monitor closes
it (``quit`` from another client while this one waits for an answer: it must still see SHUTDOWN)."""

from __future__ import annotations

from nvshell.monitor.qmp.session import QMPSession
from tests.qmp_helpers import MonitorThread, RawClient


def test_held_events_are_sent_before_the_session_closes(tmp_path):
    mon = MonitorThread(tmp_path)
    try:
        client = RawClient(mon.unix_path)

        def busy_then_event_then_close() -> None:
            (session,) = [s for s in mon.server.sessions if isinstance(s, QMPSession)]
            session._busy = True            # as while one of its commands awaits an IOThread
            mon.ctx.events._deliver({"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"},
                                     "timestamp": {"seconds": 0, "microseconds": 0}})
            assert session._held_events    # held, not written, while the command runs

        mon.run(busy_then_event_then_close)
        mon.call(mon.server.close())
        assert client.recv()["event"] == "SHUTDOWN"
        assert client.closed_by_peer()
    finally:
        mon.stop()


def test_a_client_writing_while_the_monitor_closes_still_reads_shutdown(tmp_path):
    """The remote shell's toolbar polls once a second; when ``quit`` (from another client) closes
    the monitor, a poll may be written after the session ended.  An asyncio client (qemu.qmp,
    ``nvshell --connect``) whose write fails with EPIPE marks its stream broken and never reads the
    SHUTDOWN already sent.  So the monitor half-closes: it sends its output and EOF, keeps the
    connection open (discarding input) until the client closes it, and only then lets go."""
    import asyncio
    import json
    import time

    from nvshell.testing import wait_until

    mon = MonitorThread(tmp_path)
    try:
        async def client() -> list:
            reader, writer = await asyncio.open_unix_connection(mon.unix_path)
            await reader.readline()                                    # greeting
            writer.write(b'{"execute": "qmp_capabilities"}\n')
            await writer.drain()
            assert "return" in json.loads(await reader.readline())
            (session,) = list(mon.server.sessions)
            closing = asyncio.run_coroutine_threadsafe(close_after_event(), mon.loop)
            # The monitor has sent SHUTDOWN and ended its side before this client writes again.
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: wait_until(lambda: session.writer.is_closing() or session.state.name != "READY",
                                         3, "the monitor's side of the session ended"))
            writer.write(b'{"execute": "query-status"}\n')            # the poll in flight
            await writer.drain()
            got = [json.loads(line) for line in [await reader.readline()] if line]
            assert await reader.readline() == b""                      # then EOF
            writer.close()
            t0 = time.monotonic()
            await asyncio.wrap_future(closing)
            got.append(time.monotonic() - t0)
            return got

        async def close_after_event() -> None:
            mon.ctx.events.emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
            await asyncio.sleep(0)                                     # the event reaches the session
            await mon.server.close()

        *events, closed_after = asyncio.run(client())
        assert [e.get("event") for e in events] == ["SHUTDOWN"], events
        assert closed_after < 0.5                                      # the client's close ended the wait
    finally:
        mon.stop()
