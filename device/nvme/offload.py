"""Backend I/O off the IOThread: a worker pool per controller, completing through ``complete``.

A Read, Write or Flush on a backend that may block (``Backend.blocking``: files
and block devices) must not stall the controller's queues: a QD32 workload on
a file namespace keeps 32 I/Os in flight. The handler validates and maps the
command on the IOThread as usual, then hands the data movement to ``submit``:
a worker runs it (``preadv``/``pwritev``/``fdatasync`` release the GIL), and
the command completes on the IOThread through the deferred-completion path
(``ctrl.complete``), in whatever order the I/Os finish.

Guest-memory views live in the worker while its I/O runs, so a DMA unmap waits
for in-flight work first (``drain``, called from ``dma_unmapping``); a reset
does not wait: the completions of a reset controller find their commands gone
and are dropped, as for any deferred command.

Flush semantics are unchanged: a Flush covers every write *completed* before
it was submitted (those writes finished their ``pwritev`` before their CQE was
posted), and FUA writes sync before completing.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

from nvshell.device.memory import MemoryFault
from nvshell.device.nvme.commands import DEFERRED, Command
from nvshell.device.nvme.status import NvmeError, Status

if TYPE_CHECKING:
    from nvshell.device.nvme.controller import Controller

log = logging.getLogger(__name__)

#: Workers per controller: enough for a QD32 job to keep a disk busy; threads cost
#: nothing while idle.
DEFAULT_WORKERS = 16


class BackendWorkers:
    """The worker pool of one controller (created on first use)."""

    def __init__(self, ctrl: "Controller", workers: int = DEFAULT_WORKERS):
        self.ctrl = ctrl
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._cond = threading.Condition()
        self._running = 0
        #: Most I/Os ever in flight at once (tests, statistics).
        self.max_in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._running

    def submit(self, cmd: Command, work: Callable[[], None]) -> object:
        """Run ``work`` on a worker and complete ``cmd`` with its outcome; returns DEFERRED."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"nvme-io-{self.ctrl.name}")
        with self._cond:
            self._running += 1
            self.max_in_flight = max(self.max_in_flight, self._running)
        self._pool.submit(self._run, cmd, work)
        return DEFERRED

    def _run(self, cmd: Command, work: Callable[[], None]) -> None:
        status, dnr = 0, False
        try:
            work()
        except NvmeError as exc:
            status, dnr = int(exc.status), exc.dnr
        except MemoryFault:
            status = int(Status.DATA_TRANSFER_ERROR)
        except Exception:
            log.exception("controller %d: backend I/O of cid %d failed", self.ctrl.cntlid, cmd.cid)
            status, dnr = int(Status.INTERNAL_ERROR), True
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
        io = self.ctrl.iothread
        if io is not None:
            io.call_soon(lambda: self.ctrl.complete(cmd, status, dnr))

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until no worker holds guest memory (before a DMA unmap); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._running == 0, timeout)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
