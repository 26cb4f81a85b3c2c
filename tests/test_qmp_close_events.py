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
