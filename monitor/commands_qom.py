"""QOM and device commands: object-add/del, device_add/del, qom-*, *-list-properties.

Thin on purpose: the Machine owns objects and properties and raises errors worded like
QEMU's (``device/errors.py``, mapped onto QMP classes by ``to_qmp_error``); this module
only declares the QMP shapes and converts results to JSON.  Flattened commands accept
any extra keys, and string properties given as ints/bools (as qmp-shell sends them)
are left for the Machine's property layer to convert.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.errors import NvshellError
from nvshell.monitor.errors import DeviceNotFound, GenericError
from nvshell.monitor.jsonify import jsonable
from nvshell.monitor.registry import Arg, Struct, qmp_command, qmp_event

OBJECT_PROPERTY_INFO = Struct("ObjectPropertyInfo", (
    Arg("name", "str"), Arg("type", "str"), Arg("description", "str", optional=True),
    Arg("default-value", "any", optional=True)))
OBJECT_TYPE_INFO = Struct("ObjectTypeInfo", (
    Arg("name", "str"), Arg("abstract", "bool", optional=True), Arg("parent", "str", optional=True),
    # Not in QEMU's ObjectTypeInfo (its HMP reads the type's description in-process); here the
    # HMP, local or remote, only has QMP, and `-device help` prints it as QEMU does.
    Arg("description", "str", optional=True, doc="what the type is (nvshell extension)")))


def machine_of(ctx: Any) -> Any:
    machine = getattr(ctx, "machine", None)
    if machine is None:
        raise GenericError("No machine is attached to this monitor")
    return machine


def _not_found(exc: Exception) -> bool:
    return isinstance(exc, NvshellError) and exc.error_class == "DeviceNotFound"


@qmp_command("object-add", args=[Arg("qom-type", "str"), Arg("id", "str")], flatten=True)
def object_add(ctx: Any, args: dict) -> None:
    """Create a user-creatable object; every other key is a property."""
    props = {k: v for k, v in args.items() if k not in ("qom-type", "id")}
    machine_of(ctx).object_add(args["qom-type"], args["id"], props)


@qmp_command("object-del", args=[Arg("id", "str")])
def object_del(ctx: Any, args: dict) -> None:
    machine_of(ctx).object_del(args["id"])


@qmp_command("device_add", args=[Arg("driver", "str"), Arg("bus", "str", optional=True),
                                 Arg("id", "str", optional=True)], flatten=True)
def device_add(ctx: Any, args: dict) -> None:
    """Create a device; every key but driver/id is a property (bus included, when given)."""
    props = {k: v for k, v in args.items() if k not in ("driver", "id")}
    machine_of(ctx).device_add(args["driver"], args.get("id"), props)


qmp_event("DEVICE_DELETED", [Arg("device", "str", True, "the device's id"), Arg("path", "str", doc="its QOM path")],
          "a device_del finished: the device is gone")


@qmp_command("device_del", args=[Arg("id", "str")])
def device_del(ctx: Any, args: dict) -> None:
    """Start removal; ``DEVICE_DELETED`` follows (published by the Machine) once it is complete."""
    try:
        machine_of(ctx).device_del(args["id"])
    except Exception as exc:
        if _not_found(exc):
            raise DeviceNotFound(f"Device '{args['id']}' not found") from exc
        raise


@qmp_command("qom-list", args=[Arg("path", "str")], returns=[OBJECT_PROPERTY_INFO])
def qom_list(ctx: Any, args: dict) -> list:
    return jsonable(machine_of(ctx).qom_list(args["path"]))


@qmp_command("qom-get", args=[Arg("path", "str"), Arg("property", "str")], returns="any")
def qom_get(ctx: Any, args: dict) -> Any:
    return jsonable(machine_of(ctx).qom_get(args["path"], args["property"]))


@qmp_command("qom-set", args=[Arg("path", "str"), Arg("property", "str"), Arg("value", "any")])
def qom_set(ctx: Any, args: dict) -> None:
    machine_of(ctx).qom_set(args["path"], args["property"], args["value"])


def _type_info(item: Any) -> dict:
    info = {"name": item} if isinstance(item, str) else jsonable(item)
    if info.get("abstract") is False:
        del info["abstract"]  # QEMU only sends "abstract": true
    return info


@qmp_command("qom-list-types", args=[Arg("implements", "str", optional=True), Arg("abstract", "bool", optional=True)],
             returns=[OBJECT_TYPE_INFO])
def qom_list_types(ctx: Any, args: dict) -> list:
    types = machine_of(ctx).list_types(implements=args.get("implements"), abstract=args.get("abstract", False))
    return [_type_info(t) for t in types]


@qmp_command("qom-list-properties", args=[Arg("typename", "str")], returns=[OBJECT_PROPERTY_INFO])
def qom_list_properties(ctx: Any, args: dict) -> list:
    return jsonable(machine_of(ctx).type_properties(args["typename"]))


@qmp_command("device-list-properties", args=[Arg("typename", "str")], returns=[OBJECT_PROPERTY_INFO])
def device_list_properties(ctx: Any, args: dict) -> list:
    return jsonable(machine_of(ctx).type_properties(args["typename"]))


@qmp_command("x-nvme-query-config", returns="any")
def query_config(ctx: Any, args: dict) -> dict:
    """Every object and device as ``-readconfig`` JSON, with effective values (what the guest
    sees now): save the result to a file and ``nvshell -readconfig FILE`` rebuilds it."""
    return jsonable(machine_of(ctx).dump_config())
