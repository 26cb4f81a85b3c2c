"""IOThread: the one thread that owns a controller's socket, queues and timers.

Threading model of nvshell (see README, "Architecture"):

* The control plane (QMP monitor, shell, object changes) runs on one asyncio loop.
* Each controller's data plane runs on its own ``IOThread``. The thread owns the
  controller's vfio-user socket, so a doorbell write is handled where the queues
  live, without a thread hop.
* The only way into an IOThread from outside is ``submit`` (returns a
  ``concurrent.futures.Future``) or ``run`` (waits for the result). Control-plane
  code that must touch controller state (attach a namespace, read queue state
  for ``info queues``) goes through it; nothing else crosses threads.

The loop multiplexes file descriptors (``add_reader``), timers (``call_later``)
and *pollers*: callables that look at shared memory the guest writes without
always telling us (shadow doorbells, mmapped doorbells). A poller returns True
when it found work. Pollers are not how the loop learns of work: after the
last useful poll the loop spins for a short *adaptive* window (``spin``), then
sleeps. A poller that can be woken (``before_sleep`` given: it arms a
notification, e.g. publishes EventIdx so the guest rings a trapped doorbell,
and says whether work slipped in meanwhile) lets the loop sleep until an event;
a poller without one (mmapped doorbells) makes it back off exponentially to
``IDLE_POLL_MAX`` between looks.

The spin window pays when work arrives within it (the guest's next submission
is found without a doorbell message and without a sleep/wake): it grows to
cover the gaps seen, up to ``spin_max`` (``SPIN_MAX``; a controller's ``poll-max-ns``,
QEMU's name for its IOThreads' polling ceiling; 0 never spins), and halves each time it expires
unused. It stops entirely while the host is contended -- a spinning thread that
got less than half a CPU over its window is being pre-empted, and sleeping is
then cheaper for everyone -- and probes again after ``SPIN_REPROBE`` sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from typing import Any, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long ``run``/``call`` wait for an IOThread by default. Every wait on an
#: IOThread has a bound: a stuck one (a bug, a blocking write) must cost the caller
#: an error, never a monitor that stops answering.
CALL_TIMEOUT = 10.0


class IOThreadTimeout(TimeoutError):
    """An IOThread did not run a request in time (QMP answers it as a GenericError)."""

    error_class = "GenericError"


async def wait_future(future: "concurrent.futures.Future[T]", what: str, timeout: float | None = None) -> T:
    """Await a future an IOThread completes (``submit``, or several gathered), at most
    ``timeout`` (CALL_TIMEOUT) seconds; then ``IOThreadTimeout`` naming ``what``."""
    limit = CALL_TIMEOUT if timeout is None else timeout
    try:
        return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), limit)
    except TimeoutError:
        if future.done() and not future.cancelled():
            raise  # the work itself raised a TimeoutError
        future.cancel()
        log.warning("%s not done within %g s", what, limit)
        raise IOThreadTimeout(f"an IOThread did not answer within {limit:g} s (busy or stuck): "
                              f"{what} abandoned") from None

#: Adaptive spin window after the last useful poll (seconds): start, floor, ceiling.
SPIN_START = 0.00005
SPIN_MIN = 0.00001
SPIN_MAX_NS = 300_000
SPIN_MAX = SPIN_MAX_NS / 1e9
#: Sleeps without spinning (spin found useless or the host contended) before a new probe.
SPIN_REPROBE = 64
#: First sleep once spinning stops; doubles up to IDLE_POLL_MAX.
IDLE_POLL_MIN = 0.00005
#: Longest sleep between polls of shared memory when idle.
IDLE_POLL_MAX = 0.002


class LoopStats:
    """What the loop did, cumulative (``info dataplane``): how often it went to sleep, and what
    its spin windows bought. Counted once per sleep or spin phase, never per command."""

    __slots__ = ("sleeps", "spins_found", "spins_expired", "spins_preempted")

    def __init__(self) -> None:
        #: Selects with a non-zero timeout: the thread gave up its CPU and had to be woken
        #: (or, polling mmap doorbells while idle, woke itself).
        self.sleeps = 0
        #: Spin phases that found work (a submission seen without a doorbell or a wake-up).
        self.spins_found = 0
        #: Spin phases that ended unused (the loop then slept).
        self.spins_expired = 0
        #: Spin phases that got under half a CPU (the host is contended): spinning stops.
        self.spins_preempted = 0


class TimerHandle:
    """A pending ``call_later`` callback; ``cancel()`` is safe from the IOThread only."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]):
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class IOThread:
    """A small event loop on a dedicated thread (see module docstring)."""

    def __init__(self, name: str, *, spin_max: float = SPIN_MAX):
        self.name = name
        #: Ceiling of the adaptive spin window (seconds); 0 never spins (the loop sleeps as
        #: soon as its pollers find nothing). A controller's ``poll-max-ns`` sets it.
        self.spin_max = spin_max
        self._selector = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake_fd, selectors.EVENT_READ, self._drain_wake)
        self._calls: list[Callable[[], Any]] = []
        self._calls_lock = threading.Lock()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_seq = itertools.count()
        self._pollers: list[Callable[[], bool]] = []
        #: ``before_sleep`` of each poller that has one (poller -> arm function).
        self._sleepers: dict[Callable[[], bool], Callable[[], bool]] = {}
        #: Pollers without a wake-up path: the loop must poll them periodically.
        self._periodic: set[Callable[[], bool]] = set()
        self.spin = min(SPIN_START, spin_max)
        self._spin_since: float | None = None
        self._spin_cpu0 = 0.0
        self._no_spin = 0
        self._armed = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._last_work = 0.0
        self._idle_sleep = IDLE_POLL_MIN
        self.stats = LoopStats()

    # ----------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"iothread {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"iothread-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and wait for the thread; callable from any thread, idempotent."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    def in_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def cpu_seconds(self) -> float:
        """CPU time the thread has used (readable from any thread); 0 when not running."""
        thread = self._thread
        ident = thread.ident if thread is not None else None
        if ident is None:
            return 0.0
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(ident))
        except OSError:  # the thread has just ended
            return 0.0

    # ------------------------------------------------ cross-thread requests
    def submit(self, fn: Callable[..., T], *args: Any) -> "concurrent.futures.Future[T]":
        """Run ``fn(*args)`` on the IOThread; the future carries its result or exception."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, never lost
                future.set_exception(exc)

        if self._thread is None or self.in_thread():
            call()
        else:
            self.call_soon(call)
        return future

    def run(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``submit`` and wait at most ``timeout`` (CALL_TIMEOUT) for the result
        (directly when already on the thread); ``IOThreadTimeout`` if it does not come."""
        future = self.submit(fn, *args)
        limit = CALL_TIMEOUT if timeout is None else timeout
        try:
            return future.result(limit)
        except TimeoutError:
            if future.done():
                raise  # fn itself raised a TimeoutError
            raise self._gave_up(future, fn, limit) from None

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """``run`` for asyncio callers (the monitor): awaits without blocking the loop."""
        name = getattr(fn, "__qualname__", None) or repr(fn)
        return await wait_future(self.submit(fn, *args), f"{name} on IOThread '{self.name}'", timeout)

    def _gave_up(self, future: "concurrent.futures.Future[Any]", fn: Callable[..., Any],
                 limit: float) -> IOThreadTimeout:
        future.cancel()  # if it has not started, it never will
        name = getattr(fn, "__qualname__", None) or repr(fn)
        log.warning("IOThread %s: %s not done within %g s", self.name, name, limit)
        return IOThreadTimeout(f"IOThread '{self.name}' did not answer within {limit:g} s "
                               f"(busy or stuck); {name} abandoned")

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Queue ``fn`` to run on the IOThread; thread-safe, never blocks. From the
        IOThread itself it runs after the current events, without a wakeup."""
        with self._calls_lock:
            self._calls.append(fn)
        if threading.current_thread() is not self._thread:
            self._wake()

    # ------------------------------------------------- IOThread-only API
    def call_later(self, delay: float, fn: Callable[[], Any]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(delay, 0.0), fn)
        heapq.heappush(self._timers, (handle.when, next(self._timer_seq), handle))
        if not self.in_thread():
            self._wake()
        return handle

    def add_reader(self, fd: int, callback: Callable[[], Any]) -> None:
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass

    def add_poller(self, poller: Callable[[], bool], *, before_sleep: Callable[[], bool] | None = None,
                   periodic: bool | None = None) -> None:
        """Poll ``poller`` while the loop spins. ``before_sleep`` (see module docstring) is
        called once before the loop sleeps; unless ``periodic`` (default: no ``before_sleep``)
        the loop then sleeps until an event instead of polling with back-off."""
        self._pollers.append(poller)
        if before_sleep is not None:
            self._sleepers[poller] = before_sleep
        if periodic if periodic is not None else before_sleep is None:
            self._periodic.add(poller)
        self.note_work()

    def remove_poller(self, poller: Callable[[], bool]) -> None:
        try:
            self._pollers.remove(poller)
        except ValueError:
            return
        self._sleepers.pop(poller, None)
        self._periodic.discard(poller)

    def note_work(self) -> None:
        """Tell the loop something happened, so pollers are looked at eagerly again."""
        self._last_work = time.monotonic()
        self._idle_sleep = IDLE_POLL_MIN
        self._armed = False

    def _spin_ended(self, now: float, gap: float | None) -> None:
        """A spin phase ended: with work found after ``gap`` seconds, or unused (None)."""
        wall = now - self._spin_since  # type: ignore[operator]
        cpu = time.thread_time() - self._spin_cpu0
        self._spin_since = None
        stats = self.stats
        if gap is not None:
            stats.spins_found += 1
        else:
            stats.spins_expired += 1
        if wall > 2 * SPIN_MIN and cpu < 0.5 * wall:
            stats.spins_preempted += 1
            self.spin = 0.0                     # pre-empted while spinning: sleep instead
            self._no_spin = SPIN_REPROBE
        elif gap is not None:
            self.spin = min(max(self.spin, 2 * gap), self.spin_max)
        elif self.spin > SPIN_MIN:
            self.spin /= 2
        else:
            self.spin = 0.0
            self._no_spin = SPIN_REPROBE

    # ---------------------------------------------------------------- loop
    def _wake(self) -> None:
        try:
            os.eventfd_write(self._wake_fd, 1)
        except OSError:
            pass

    def _drain_wake(self) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass

    def _timeout(self, now: float) -> float | None:
        timeout: float | None = None
        if self._pollers:
            if now - self._last_work < self.spin:
                timeout = 0.0
            elif self._periodic:
                timeout = self._idle_sleep
                self._idle_sleep = min(self._idle_sleep * 2, IDLE_POLL_MAX)
        if self._timers:
            until = max(self._timers[0][0] - now, 0.0)
            timeout = until if timeout is None else min(timeout, until)
        if self._calls:
            timeout = 0.0
        return timeout

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._iterate()
            except Exception:  # the loop's own bug: keep the data plane alive
                log.exception("iothread %s: unhandled exception", self.name)
        # Calls queued while stopping still run, so no submitted future is left pending.
        with self._calls_lock:
            calls, self._calls = self._calls, []
        for call in calls:
            self._guarded(call)
        self._selector.close()
        os.close(self._wake_fd)

    def _guarded(self, fn: Callable[[], Any]) -> Any:
        """Run one callback; an exception is logged and stays with it, so the
        calls, timers and pollers after it in the same iteration still run."""
        try:
            return fn()
        except Exception:
            log.exception("iothread %s: callback %r failed", self.name, fn)
            return None

    def _iterate(self) -> None:
        now = time.monotonic()
        timeout = self._timeout(now)
        if timeout != 0.0 and self._pollers:
            if self._spin_since is not None:
                self._spin_ended(now, None)
            if not self._armed:
                self._armed = True
                if self._no_spin:
                    self._no_spin -= 1
                    if not self._no_spin:
                        self.spin = min(SPIN_MIN, self.spin_max)
                for arm in list(self._sleepers.values()):
                    if self._guarded(arm):
                        timeout = 0.0
        if timeout != 0.0:
            self.stats.sleeps += 1
        events = self._selector.select(timeout)
        for key, _ in events:
            self._guarded(key.data)
        if self._calls:
            with self._calls_lock:
                calls, self._calls = self._calls, []
            for call in calls:
                self._guarded(call)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, handle = heapq.heappop(self._timers)
            if not handle.cancelled:
                self._guarded(handle.callback)
        worked = False
        for poller in list(self._pollers):
            if self._guarded(poller):
                worked = True
        if worked or events:
            if self._spin_since is not None:
                if worked and not events:
                    now = time.monotonic()
                    self._spin_ended(now, now - self._spin_since)   # the spin found the work
                else:
                    self._spin_since = None                         # an event would have woken us
            self.note_work()
        elif timeout == 0.0 and self._pollers and self._spin_since is None:
            self._spin_since = time.monotonic()
            self._spin_cpu0 = time.thread_time()
