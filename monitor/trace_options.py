"""``-trace`` on the command line, as QEMU spells it.

Accepted forms (repeatable; applied in order, states before the file is opened)::

    -trace PATTERN                  enable trace points matching the glob
    -trace -PATTERN                 disable them (QEMU: a leading '-' disables)
    -trace enable=PATTERN           same as PATTERN
    -trace events=FILE              patterns from FILE, one per line ('#' comments)
    -trace file=PATH                record every enabled trace point to PATH (msgpack)
    -trace enable=nvme_cmd_*,file=/tmp/t.msgpack   both at once

Why errors end the program: a typo in a pattern or an unwritable file would otherwise
silently record nothing, and the user finds out after the guest run.  Every problem is
one ``TraceError`` ("-trace: ...") that ``nvshell.main`` prints as ``nvshell: error:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nvshell.device.keyval import split_items
from nvshell.device.trace import TraceError

KEYS = ("enable", "events", "file")


@dataclass
class TraceOptions:
    """Parsed ``-trace`` options: ``(pattern, on)`` in order, and the last ``file=``."""

    patterns: list[tuple[str, bool]] = field(default_factory=list)
    file: str | None = None


def _split(text: str) -> list[str]:
    """Split on commas; ``,,`` is a literal comma (QemuOpts), so paths may contain one."""
    return split_items(text)


def _pattern(text: str, where: str) -> tuple[str, bool]:
    on = not text.startswith("-")
    glob = text if on else text[1:]
    if not glob:
        raise TraceError(f"-trace: empty trace event pattern{where}")
    return glob, on


def read_events_file(path: str) -> list[tuple[str, bool]]:
    """QEMU's ``events=FILE``: one pattern per line, blank lines and '#' comments skipped."""
    try:
        with open(path, encoding="utf-8") as fp:
            lines = fp.read().splitlines()
    except OSError as exc:
        raise TraceError(f"-trace: cannot read events file '{path}': {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TraceError(f"-trace: events file '{path}' is not text") from exc
    out = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(_pattern(line, f" in {path} line {n}"))
    return out


def parse_trace_options(options: list[str]) -> TraceOptions:
    """Parse every ``-trace`` argument; raises ``TraceError`` on the first bad one."""
    parsed = TraceOptions()
    for option in options:
        if not option:
            raise TraceError("-trace: empty argument (expected PATTERN, enable=, events= or file=)")
        for n, item in enumerate(_split(option)):
            key, eq, value = item.partition("=")
            if not eq:
                if n != 0:
                    raise TraceError(f"-trace: expected KEY=VALUE after the first item, got '{item}' "
                                     f"(keys: {', '.join(KEYS)})")
                key, value = "enable", item
            if key not in KEYS:
                raise TraceError(f"-trace: unknown option '{key}' (expected one of: {', '.join(KEYS)})")
            if key == "enable":
                parsed.patterns.append(_pattern(value, ""))
            elif key == "events":
                if not value:
                    raise TraceError("-trace: events= needs a file name")
                parsed.patterns.extend(read_events_file(value))
            else:
                if not value:
                    raise TraceError("-trace: file= needs a path")
                parsed.file = value
    return parsed


def apply_trace_options(ctx: Any, options: list[str]) -> TraceOptions:
    """Parse and apply ``-trace`` arguments to the monitor context's tracing.

    Also installs the context's ``Tracing`` (latency statistics sink) even with no
    options, so ``info latency`` works for anything enabled later.  Every pattern must
    match at least one trace point."""
    from nvshell.monitor.commands_tracing import tracing_of

    parsed = parse_trace_options(options)
    tracing = tracing_of(ctx)
    for glob, on in parsed.patterns:
        if not tracing.registry.list(glob):
            raise TraceError(f"-trace: no trace events found matching '{glob}' "
                             f"(see 'info trace-events' for the list)")
    for glob, on in parsed.patterns:
        tracing.registry.set_state(glob, on)
    if parsed.file is not None:
        try:
            tracing.file_on(parsed.file)
        except TraceError as exc:
            raise TraceError(f"-trace: {exc}") from exc
    return parsed
