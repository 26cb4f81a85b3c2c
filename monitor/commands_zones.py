"""``x-nvme-query-zones``: the zones of a zoned namespace, for ``info zones`` and scripts.

Why a QMP command: the shell, a remote shell and QMP clients read the same data
(geometry, open/active counts, zones by state, and per zone its start, state,
write pointer and capacity); ``monitor/hmp_zones.py`` only formats it.
"""

from __future__ import annotations

from typing import Any

from nvshell.monitor.errors import DeviceNotFound, GenericError
from nvshell.monitor.registry import Arg, qmp_command

TYPE_NS = "x-nvme-ns"
TYPE_NS_ZONED = "x-nvme-ns-zoned"


def _machine(ctx: Any) -> Any:
    machine = ctx.machine
    if machine is None:
        raise GenericError("No machine is attached to this monitor")
    return machine


def find_zoned(m: Any, name: Any) -> Any:
    """The namespace object with id ``name``, else the only one with NSID ``name``."""
    namespaces = [o for o in m.objects() if o.is_a(TYPE_NS)]
    obj = next((o for o in namespaces if o.id == str(name)), None)
    if obj is None and str(name).isdigit():
        same = [o for o in namespaces if o.model is not None and o.model.nsid == int(name)]
        if len(same) > 1:
            raise GenericError(f"NSID {name} exists in several subsystems: "
                               f"name the namespace by id ({', '.join(o.id or '' for o in same)})")
        obj = same[0] if same else None
    if obj is None:
        raise DeviceNotFound(f"Namespace '{name}' not found")
    if not obj.is_a(TYPE_NS_ZONED) or obj.model is None or getattr(obj.model, "zones", None) is None:
        raise GenericError(f"Namespace '{name}' is not a zoned namespace")
    return obj


def _int_arg(args: dict, name: str, default: int | None) -> int | None:
    value = args.get(name)
    if value is None:
        return default
    try:
        number = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise GenericError(f"Parameter '{name}' expects an integer, got '{value}'") from None
    if isinstance(value, bool) or number < 0:
        raise GenericError(f"Parameter '{name}' expects a non-negative integer, got '{value}'")
    return number


@qmp_command("x-nvme-query-zones",
             args=[Arg("namespace", "any", doc="namespace id, or its NSID"),
                   Arg("start", "any", True, "first zone (index, default 0)"),
                   Arg("count", "any", True, "number of zones (default: all from start)")],
             returns="any")
def query_zones(ctx: Any, args: dict) -> dict[str, Any]:
    """Zone geometry, open/active resources in use, zone counts by state, and from zone
    ``start`` up to ``count`` zones: index, zslba, state, wp, zcap, attrs."""
    obj = find_zoned(_machine(ctx), args["namespace"])
    start = _int_arg(args, "start", 0)
    count = _int_arg(args, "count", None)
    try:
        report = obj.model.zone_report(start, count)
    except ValueError as exc:
        raise GenericError(str(exc)) from None
    report["id"] = obj.id
    return report
