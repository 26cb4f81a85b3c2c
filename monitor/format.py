"""Human formatting of QMP data for the HMP commands.

Kept apart from the commands so the QMP results stay plain data (remote clients and tests
consume them) and so the text layout, which follows QEMU's HMP output, lives in one place.
Every function takes plain data and returns text (newline-terminated lines).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence


def format_value(value: Any) -> str:
    """A property value as QEMU's ``info qtree`` shows it: strings quoted, bools on/off."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "<null>"
    return json.dumps(value, separators=(", ", ": "))


def format_json(value: Any) -> str:
    """``qom-get`` output: the value as JSON (QEMU prints JSON there)."""
    return json.dumps(value, indent=2) + "\n"


def format_size(n: int) -> str:
    """Sizes for humans: exact bytes when small, else binary units with two decimals."""
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024  # type: ignore[assignment]
        if n < 1024:
            break
    return f"{n:.2f} {unit}".replace(".00 ", " ")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns sized to their content; two spaces between columns."""
    text_rows = [[str(c) for c in headers]] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in text_rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# info qtree / info qom-tree


def format_qtree(bus: dict[str, Any], brief: bool = False) -> str:
    """``info qtree``: bus-style tree, 2 spaces per level.

    ``bus = {"name", "type", "devices": [dev]}``;
    ``dev = {"type", "id", "props": [{"name","value"}], "buses": [bus], "refs": [ref]}``;
    ``ref = {"type", "id", "nsid"}`` is a namespace attached to a controller but owned by
    the subsystem: it is listed, not repeated with its properties."""
    lines: list[str] = []
    _qtree_bus(bus, 0, brief, lines)
    return "\n".join(lines) + "\n"


def _qtree_bus(bus: dict[str, Any], depth: int, brief: bool, lines: list[str]) -> None:
    pad = "  " * depth
    lines.append(f"{pad}bus: {bus['name']}")
    lines.append(f"{pad}  type {bus['type']}")
    for dev in bus.get("devices", []):
        _qtree_dev(dev, depth + 1, brief, lines)
    for ref in bus.get("refs", []):
        lines.append(f"{pad}  attached: {ref['type']}, id \"{ref['id']}\", nsid {ref['nsid']}")


def _qtree_dev(dev: dict[str, Any], depth: int, brief: bool, lines: list[str]) -> None:
    pad = "  " * depth
    lines.append(f"{pad}dev: {dev['type']}, id \"{dev['id']}\"")
    if not brief:
        for prop in dev.get("props", []):
            lines.append(f"{pad}  {prop['name']} = {format_value(prop['value'])}")
    for bus in dev.get("buses", []):
        _qtree_bus(bus, depth + 1, brief, lines)


def format_qom_tree(node: dict[str, Any]) -> str:
    """``info qom-tree``: ``/name (type)``, children sorted by name, +2 indent per level.
    ``node = {"name", "type", "children": [node]}``."""
    lines: list[str] = []

    def walk(n: dict[str, Any], depth: int) -> None:
        lines.append(f"{'  ' * depth}/{n['name']} ({n['type']})")
        for child in sorted(n.get("children", []), key=lambda c: c["name"]):
            walk(child, depth + 1)

    walk(node, 0)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# info namespaces / info queues / info trace-events


def format_namespaces(namespaces: list[dict[str, Any]]) -> str:
    """``info namespaces``: one row per namespace (from ``x-nvme-query-namespaces``)."""
    if not namespaces:
        return "no namespaces\n"
    rows = []
    for ns in namespaces:
        size = ns.get("size")
        rows.append([
            ns.get("id"), ns.get("subsystem"), ns.get("nsid"), ns.get("type"),
            format_size(size) if isinstance(size, int) else size, ns.get("lba-size"),
            "yes" if ns.get("shared") else "no",
            ",".join(ns.get("attached", [])) or "-",
        ])
    return format_table(["id", "subsystem", "nsid", "type", "size", "lba", "shared", "attached"], rows)


def format_controllers(ctrls: list[dict[str, Any]]) -> str:
    """``info controllers``: one row per controller (from ``x-nvme-query-controllers``)."""
    if not ctrls:
        return "no controllers\n"
    rows = [[c.get("id"), c.get("subsystem"), c.get("cntlid"),
             "connected" if c.get("connected") else "waiting", c.get("io-commands"), c.get("socket")]
            for c in ctrls]
    return format_table(["id", "subsystem", "cntlid", "state", "io-commands", "socket"], rows)


_QUEUE_COLUMNS = ("type", "qid", "cqid", "size", "head", "tail", "vector", "outstanding")


def format_queues(devices: list[dict[str, Any]]) -> str:
    """``info queues``: per controller, one row per SQ/CQ.  Columns follow whatever the
    controller's ``queue_info()`` reports, known ones first, so new fields show up unchanged."""
    if not devices:
        return "no controllers\n"
    out: list[str] = []
    for dev in devices:
        queues = dev.get("queues") or []
        state = dev.get("state")
        out.append(f"{dev['device']}:" + (f" {state}" if state else ""))
        if not queues:
            out.append("  no queues\n")
            continue
        keys = [k for k in _QUEUE_COLUMNS if any(k in q for q in queues)]
        keys += sorted({k for q in queues for k in q} - set(keys))
        table = format_table(keys, ([q.get(k) for k in keys] for q in queues))
        out.append("".join("  " + line + "\n" for line in table.splitlines()))
    return "\n".join(s.rstrip("\n") for s in out) + "\n"


#: ``info dataplane`` rows: (counter, label); each also shown per I/O command.
_DATAPLANE_ROWS = (("rounds", "processing rounds"), ("doorbell-writes", "real doorbell writes"),
                   ("doorbell-page-updates", "mmapped doorbell updates"), ("shadow-updates", "shadow doorbell updates"),
                   ("interrupts", "interrupts"), ("sleeps", "IOThread sleeps"), ("spins-found", "spins that found work"),
                   ("spins-expired", "spins that expired"), ("spins-preempted", "spins pre-empted (stopped)"),
                   ("iothread-cpu-ms", "IOThread CPU (ms)"))


def format_dataplane(devices: list[dict[str, Any]]) -> str:
    """``info dataplane``: per controller, each counter and its rate per I/O command."""
    if not devices:
        return "no controllers\n"
    out: list[str] = []
    for dev in devices:
        if "io-commands" not in dev:
            out.append(f"{dev['device']}: not running\n")
            continue
        ios = dev["io-commands"]
        out.append(f"{dev['device']}: doorbells={dev['doorbells']}, shadow doorbells "
                   f"{'on' if dev['shadow-doorbells'] else 'off'}, {ios} I/O commands, "
                   f"spin window {dev['spin-window-us']} us\n")
        rows = []
        for key, label in _DATAPLANE_ROWS:
            value = dev[key]
            per = value / ios if ios else None
            if key == "iothread-cpu-ms":
                rows.append((label, f"{value:.1f}", f"{per * 1000:.1f} us" if per is not None else None))
            else:
                rows.append((label, value, f"{per:.3f}" if per is not None else None))
        table = format_table(("counter", "total", "per I/O command"), rows)
        out.append("".join("  " + line + "\n" for line in table.splitlines()))
    return "".join(out)


def format_trace_events(events: list[dict[str, Any]]) -> str:
    """``info trace-events``: QEMU's ``name : state 1`` lines."""
    lines = []
    for ev in sorted(events, key=lambda e: e["name"]):
        state = ev.get("state")
        lines.append(f"{ev['name']} : state {1 if state == 'enabled' else 0}"
                     + (" (unavailable)" if state == "unavailable" else ""))
    return "\n".join(lines) + "\n" if lines else "no matching trace events\n"


# ---------------------------------------------------------------------------------------
# help for types


def format_type_list(kind: str, types: list[dict[str, Any]]) -> str:
    """``object_add help`` / ``-object help`` (kind "object") and ``device_add help`` /
    ``-device help`` (kind "device"), as QEMU prints them; both paths use this."""
    types = sorted(types, key=lambda t: t["name"])
    if kind == "object":
        width = max((len(t["name"]) for t in types), default=0)
        return "List of user creatable object types:\n" + "".join(
            f"  {t['name']:<{width}}  - {t['description']}\n" if t.get("description") else f"  {t['name']}\n"
            for t in types)
    return "Storage devices:\n" + "".join(
        f'name "{t["name"]}"' + (f', desc "{t["description"]}"' if t.get("description") else "") + "\n"
        for t in types)


def format_type_usage(typename: str, props: list[dict[str, Any]], ident: str) -> str:
    """A usage line of ``help object_add`` / ``help device_add``:
    ``  TYPE,id=str[,prop=<type>]...`` (properties sorted, as ``TYPE,help`` lists them)."""
    optional = "".join(f"[,{p['name']}=<{p.get('type', '?')}>]" for p in sorted(props, key=lambda p: p["name"]))
    head = f"{typename},{ident}" if not ident.startswith("[") else f"{typename}[,{ident[1:]}"
    return f"  {head}{optional}\n"


def format_type_properties(typename: str, props: list[dict[str, Any]]) -> str:
    """``device_add TYPE,help``: ``  name=<type>  - description (default: x)`` lines."""
    lines = [f"{typename} options:"]
    for p in sorted(props, key=lambda p: p["name"]):
        head = f"  {p['name']}=<{p.get('type', '?')}>"
        tail = p.get("description") or ""
        # Like ``-object TYPE,help``: an empty default says nothing, and a description that
        # already explains its default must not get a second, contradicting one.
        if "default-value" in p and p["default-value"] not in ("", [], None) and "(default" not in tail:
            tail = (tail + " " if tail else "") + f"(default: {format_value(p['default-value'])})"
        lines.append(f"{head:<28} - {tail}" if tail else head)
    if len(lines) == 1:
        lines.append("  (no properties)")
    return "\n".join(lines) + "\n"


def format_qom_list(props: list[dict[str, Any]]) -> str:
    """``qom-list``: QEMU's ``name (type)`` lines."""
    return "".join(f"{p['name']} ({p['type']})\n" for p in props)
