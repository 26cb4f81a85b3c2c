"""Controller health and settings: SMART counters, the Error Information log, Features.

Plain data the command engine updates and the admin handlers read (SMART /
Error log pages, Get/Set Features); kept apart from the controller so the log
and feature handlers depend on these classes, not on the controller's parts.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nvshell.device.nvme.commands import Command


class SmartStats:
    """Counters behind the SMART / Health Information log page.

    Byte tallies are kept exact; the log page handler converts them to the
    spec's "data units" (1000 x 512 bytes, rounded up).
    """

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_written = 0
        self.host_read_commands = 0
        self.host_write_commands = 0
        #: Nanoseconds spent processing I/O commands (Controller Busy Time is in minutes).
        self.busy_ns = 0
        self.power_cycles = 1
        self.unsafe_shutdowns = 0
        self.media_errors = 0
        self.critical_warning = 0
        #: Composite temperature in Kelvin (constant: there is no thermal model).
        self.temperature = 323
        #: time.monotonic() at power on: Power On Hours = (now - this) / 3600.
        self.power_on_base = time.monotonic()

    def add_read(self, nbytes: int, cmd: "Command | None" = None) -> None:
        """Count ``nbytes`` read; ``cmd`` carries them to its SQ's tallies (``Command.nbytes``)."""
        self.bytes_read += nbytes
        if cmd is not None:
            cmd.nbytes = nbytes

    def add_write(self, nbytes: int, cmd: "Command | None" = None) -> None:
        self.bytes_written += nbytes
        if cmd is not None:
            cmd.nbytes = nbytes

    @staticmethod
    def data_units(nbytes: int) -> int:
        return (nbytes + 512_000 - 1) // 512_000

    @property
    def data_units_read(self) -> int:
        return self.data_units(self.bytes_read)

    @property
    def data_units_written(self) -> int:
        return self.data_units(self.bytes_written)

    @property
    def power_on_hours(self) -> int:
        return int((time.monotonic() - self.power_on_base) // 3600)

    @property
    def busy_minutes(self) -> int:
        return self.busy_ns // 60_000_000_000


@dataclass(frozen=True)
class ErrorLogEntry:
    """One Error Information log entry (the log page handler packs it)."""

    error_count: int
    sqid: int
    cid: int
    #: Status value ((SCT << 8) | SC) and its DNR bit.
    status: int
    dnr: bool
    nsid: int = 0
    lba: int = 0
    #: Parameter Error Location (FFFFh = not known).
    param_loc: int = 0xFFFF
    cmd_specific: int = 0


class ErrorLog:
    """Ring of the last ``capacity`` failed commands (Identify ELPE = capacity - 1)."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        #: Errors ever recorded: the Error Count of the newest entry, and SMART's
        #: "Number of Error Information Log Entries".
        self.error_count = 0
        self._ring: deque[ErrorLogEntry] = deque(maxlen=capacity)

    def record(self, sqid: int, cid: int, status: int, dnr: bool = False, *, nsid: int = 0, lba: int = 0,
               param_loc: int = 0xFFFF, cmd_specific: int = 0) -> ErrorLogEntry:
        self.error_count += 1
        entry = ErrorLogEntry(self.error_count, sqid, cid, int(status), dnr, nsid, lba, param_loc, cmd_specific)
        self._ring.append(entry)
        return entry

    def entries(self) -> list[ErrorLogEntry]:
        """Newest first, as the log page lists them."""
        return list(reversed(self._ring))

    def clear(self) -> None:
        self._ring.clear()

    def __len__(self) -> int:
        return len(self._ring)


@dataclass
class Features:
    """Current values of the Set/Get Features attributes (admin_features.py).

    Other modules read them: Identify looks at nothing here, but Flush and the
    Write path consult ``volatile_wc``; the SMART log uses the thresholds.
    """

    arbitration: int = 0x7                  # AB=111b: no burst limit
    power_state: int = 0                    # PS | WH << 5
    #: (TMPSEL, THSEL) -> Kelvin; THSEL 0 = over, 1 = under. Only TMPSEL 0 (composite).
    temp_over: int = 0x157                  # 343 K = 70 C
    temp_under: int = 0
    #: Error Recovery is namespace specific: nsid -> TLER (100 ms units); DULBE unsupported.
    error_recovery: dict[int, int] = field(default_factory=dict)
    volatile_wc: bool = True
    int_coalescing: int = 0                 # THR | TIME << 8 (applied by interrupts.py)
    #: vector -> Coalescing Disable bit.
    int_vector_cd: dict[int, bool] = field(default_factory=dict)
    write_atomicity: int = 0
    async_event_config: int = 0
    #: Host's timestamp in ms and the monotonic time it was set (None: since reset).
    timestamp_ms: int = 0
    timestamp_set_at: float | None = None
    timestamp_base: float = field(default_factory=time.monotonic)
    host_behavior: bytes = bytes(512)
    #: Number of Queues requested by the host (0-based NSQR, NCQR), or None.
    num_queues_requested: tuple[int, int] | None = None
    #: Keep Alive Timeout in ms (0: no timer); ``admin_keepalive`` runs the timer.
    keep_alive_ms: int = 0

    def timestamp_now(self) -> tuple[int, int]:
        """(milliseconds, origin): origin 1 if the host set it, else 0 (since reset)."""
        now = time.monotonic()
        if self.timestamp_set_at is None:
            return int((now - self.timestamp_base) * 1000) & 0xFFFFFFFFFFFF, 0
        return (self.timestamp_ms + int((now - self.timestamp_set_at) * 1000)) & 0xFFFFFFFFFFFF, 1
