"""Record trace events to a file (``-trace file=PATH``), off the data path.

Why a writer thread: a sink runs on the emitting IOThread, and a ``write()`` there
would put disk latency into every traced command.  The sink only appends the record
to a list under a lock; a writer thread wakes every ``interval`` seconds (or sooner,
when ``batch`` records are waiting), packs the batch with msgpack (one map per record:
``name``, ``ts`` in ns, and the trace point's fields, concatenated with no framing)
and writes it in one call.  ``close()`` writes everything still queued, so nothing
is lost on a clean shutdown.

Errors: a path that cannot be opened raises ``TraceError`` at construction; a later
write error (disk full) is logged once, counted in ``write_errors``, and the records
of that batch are counted in ``dropped``.  ``nvtrace`` (``device.trace_decode``)
reads the files back, also while they are still being written.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, BinaryIO

import msgpack

from nvshell.device.trace import Record, TraceError

log = logging.getLogger(__name__)


class TraceFileWriter:
    """A trace sink appending msgpack records to ``path`` from a background thread."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False,
                 interval: float = 0.05, batch: int = 4096, max_pending: int = 1_000_000):
        self.path = os.fspath(path)
        try:
            # Unbuffered: each batch is one write() we control, so a failed batch is
            # never retried behind our back by a buffer flush.
            self._file: BinaryIO = open(self.path, "ab" if append else "wb", buffering=0)
            self._offset = os.fstat(self._file.fileno()).st_size
        except OSError as e:
            raise TraceError(f"Could not open trace file '{self.path}': {e.strerror or e}") from e
        self.interval = interval
        self.batch = batch
        self.max_pending = max_pending
        self._pending: list[Record] = []
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._closed = False
        self._flush_requested = False
        self._accepted = 0  # records queued so far
        self._done = 0  # records the writer finished with (written or dropped)
        #: Records written to the file (after close: all accepted records, unless errors).
        self.written = 0
        #: Records lost: queue overflow, records emitted after close, failed writes.
        self.dropped = 0
        #: Failed write() calls (the first one is logged).
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name=f"trace-file:{os.path.basename(self.path)}",
                                        daemon=True)
        self._thread.start()

    # -- the sink (runs on the emitting thread) ----------------------------------------
    def __call__(self, record: Record) -> None:
        with self._cond:
            if self._closing or len(self._pending) >= self.max_pending:
                self.dropped += 1
                return
            self._pending.append(record)
            self._accepted += 1
            if len(self._pending) == self.batch:
                self._cond.notify()

    # -- the writer thread ---------------------------------------------------------------
    def _take(self) -> tuple[list[Record], bool]:
        with self._cond:
            if not self._closing and not self._flush_requested and len(self._pending) < self.batch:
                self._cond.wait(self.interval)
            self._flush_requested = False
            batch, self._pending = self._pending, []
            return batch, self._closing

    def _run(self) -> None:
        packer = msgpack.Packer(default=_fallback)
        while True:
            batch, closing = self._take()
            if batch:
                self._write(packer, batch)
            if closing:
                # close() set _closing under the lock, so no record can arrive after this
                # swap; one last take picks up anything queued between the two.
                with self._cond:
                    rest, self._pending = self._pending, []
                if rest:
                    self._write(packer, rest)
                return

    def _write(self, packer: msgpack.Packer, batch: list[Record]) -> None:
        chunks = []
        bad = 0
        for record in batch:
            try:
                chunks.append(packer.pack(record))
            except Exception as e:  # noqa: BLE001 - a bad record must not kill the thread
                bad += 1
                if bad == 1:
                    log.warning("trace file %s: record %r skipped: %s", self.path, record.get("name"), e)
        data = memoryview(b"".join(chunks))
        try:
            done = 0
            while done < len(data):
                done += self._file.write(data[done:]) or 0
            self._offset += done
            ok = len(chunks)
        except OSError as e:
            ok = 0
            self._cut_partial_batch()
            self.write_errors += 1
            if self.write_errors == 1:
                log.error("trace file %s: write failed, records are being dropped: %s", self.path, e)
        with self._cond:
            self.written += ok
            self.dropped += len(batch) - ok
            self._done += len(batch)
            self._cond.notify_all()

    def _cut_partial_batch(self) -> None:
        """Best effort: drop the bytes of a half-written batch so the file stays decodable."""
        try:
            if os.fstat(self._file.fileno()).st_size > self._offset:
                os.ftruncate(self._file.fileno(), self._offset)
        except OSError:
            pass

    # -- lifecycle -----------------------------------------------------------------------
    def flush(self, timeout: float = 5.0) -> bool:
        """Write what was queued before the call now; wait for it (True if done in time)."""
        with self._cond:
            target = self._accepted
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target or not self._thread.is_alive(), timeout)

    def close(self) -> None:
        """Write every queued record, stop the thread and close the file (idempotent).

        Remove the writer from the registry first (``TRACE.remove_sink(writer)``);
        records arriving after ``close`` are counted in ``dropped``.
        """
        if self._closed:
            return
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        self._closed = True
        try:
            self._file.close()
        except OSError as e:
            self.write_errors += 1
            log.error("trace file %s: close failed: %s", self.path, e)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "TraceFileWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<TraceFileWriter {self.path!r} written={self.written} dropped={self.dropped}>"


def _fallback(obj: Any) -> Any:
    """msgpack ``default``: enums, bytes-likes and anything else become plain values."""
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, int):  # IntEnum subclasses are packed already; plain safety
        return int(obj)
    return str(obj)
