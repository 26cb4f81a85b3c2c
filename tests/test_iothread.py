"""IOThread: a callback that raises costs only itself."""

from __future__ import annotations

import threading

import pytest

from nvshell.device.iothread import IOThread


@pytest.fixture
def iothread():
    t = IOThread("t")
    t.start()
    yield t
    t.stop()


def test_queued_calls_behind_a_raising_one_still_run(iothread: IOThread) -> None:
    gate, entered = threading.Event(), threading.Event()
    iothread.call_soon(lambda: (entered.set(), gate.wait(5)))
    assert entered.wait(5)                      # the loop is busy: the next three run as one batch
    iothread.call_soon(lambda: 1 / 0)
    after = iothread.submit(lambda: "ran")
    boom = iothread.submit(lambda: 1 / 0)
    gate.set()
    assert after.result(5) == "ran"
    with pytest.raises(ZeroDivisionError):
        boom.result(5)


def test_timers_and_pollers_survive_a_raising_callback(iothread: IOThread) -> None:
    fired = threading.Event()
    polled = threading.Event()

    def setup() -> None:
        iothread.call_later(0, lambda: 1 / 0)
        iothread.call_later(0, fired.set)

        def bad_poller() -> bool:
            raise RuntimeError("poller bug")
        iothread.add_poller(bad_poller)
        iothread.add_poller(lambda: polled.set() or False)

    iothread.run(setup)
    assert fired.wait(5) and polled.wait(5)


def test_calls_queued_at_stop_complete() -> None:
    t = IOThread("s")
    t.start()
    gate, entered = threading.Event(), threading.Event()
    t.call_soon(lambda: (entered.set(), gate.wait(5)))
    assert entered.wait(5)                      # the loop is inside that call: the next one waits in the queue
    pending = t.submit(lambda: 42)
    stopper = threading.Thread(target=t.stop)   # stop() while the loop is busy: the call is still queued
    stopper.start()
    gate.set()
    stopper.join(5)
    assert pending.result(5) == 42
