"""Monitor events: timestamped, delivered on the monitor's asyncio loop.

Why a bus of our own: the device model publishes events (``DEVICE_DELETED``,
``X_NVME_CLIENT_CONNECTED``...) from any thread, IOThreads included, while QMP sessions
and the shell live on one asyncio loop.  ``EventBus.emit`` is thread-safe: it stamps
the event at once and hands delivery to the loop with ``call_soon_threadsafe``, so
subscribers always run on the loop thread, in emission order, and never in the middle
of a command (a command's reply is written before events it caused).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger("nvshell.monitor.events")

#: A delivered event: ``{"event": NAME, "data": {...}, "timestamp": {"seconds", "microseconds"}}``.
Event = dict[str, Any]
Subscriber = Callable[[Event], None]


def make_event(name: str, data: dict | None = None, when: float | None = None) -> Event:
    """Build an event in QEMU's wire shape."""
    if when is None:
        when = time.time()
    seconds = int(when)
    return {"event": name, "data": {} if data is None else data,
            "timestamp": {"seconds": seconds, "microseconds": int((when - seconds) * 1_000_000)}}


class EventBus:
    """Fan-out of monitor events to in-process subscribers (QMP servers, the shell)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self._machines: set[int] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` from now on (the first loop attached wins)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = loop

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` on the loop thread for each event; returns an unsubscribe function.

        Subscribing from inside a running loop attaches that loop, so that events emitted
        by device threads never reach the subscriber on a foreign thread."""
        if self._loop is None:
            try:
                self.attach_loop(asyncio.get_running_loop())
            except RuntimeError:
                pass
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                try:
                    self._subscribers.remove(callback)
                except ValueError:
                    pass
        return unsubscribe

    def connect_machine(self, machine: Any) -> None:
        """Forward the device model's events (``machine.subscribe(cb(name, data))``) once."""
        if machine is None or id(machine) in self._machines or not hasattr(machine, "subscribe"):
            return
        self._machines.add(id(machine))
        machine.subscribe(lambda name, data=None: self.emit(name, data))

    def emit(self, name: str, data: dict | None = None) -> None:
        """Publish an event; safe from any thread."""
        event = make_event(name, data)
        loop = self._loop
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            else:
                self._loop = loop
        if loop is None or loop.is_closed():
            self._deliver(event)  # no loop yet (start-up, tests): deliver in place
            return
        try:
            loop.call_soon_threadsafe(self._deliver, event)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _deliver(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # one broken subscriber must not starve the others
                log.exception("event subscriber failed on %s", event.get("event"))
