"""HMP ``info iostat [interval] [device]``: ``x-nvme-query-iostat`` as a table with sparklines.

One table per call (script mode, ``human-monitor-command``, a remote shell); the interactive
shell turns ``info iostat INTERVAL`` into a full-screen view that re-runs this command every
INTERVAL seconds (``nvshell/iostat_view.py``), so the local and the ``--connect`` shell show
the very same text.
"""

from __future__ import annotations

from typing import Any

from nvshell.monitor.hmp import HMPError, info_command, qmp

#: Eight heights; a second with no I/O is a blank, so idle time shows as a gap.
SPARK = "▁▂▃▄▅▆▇█"


#: Seconds of history per sparkline character: the last minute in 30 columns.
SPARK_SECONDS = 2
SPARK_WIDTH = 30


def sparkline(values: list[float], width: int = SPARK_WIDTH, per_char: int = SPARK_SECONDS) -> str:
    """The last ``width * per_char`` per-second values, ``per_char`` averaged into each character,
    scaled to the largest; right-aligned so the newest is always in the last column."""
    vals = values[-width * per_char:]
    vals = vals[len(vals) % per_char:]  # whole groups, ending with the newest second
    cells = [sum(vals[i:i + per_char]) / per_char for i in range(0, len(vals), per_char)]
    top = max(cells, default=0.0)
    if top <= 0:
        return " " * width
    line = "".join(" " if v <= 0 else SPARK[round(v / top * (len(SPARK) - 1))] for v in cells)
    return line.rjust(width)


def _num(v: float) -> str:
    if v >= 100_000:
        return f"{v / 1000:.0f}k"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def _lat(us: int | None) -> str:
    if us is None:
        return "-"
    if us >= 1_000_000:
        return f"<{us / 1_000_000:g}s"
    if us >= 1000:
        return f"<{us / 1000:g}ms"
    return f"<{us}us"


def render_iostat(data: dict[str, Any]) -> str:
    """The table: a controller line (all its I/O queues), then one line per queue (~100 columns)."""
    header = (f"{'device':<8} {'queue':<5} {'IOPS':>7} {'r/s':>6} {'w/s':>6} {'MB/s':>7} {'occ':>7} "
              f"{'p50':>6} {'p99':>6}  last minute, {SPARK_SECONDS} s/char")
    lines = [f"I/O over the last {data['interval']:g} s", header]
    for dev in data["devices"]:
        lines.append(f"{dev['device']:<8} {'all':<5} {_num(dev['iops']):>7} {_num(dev['read-iops']):>6} "
                     f"{_num(dev['write-iops']):>6} {dev['mbps']:>7.2f} {'':>7} {_lat(dev.get('p50-us')):>6} "
                     f"{_lat(dev.get('p99-us')):>6}  |{sparkline(dev['history'])}|")
        for q in dev["queues"]:
            occ = f"{q['occupancy']}/{q['size']}"
            lines.append(f"{'':<8} {'q' + str(q['qid']):<5} {_num(q['iops']):>7} {'':>6} {'':>6} "
                         f"{q['mbps']:>7.2f} {occ:>7} {_lat(q.get('p50-us')):>6} {_lat(q.get('p99-us')):>6}  "
                         f"|{sparkline(q['history'])}|")
    if not data["devices"]:
        lines.append("(no controllers)")
    return "\n".join(lines)


@info_command("iostat", "interval? device?",
              help="I/O rates per controller and queue (IOPS, MB/s, occupancy, p50/p99, last minute); "
                   "in the shell, with an interval: a live view refreshed every interval seconds",
              complete={"device": "device-id"})
async def info_iostat(ctx: Any, args: dict[str, Any]) -> str:
    qargs: dict[str, Any] = {}
    if args["interval"] is not None:
        try:
            qargs["interval"] = float(args["interval"])
        except ValueError:
            raise HMPError(f"info iostat: interval must be a number of seconds, not '{args['interval']}'") from None
    if args["device"]:
        qargs["device"] = args["device"]
    return render_iostat(await qmp(ctx, "x-nvme-query-iostat", qargs))
