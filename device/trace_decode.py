"""Read trace files written by ``TraceFileWriter``: the reader behind ``nvtrace`` (``nvshell.nvtrace``).

Why a module and not just a script: the tests (and the shell, should it want to replay
a recording) use the same reader, filters and summary without a subprocess.

A trace file is a plain concatenation of msgpack maps.  ``iter_records`` feeds a
``msgpack.Unpacker`` chunk by chunk, so a record split across two reads (a file being
written, ``--follow``) simply waits for the rest of its bytes.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections import Counter, defaultdict
from typing import IO, Any, Callable, Iterable, Iterator

import msgpack

from nvshell.device.trace import Record, format_record, percentile

CHUNK = 65536


class TraceDecodeError(Exception):
    """The file is not a trace file, or it ends in the middle of a record."""


def iter_records(source: IO[bytes] | str, *, follow: bool = False, poll: float = 0.1,
                 stop: Callable[[], bool] | None = None) -> Iterator[Record]:
    """Yield each record (a dict) of a trace file, in file order.

    ``follow``: at end of file, wait ``poll`` seconds and read again, forever (or until
    ``stop()`` returns true); a partial last record waits for its remaining bytes.
    Without ``follow``, a partial last record raises ``TraceDecodeError`` after every
    complete record has been yielded.
    """
    if isinstance(source, str):
        with open(source, "rb") as fp:
            yield from iter_records(fp, follow=follow, poll=poll, stop=stop)
        return
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    fed = 0
    consumed = 0  # end of the last complete record (tell() also counts a partial one)
    index = 0
    while True:
        chunk = source.read(CHUNK)
        if chunk:
            unpacker.feed(chunk)
            fed += len(chunk)
            try:
                for obj in unpacker:
                    if not isinstance(obj, dict):
                        raise TraceDecodeError(f"record {index} at byte {unpacker.tell()} is not a map "
                                               f"(not an nvshell trace file?)")
                    index += 1
                    consumed = unpacker.tell()
                    yield obj
            except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
                raise TraceDecodeError(f"corrupt trace data after record {index}: {e}") from e
            continue
        if not follow:
            left = fed - consumed
            if left:
                raise TraceDecodeError(f"truncated record at end of file ({left} bytes after record {index})")
            return
        if stop is not None and stop():
            return
        time.sleep(poll)


def filter_names(records: Iterable[Record], glob: str | None) -> Iterator[Record]:
    """Only records whose trace point name matches the fnmatch ``glob`` (all if None)."""
    for r in records:
        if glob is None or fnmatch.fnmatchcase(str(r.get("name", "")), glob):
            yield r


def to_json(record: Record) -> str:
    """One JSON line; bytes values as hex strings."""
    return json.dumps(record, default=lambda o: o.hex() if isinstance(o, bytes) else str(o))


class Summary:
    """Counts per trace point, and latency per opcode / per queue from ``nvme_cmd_complete``.

    Keeps every latency (offline tool: exact percentiles matter more than memory).
    """

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()
        self.by_opcode: dict[str, list[float]] = defaultdict(list)
        self.by_queue: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()

    def feed(self, record: Record) -> None:
        name = str(record.get("name", "?"))
        self.names[name] += 1
        if name != "nvme_cmd_complete":
            return
        lat = float(record.get("lat_us", 0.0))
        opcode = str(record.get("opcode", "?"))
        self.by_opcode[opcode].append(lat)
        self.by_queue[(str(record.get("ctrl", "")), int(record.get("qid", -1)))].append(lat)
        if record.get("status", "success") != "success":
            self.errors[opcode] += 1

    @staticmethod
    def stats(values: list[float]) -> dict[str, float]:
        s = sorted(values)
        return {"count": len(s), "p50": percentile(s, 50), "p90": percentile(s, 90),
                "p99": percentile(s, 99), "max": s[-1] if s else 0.0}

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": dict(sorted(self.names.items())),
            "opcodes": {op: {**self.stats(v), "errors": self.errors[op]} for op, v in sorted(self.by_opcode.items())},
            "queues": {f"{c}:{q}" if c else str(q): self.stats(v) for (c, q), v in sorted(self.by_queue.items())},
        }

    def render(self) -> str:
        d = self.as_dict()
        lines = ["events:"]
        lines += [f"  {name:<24} {n:>10}" for name, n in d["events"].items()]
        for title, key in (("latency per opcode (us):", "opcodes"), ("latency per queue (us):", "queues")):
            if not d[key]:
                continue
            lines.append(title)
            lines.append(f"  {'':<16} {'count':>10} {'p50':>10} {'p90':>10} {'p99':>10} {'max':>10}")
            for label, s in d[key].items():
                lines.append(f"  {label:<16} {s['count']:>10} {s['p50']:>10.1f} {s['p90']:>10.1f} "
                             f"{s['p99']:>10.1f} {s['max']:>10.1f}"
                             + (f"  errors={s['errors']}" if s.get("errors") else ""))
        return "\n".join(lines)
