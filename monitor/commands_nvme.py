"""``x-`` QMP commands behind the HMP ``info`` views (and the shell's toolbar/completion).

Why QMP commands and not direct Machine calls in the HMP layer: the remote shell gets the
same data over the socket, and scripts can consume it as JSON.  Results are plain data;
``monitor/format.py`` turns them into text.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.iothread import wait_future
from nvshell.device.keyval import BOOL_CHOICES
from nvshell.device.qom.properties import BoolType, EnumType, IntType, ListType
from nvshell.monitor.errors import GenericError
from nvshell.monitor.jsonify import jsonable
from nvshell.monitor.registry import Arg, qmp_command, qmp_event

TYPE_SUBSYSTEM = "x-nvme-subsystem"
TYPE_NS = "x-nvme-ns"
TYPE_CTRL = "x-nvme-ctrl"


def _machine(ctx: Any) -> Any:
    machine = ctx.machine
    if machine is None:  # a monitor context built without a machine
        raise GenericError("No machine is attached to this monitor")
    return machine


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """A property's JSON value, or ``default`` when it cannot be read (never fails a query)."""
    try:
        return obj.get_json(name)
    except Exception:
        return default


def _props(obj: Any) -> list[dict[str, Any]]:
    """Every declared (non-child) property with its JSON value, for ``info qtree``."""
    out = []
    for p in obj.list_properties():
        if p.name == "type" or str(p.qom_type).startswith("child<"):
            continue
        try:
            value = obj.get_json(p.name)
        except Exception as exc:
            value = f"<error: {exc}>"
        out.append({"name": p.name, "value": value})
    return out


def _name(obj: Any) -> str:
    return obj.id or obj.path()


def _subsystem_of(obj: Any) -> Any:
    """The subsystem object of a namespace or controller (its ``subsys`` link)."""
    return obj.get("subsys")


# ---------------------------------------------------------------------------------------
# x-query-qtree


def _ctrl_node(ctrl: Any, namespaces: list[Any]) -> dict[str, Any]:
    attached = [ns for ns in namespaces if _name(ctrl) in (_get(ns, "attached") or [])]
    refs = [{"type": ns.typename, "id": _name(ns), "nsid": _get(ns, "nsid")} for ns in attached]
    return {"type": ctrl.typename, "id": _name(ctrl), "props": _props(ctrl),
            "buses": [{"name": _name(ctrl), "type": "nvme-bus", "devices": [], "refs": refs}]}


@qmp_command("x-query-qtree", returns="any")
def query_qtree(ctx: Any, args: dict) -> dict[str, Any]:
    """The device tree for ``info qtree``: subsystems, their namespaces and controllers;
    each controller's bus references the namespaces attached to it."""
    m = _machine(ctx)
    objects, devices = m.objects(), m.devices()
    subsystems = [o for o in objects if o.is_a(TYPE_SUBSYSTEM)]
    namespaces = [o for o in objects if o.is_a(TYPE_NS)]
    ctrls = [d for d in devices if d.is_a(TYPE_CTRL)]
    root: list[dict[str, Any]] = []
    placed: set[int] = set()
    for sub in subsystems:
        nss = [ns for ns in namespaces if _subsystem_of(ns) is sub]
        cs = [c for c in ctrls if _subsystem_of(c) is sub]
        placed.update(id(x) for x in nss + cs)
        devs = [{"type": ns.typename, "id": _name(ns), "props": _props(ns), "buses": []} for ns in nss]
        devs += [_ctrl_node(c, nss) for c in cs]
        root.append({"type": sub.typename, "id": _name(sub), "props": _props(sub),
                     "buses": [{"name": _name(sub), "type": "x-nvme-subsys-bus", "devices": devs}]})
    for d in devices:  # devices outside any subsystem (other device types)
        if id(d) not in placed:
            root.append(_ctrl_node(d, []) if d.is_a(TYPE_CTRL) else
                        {"type": d.typename, "id": _name(d), "props": _props(d), "buses": []})
    return {"name": "main-system-bus", "type": "System", "devices": root}


# ---------------------------------------------------------------------------------------
# namespaces, controllers, queues


def namespace_info(ns: Any) -> dict[str, Any]:
    sub = _subsystem_of(ns)
    info: dict[str, Any] = {}
    model = ns.model
    if model is not None:  # None while the namespace is being created or deleted
        try:
            info.update(model.info())
        except Exception:  # never fail a query
            pass
    info.update({"id": _name(ns), "type": ns.typename, "subsystem": _name(sub) if sub is not None else None,
                 "nsid": _get(ns, "nsid"), "attached": _get(ns, "attached") or []})
    info.setdefault("lba-size", _get(ns, "lba-size"))
    info.setdefault("size", _get(ns, "size"))
    return info


@qmp_command("x-nvme-query-namespaces", returns=["any"])
def query_namespaces(ctx: Any, args: dict) -> list[dict[str, Any]]:
    """Every namespace: id, type, subsystem, nsid, size, lba-size, shared, attached controllers."""
    return [namespace_info(o) for o in _machine(ctx).objects() if o.is_a(TYPE_NS)]


_CLIENT = [Arg("device", "str", doc="controller id"), Arg("socket", "str", doc="its vfio-user socket"),
           Arg("pid", "int", True, "the client's process id, when the socket tells it")]
qmp_event("X_NVME_CLIENT_CONNECTED", _CLIENT, "a vfio-user client (a VM) connected to a controller")
qmp_event("X_NVME_CLIENT_DISCONNECTED", _CLIENT + [Arg("reason", "str", True, "why it ended")],
          "the vfio-user client went away")


@qmp_command("x-nvme-query-controllers", returns=["any"])
async def query_controllers(ctx: Any, args: dict) -> list[dict[str, Any]]:
    """Every controller: id, subsystem, cntlid, socket, connected, io-commands (cheap: toolbar).
    ``Machine.query_controllers`` reads the counters on each controller's IOThread."""
    return jsonable(await wait_future(_machine(ctx).query_controllers(), "x-nvme-query-controllers"))


@qmp_command("x-nvme-query-queues", args=[Arg("device", "str", optional=True)], returns=["any"])
async def query_queues(ctx: Any, args: dict) -> list[dict[str, Any]]:
    """Per controller (or just ``device``): its queues from ``Controller.queue_info()``,
    computed on the controller's IOThread (the only thread that may read queue state);
    the wait is bounded (``IOThreadTimeout``: a clear error, not a silent monitor)."""
    return jsonable(await wait_future(_machine(ctx).query_queues(args.get("device")), "x-nvme-query-queues"))


@qmp_command("x-nvme-query-dataplane", args=[Arg("device", "str", optional=True)], returns=["any"])
async def query_dataplane(ctx: Any, args: dict) -> list[dict[str, Any]]:
    """Per controller (or just ``device``): ``Controller.dataplane_info()`` -- cumulative I/O
    commands, processing rounds, real doorbell writes, shadow updates, interrupts, IOThread
    sleeps, spin outcomes and CPU time. Two reads around a workload give its costs per command."""
    return jsonable(await wait_future(_machine(ctx).query_dataplane(args.get("device")), "x-nvme-query-dataplane"))


# ---------------------------------------------------------------------------------------
# completion data


@qmp_command("x-query-property-values", args=[Arg("typename", "str")], returns=["any"])
def query_property_values(ctx: Any, args: dict) -> list[dict[str, Any]]:
    """``[{name, values}]``: the finite value sets of a type's properties (enums, choices,
    bools), which ``qom-list-properties`` cannot express; used for shell completion."""
    m = _machine(ctx)
    m.type_properties(args["typename"])  # TypeNotFound -> "invalid object type: x"
    out = []
    for p in m.registry.properties(args["typename"]).values():
        t = p.type
        values: Any = None
        if isinstance(t, EnumType):
            values = t.values
        elif isinstance(t, IntType):
            values = t.choices
        elif isinstance(t, BoolType):
            values = BOOL_CHOICES
        elif isinstance(t, ListType) and p.name == "attached-to":
            values = ["all"] + [d.id for d in m.devices() if d.is_a(TYPE_CTRL) and d.id]
        if values:
            out.append({"name": p.name, "values": [str(v) for v in values]})
    return out
