"""Per-namespace SMART / Health Information (Get Log Page 02h with an NSID; LPA bit 0).

The NVM read and write handlers count bytes and commands per namespace here
(``count_read`` / ``count_write``), next to the controller-wide tallies in
``ctrl.stats``. The counters belong to the namespace, so a shared namespace
reports the I/O of every controller that reached it. Fields that have no
per-namespace meaning (temperature, power cycles, power-on hours, unsafe
shutdowns, critical warning) report the controller's values.
"""

from __future__ import annotations

import weakref
from typing import Any

from nvshell.device.nvme.admin_log import SMART_LOG, smart_log, u128


class NamespaceStats:
    __slots__ = ("bytes_read", "bytes_written", "read_commands", "write_commands", "media_errors",
                 "__weakref__")

    def __init__(self) -> None:
        self.bytes_read = 0
        self.bytes_written = 0
        self.read_commands = 0
        self.write_commands = 0
        self.media_errors = 0


#: id(namespace) -> its counters. Keyed by id, not by a weak key: the I/O handlers look it up
#: for every command, and a plain dict lookup costs a fraction of a WeakKeyDictionary's (which
#: builds a weakref per lookup). A finalizer drops the entry when the namespace goes.
_STATS: dict[int, NamespaceStats] = {}


def ns_stats(ns: Any) -> NamespaceStats:
    stats = _STATS.get(id(ns))
    if stats is None:
        stats = _STATS[id(ns)] = NamespaceStats()
        weakref.finalize(ns, _STATS.pop, id(ns), None)
    return stats


def count_read(ns: Any, nbytes: int) -> None:
    stats = _STATS.get(id(ns)) or ns_stats(ns)
    stats.bytes_read += nbytes
    stats.read_commands += 1


def count_write(ns: Any, nbytes: int) -> None:
    stats = _STATS.get(id(ns)) or ns_stats(ns)
    stats.bytes_written += nbytes
    stats.write_commands += 1


def count_media_error(ns: Any) -> None:
    ns_stats(ns).media_errors += 1


def namespace_smart_log(ctrl: Any, ns: Any) -> bytes:
    """The SMART page of ``ns``: its own I/O counters over the controller's page."""
    from nvshell.device.nvme.controller import SmartStats
    stats = ns_stats(ns)
    page = bytearray(smart_log(ctrl))
    SMART_LOG.pack_into(
        page, 0, **{**SMART_LOG.unpack(page)._asdict(),
                    "data_units_read": u128(SmartStats.data_units(stats.bytes_read)),
                    "data_units_written": u128(SmartStats.data_units(stats.bytes_written)),
                    "host_read_commands": u128(stats.read_commands),
                    "host_write_commands": u128(stats.write_commands),
                    "media_errors": u128(stats.media_errors)})
    return bytes(page)
