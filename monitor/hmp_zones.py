"""The shell's ``info zones NS [start] [count]``: a thin view of ``x-nvme-query-zones``."""

from __future__ import annotations

from typing import Any

from nvshell.monitor import format as fmt
from nvshell.monitor.hmp import info_command, qmp


def _limit(value: int) -> str:
    return str(value) if value else "no limit"


def format_zones(r: dict[str, Any]) -> str:
    """Header (geometry, resources, counts by state), then one row per zone (LBAs in hex,
    as ``blkzone report`` and ``nvme zns report-zones`` print them)."""
    head = (f"{r['id']} (nsid {r['nsid']}): {r['nr-zones']} zones of {r['zone-size']} blocks, capacity "
            f"{r['zone-capacity']} blocks, lba-size {r['lba-size']}; open {r['open']} (max "
            f"{_limit(r['max-open'])}), active {r['active']} (max {_limit(r['max-active'])})\n")
    counts = ", ".join(f"{name} {n}" for name, n in r["counts"].items() if n) + "\n"
    rows = [[z["zone"], f"{z['zslba']:#x}", z["state"], f"{z['wp']:#x}", f"{z['zcap']:#x}",
             f"{z['attrs']:#x}" if z["attrs"] else "-"] for z in r["zones"]]
    return head + counts + fmt.format_table(["zone", "zslba", "state", "wp", "zcap", "attrs"], rows)


@info_command("zones", "namespace start? count?", params="NAMESPACE [start] [count]",
              help="show the zones of a zoned namespace (by id or NSID), from zone 'start'",
              complete={"namespace": "object-id"})
async def info_zones(ctx: Any, args: dict[str, Any]) -> str:
    qargs: dict[str, Any] = {"namespace": args["namespace"]}
    for key in ("start", "count"):
        if args[key] is not None:
            qargs[key] = args[key]
    return format_zones(await qmp(ctx, "x-nvme-query-zones", qargs))
