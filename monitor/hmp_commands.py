"""The built-in HMP commands: each one parses its line, runs QMP commands, formats the result.

Why here and not in ``hmp.py``: the table machinery stays small and reusable; this module
is only the list of commands, in the order ``help`` shows them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nvshell.monitor import format as fmt
from nvshell.device.keyval import parse_bool, parse_keyval
from nvshell.monitor.hmp import COMMANDS, INFO, HMPError, QuitRequest, hmp_command, info_command, qmp

PERIPHERAL = "/machine/peripheral"
OBJECTS = "/objects"


# ---------------------------------------------------------------------------------------
# help, info


@hmp_command("help", "cmd?", help="show the help", complete={"cmd": "command"}, aliases=("?",))
async def hmp_help(ctx: Any, args: dict[str, Any]) -> str:
    name = args["cmd"]
    if name is None:
        return "".join(c.help_line() + "\n" for c in COMMANDS)
    if name == "info":
        return "".join(c.help_line("info ") + "\n" for c in INFO)
    cmd = COMMANDS.lookup(name)
    if cmd is None:
        raise HMPError(f"unknown command: '{name}'")
    return cmd.help_line() + "\n" + (await cmd.usage(ctx) if cmd.usage is not None else "")


@hmp_command("info", "item? arg*?", params="[subcommand]", help="show various information about the system state",
             complete={"item": "info"})
async def hmp_info(ctx: Any, args: dict[str, Any]) -> str:
    item = args["item"]
    if item is None:
        return "".join(c.help_line("info ") + "\n" for c in INFO)
    from nvshell.monitor.hmp import bind_args

    sub = INFO.lookup(item)
    if sub is None:
        raise HMPError(f"unknown command: 'info {item}'")
    out = sub.handler(ctx, bind_args(sub, args["arg"] or ""))
    return await out if hasattr(out, "__await__") else out


@info_command("version", help="show the version of nvshell")
async def info_version(ctx: Any, args: dict[str, Any]) -> str:
    v = await qmp(ctx, "query-version")
    q = v.get("qemu", {})
    package = v.get("package") or ""
    if package and not package.startswith(" "):
        package = " " + package
    return f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}{package}\n"


@info_command("status", help="show the machine status")
async def info_status(ctx: Any, args: dict[str, Any]) -> str:
    st = await qmp(ctx, "query-status")
    return f"VM status: {st.get('status', 'running' if st.get('running') else 'paused')}\n"


@info_command("qtree", "-b", help="show the device tree (-b: brief, no properties)")
async def info_qtree(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_qtree(await qmp(ctx, "x-query-qtree"), brief=args["b"])


@info_command("config", help="show every object and device as -readconfig JSON, with the values in effect")
async def info_config(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_json(await qmp(ctx, "x-nvme-query-config"))


@info_command("qom-tree", "path?", help="show the QOM composition tree", complete={"path": "qom-path"})
async def info_qom_tree(ctx: Any, args: dict[str, Any]) -> str:
    path = args["path"] or "/"
    return fmt.format_qom_tree(await qom_tree(ctx, path))


@info_command("namespaces", help="show the NVMe namespaces and the controllers they are attached to")
async def info_namespaces(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_namespaces(await qmp(ctx, "x-nvme-query-namespaces"))


@info_command("controllers", help="show the NVMe controllers, their sockets and connection state")
async def info_controllers(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_controllers(await qmp(ctx, "x-nvme-query-controllers"))


@info_command("queues", "device?", help="show the submission/completion queues of the controllers",
              complete={"device": "device-id"})
async def info_queues(ctx: Any, args: dict[str, Any]) -> str:
    qargs = {"device": args["device"]} if args["device"] else {}
    return fmt.format_queues(await qmp(ctx, "x-nvme-query-queues", qargs))


@info_command("dataplane", "device?", help="show how each controller's data plane learns of work "
              "(doorbells, spins, sleeps) and signals it (interrupts), per I/O command",
              complete={"device": "device-id"})
async def info_dataplane(ctx: Any, args: dict[str, Any]) -> str:
    qargs = {"device": args["device"]} if args["device"] else {}
    return fmt.format_dataplane(await qmp(ctx, "x-nvme-query-dataplane", qargs))


@info_command("trace-events", "name?", help="show available trace-events & their state",
              complete={"name": "trace-event"})
async def info_trace_events(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_trace_events(await qmp(ctx, "trace-event-get-state", {"name": args["name"] or "*"}))


# ---------------------------------------------------------------------------------------
# objects and devices


@dataclass(frozen=True)
class KeyvalCommand:
    """How ``object_add`` / ``device_add`` (and ``-object`` / ``-device``, which run them) read
    their text, declared once: the handler parses with it, ``TYPE,help`` and the usage lines
    of ``help NAME`` come from it and from the type declarations (``qom-list-types`` and the
    properties query: what completion reads too), so a new type or property shows everywhere."""

    kind: str                 # "object" or "device" (``list_types``)
    implied: str              # the key of the first, unnamed item
    properties: str           # QMP query listing a type's properties
    create: str               # QMP command that creates one
    needs_id: bool

    @property
    def params(self) -> str:
        ident = ",id=str" if self.needs_id else "[,id=str]"
        return f"[{self.implied}=]type{ident}[,prop=value][,...]"

    def parse(self, text: str) -> dict[str, Any]:
        opts = parse_keyval(text, self.implied)
        if self.needs_id and "id" not in opts and not opts.get("help") and opts.get(self.implied) not in ("help", "?"):
            raise HMPError("Parameter 'id' is missing")
        return opts

    async def type_help(self, ctx: Any, opts: dict[str, Any]) -> str | None:
        """``help`` lists the types, ``TYPE,help`` one type's properties; None otherwise."""
        wants = opts.pop("help", False)
        typename = opts.get(self.implied)
        if typename in ("help", "?") or (wants and typename is None):
            return fmt.format_type_list(self.kind, await list_types(ctx, self.kind))
        if wants:
            return fmt.format_type_properties(typename, await qmp(ctx, self.properties, {"typename": typename}))
        return None

    async def run(self, ctx: Any, args: dict[str, Any]) -> str:
        """The HMP command: help text, or the QMP command with the parsed options."""
        opts = self.parse(args["options"])
        text = await self.type_help(ctx, opts)
        if text is not None:
            return text
        await qmp(ctx, self.create, opts)
        return ""

    async def usage(self, ctx: Any) -> str:
        """One line per type: ``  TYPE,id=str[,prop=<type>]...`` from its declared properties."""
        lines = []
        for t in sorted(await list_types(ctx, self.kind), key=lambda t: t["name"]):
            props = await qmp(ctx, self.properties, {"typename": t["name"]})
            lines.append(fmt.format_type_usage(t["name"], props, "id=str" if self.needs_id else "[id=str]"))
        return "".join(lines)


OBJECT_ADD = KeyvalCommand("object", "qom-type", "qom-list-properties", "object-add", needs_id=True)
DEVICE_ADD = KeyvalCommand("device", "driver", "device-list-properties", "device_add", needs_id=False)
hmp_command("object_add", "options*", params=OBJECT_ADD.params, usage=OBJECT_ADD.usage,
            help="create QOM object", complete={"options": "object-opts"})(OBJECT_ADD.run)


@hmp_command("object_del", "id", help="destroy QOM object", complete={"id": "object-id"})
async def hmp_object_del(ctx: Any, args: dict[str, Any]) -> str:
    await qmp(ctx, "object-del", {"id": args["id"]})
    return ""


hmp_command("device_add", "options*", params=DEVICE_ADD.params, usage=DEVICE_ADD.usage,
            help="add device, like -device on the command line", complete={"options": "device-opts"})(DEVICE_ADD.run)


@hmp_command("device_del", "id", help="remove device", complete={"id": "device-id"})
async def hmp_device_del(ctx: Any, args: dict[str, Any]) -> str:
    await qmp(ctx, "device_del", {"id": args["id"]})
    return ""


# ---------------------------------------------------------------------------------------
# QOM


@hmp_command("qom-list", "path?", help="list QOM properties", complete={"path": "qom-path"})
async def hmp_qom_list(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_qom_list(await qmp(ctx, "qom-list", {"path": args["path"] or "/"}))


@hmp_command("qom-get", "path property", help="print QOM property",
             complete={"path": "qom-path", "property": "qom-property"})
async def hmp_qom_get(ctx: Any, args: dict[str, Any]) -> str:
    return fmt.format_json(await qmp(ctx, "qom-get", {"path": args["path"], "property": args["property"]}))


@hmp_command("qom-set", "path property value*", help="set QOM property",
             complete={"path": "qom-path", "property": "qom-property", "value": "qom-value"})
async def hmp_qom_set(ctx: Any, args: dict[str, Any]) -> str:
    path, prop = args["path"], args["property"]
    ptype = await property_type(ctx, path, prop)
    await qmp(ctx, "qom-set", {"path": path, "property": prop, "value": convert_value(args["value"], ptype)})
    return ""


# ---------------------------------------------------------------------------------------
# tracing, quit


# ``trace-event`` lives in hmp_tracing.py, with the shell's live trace view it also drives.


@hmp_command("quit", help="quit nvshell", aliases=("q",))
async def hmp_quit(ctx: Any, args: dict[str, Any]) -> str:
    raise QuitRequest()


# ---------------------------------------------------------------------------------------
# helpers shared with the completer


def convert_value(text: str, ptype: str | None) -> Any:
    """An HMP string as the value the QOM property type wants (qom-set has no JSON input)."""
    if ptype == "bool":
        return parse_bool(text, "value")
    if ptype and (ptype.startswith("int") or ptype.startswith("uint") or ptype == "size"):
        try:
            return int(text, 0)
        except ValueError:
            raise HMPError(f"Parameter 'value' expects an integer, not '{text}'") from None
    if ptype in (None, "any") or (ptype and ptype.startswith(("[", "{"))):
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


async def property_type(ctx: Any, path: str, prop: str) -> str | None:
    """The QOM type name of ``path``'s property ``prop`` (None if unknown; qom-set reports)."""
    for p in await qmp(ctx, "qom-list", {"path": path}):
        if p["name"] == prop:
            return p["type"]
    return None


def child_type(ptype: str) -> str | None:
    """``child<T>`` -> ``T``."""
    return ptype[6:-1] if ptype.startswith("child<") and ptype.endswith(">") else None


async def qom_type(ctx: Any, path: str) -> str:
    """The type of the object at ``path``: its ``type`` property, else what its parent says."""
    try:
        t = await qmp(ctx, "qom-get", {"path": path, "property": "type"})
        if isinstance(t, str):
            return t
    except Exception:
        pass
    if path.rstrip("/"):
        parent, _, name = path.rstrip("/").rpartition("/")
        for p in await qmp(ctx, "qom-list", {"path": parent or "/"}):
            if p["name"] == name and child_type(p["type"]):
                return child_type(p["type"])  # type: ignore[return-value]
    return "container"


async def qom_tree(ctx: Any, path: str) -> dict[str, Any]:
    """``{"name", "type", "children"}`` for ``path`` from qom-list, following child<> links only."""

    async def walk(p: str, name: str, typ: str) -> dict[str, Any]:
        children = []
        for prop in await qmp(ctx, "qom-list", {"path": p}):
            ct = child_type(prop["type"])
            if ct:
                children.append(await walk(p.rstrip("/") + "/" + prop["name"], prop["name"], ct))
        return {"name": name, "type": typ, "children": children}

    name = path.rstrip("/").rpartition("/")[2]
    return await walk(path, name, await qom_type(ctx, path))


async def list_types(ctx: Any, kind: str) -> list[dict[str, Any]]:
    """Concrete types for ``object_add`` (kind "object") or ``device_add`` (kind "device")."""
    devices = await qmp(ctx, "qom-list-types", {"implements": "device", "abstract": False})
    if kind == "device":
        return devices
    names = {t["name"] for t in devices}
    objects = await qmp(ctx, "qom-list-types", {"implements": "user-creatable", "abstract": False})
    if not objects:
        objects = await qmp(ctx, "qom-list-types", {"abstract": False})
    return [t for t in objects if t["name"] not in names]


async def child_ids(ctx: Any, container: str) -> list[str]:
    """Ids of the objects (``/objects``) or devices (``/machine/peripheral``)."""
    try:
        props = await qmp(ctx, "qom-list", {"path": container})
    except Exception:
        return []
    return sorted(p["name"] for p in props if p["type"].startswith("child<"))


__all__ = ["COMMANDS", "INFO", "convert_value", "list_types", "child_ids", "qom_tree"]
