"""Tab completion for HMP lines, driven by the HMP table and by QMP queries.

Why QMP queries and not the Machine: the same completer serves the local shell (queries go
through ``Registry.execute``) and the remote shell (queries go over the socket with
``QMPClient``).  The completer only needs ``query(name, args) -> awaitable result``.

Why async: prompt_toolkit awaits ``get_completions_async`` on the shell's own loop, which
is also the loop the monitor runs on, so a query is an ordinary await, never a thread hop.
Results are cached for a moment so that typing does not flood the monitor.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncGenerator, Awaitable, Callable, Iterable, Iterator

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from nvshell.device.keyval import BOOL_CHOICES, split_items
from nvshell.monitor.hmp import COMMANDS, INFO, CommandTable, HMPCommand, HMPError, Param, split_word

Query = Callable[[str, dict[str, Any]], Awaitable[Any]]

BOOL_VALUES = BOOL_CHOICES


def tokenize(text: str) -> tuple[list[str], str]:
    """Complete words before the cursor and the partial word under it ("" after a space)."""
    words: list[str] = []
    rest = text
    while rest.strip():
        word, rest = split_word(rest)
        words.append(word)
    if words and not text[-1:].isspace():
        return words[:-1], words[-1]
    return words, ""


def split_opts(text: str) -> list[str]:
    """``type,id=x,pr`` -> ``["type", "id=x", "pr"]`` (``,,`` is a literal comma)."""
    return split_items(text)


def _matching(prefix: str, candidates: Iterable[str], meta: dict[str, str] | None = None,
              suffix: str = "") -> Iterator[Completion]:
    seen: set[str] = set()
    for c in candidates:
        if c.startswith(prefix) and c not in seen:
            seen.add(c)
            yield Completion(c + suffix, start_position=-len(prefix), display=c,
                             display_meta=(meta or {}).get(c, ""))


class HMPCompleter(Completer):
    """Completes command names, ``info`` sub-commands, type names, object/device ids,
    property names and values (bool, enum, link targets), QOM paths and trace events."""

    def __init__(self, query: Query, table: CommandTable = COMMANDS, info: CommandTable = INFO,
                 *, cache_seconds: float = 2.0) -> None:
        from nvshell.monitor.loader import load
        load()                      # every command group, so the tables below are complete
        self.query = query
        self.table = table
        self.info = info
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Any]] = {}

    # -- prompt_toolkit interface ----------------------------------------------------
    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        """Synchronous path (no QMP data): command and sub-command names only."""
        try:
            words, cur = tokenize(document.text_before_cursor)
        except HMPError:
            return
        if not words:
            yield from self._command_names(cur)
        elif words[0] == "info" and len(words) == 1:
            yield from self._info_names(cur)

    async def get_completions_async(self, document: Document,
                                    complete_event: CompleteEvent) -> AsyncGenerator[Completion, None]:
        for c in await self.completions(document.text_before_cursor):
            yield c

    # -- the logic, usable directly by tests ---------------------------------------------
    async def completions(self, text: str) -> list[Completion]:
        """All completions for ``text`` (the line up to the cursor); never raises."""
        try:
            return [c async for c in self._complete(text)]
        except Exception:
            return []

    async def _complete(self, text: str) -> AsyncGenerator[Completion, None]:
        words, cur = tokenize(text)
        if not words:
            for c in self._command_names(cur):
                yield c
            return
        cmd = self.table.lookup(words[0])
        if cmd is None:
            return
        args_text = text.lstrip()[len(words[0]):].lstrip()
        if cmd.name == "info":
            if len(words) == 1:
                for c in self._info_names(cur):
                    yield c
                return
            sub = self.info.lookup(words[1])
            if sub is None:
                return
            cmd, words = sub, words[1:]
            args_text = args_text[len(words[0]):].lstrip()
        param, before = self._current_param(cmd, words[1:])
        if param is None or param.complete is None:
            return
        if param.kind == "rest" and param.complete == "fault-opts":
            from nvshell.device.faults import FAULT_ARGS

            words = {a.name: a.words for a in FAULT_ARGS if a.words is not None}
            async for c in self._complete_command_args("x-nvme-fault-add", args_text, words):
                yield c
            return
        if param.kind == "rest" and param.complete.endswith("-opts"):
            async for c in self._complete_opts(param.complete, args_text):
                yield c
            return
        for c in await self._complete_word(param.complete, cur, before):
            yield c

    def _command_names(self, prefix: str) -> Iterator[Completion]:
        meta = {c.name: c.help for c in self.table}
        return _matching(prefix, [c.name for c in self.table], meta)

    def _info_names(self, prefix: str) -> Iterator[Completion]:
        return _matching(prefix, [c.name for c in self.info], {c.name: c.help for c in self.info})

    @staticmethod
    def _current_param(cmd: HMPCommand, done: list[str]) -> tuple[Param | None, list[str]]:
        """Which parameter the cursor is in, given the complete words typed after the name."""
        positional = [p for p in cmd.args if p.kind != "flag"]
        words = [w for w in done if not w.startswith("-")]
        if positional and positional[-1].kind == "rest" and len(words) >= len(positional) - 1:
            return positional[-1], words
        return (positional[len(words)] if len(words) < len(positional) else None), words

    # -- data ------------------------------------------------------------------------------
    async def _q(self, name: str, args: dict[str, Any] | None = None) -> Any:
        key = name + json.dumps(args or {}, sort_keys=True)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit and now - hit[0] < self.cache_seconds:
            return hit[1]
        value = await self.query(name, dict(args or {}))
        self._cache[key] = (now, value)
        return value

    async def _safe(self, name: str, args: dict[str, Any] | None = None, default: Any = None) -> Any:
        try:
            return await self._q(name, args)
        except Exception:
            return [] if default is None else default

    async def _ids(self, container: str) -> list[str]:
        props = await self._safe("qom-list", {"path": container})
        return sorted(p["name"] for p in props if str(p.get("type", "")).startswith("child<"))

    async def _types(self, kind: str) -> list[str]:
        devices = [t["name"] for t in await self._safe("qom-list-types", {"implements": "device", "abstract": False})]
        if kind == "device":
            return sorted(devices)
        objs = await self._safe("qom-list-types", {"implements": "user-creatable", "abstract": False})
        if not objs:
            objs = await self._safe("qom-list-types", {"abstract": False})
        return sorted(t["name"] for t in objs if t["name"] not in devices)

    async def _complete_word(self, kind: str, cur: str, before: list[str]) -> list[Completion]:
        if kind == "command":
            return list(self._command_names(cur))
        if kind == "info":
            return list(self._info_names(cur))
        if kind == "on-off":
            return list(_matching(cur, BOOL_VALUES))
        if kind == "object-id":
            return list(_matching(cur, await self._ids("/objects")))
        if kind == "device-id":
            return list(_matching(cur, await self._ids("/machine/peripheral")))
        if kind == "fault-id":
            return list(_matching(cur, [r["id"] for r in await self._safe("x-nvme-fault-list")]))
        if kind == "trace-event":
            events = await self._safe("trace-event-get-state", {"name": "*"})
            return list(_matching(cur, sorted(e["name"] for e in events)))
        if kind == "qom-path":
            return await self._paths(cur)
        if kind == "qom-property" and before:
            props = await self._safe("qom-list", {"path": before[-1]})
            return list(_matching(cur, [p["name"] for p in props], {p["name"]: p["type"] for p in props}))
        if kind == "qom-value" and len(before) >= 2:
            props = await self._safe("qom-list", {"path": before[-2]})
            typename = await self._safe("qom-get", {"path": before[-2], "property": "type"}, default="")
            for p in props:
                if p["name"] == before[-1]:
                    return list(_matching(cur, await self._values(p, typename if isinstance(typename, str) else None)))
        return []

    async def _paths(self, cur: str) -> list[Completion]:
        """Complete one QOM path segment: children (and links) of the typed parent."""
        if not cur.startswith("/"):
            return list(_matching(cur, ["/"]))
        parent, _, partial = cur.rpartition("/")
        props = await self._safe("qom-list", {"path": parent or "/"})
        names = sorted(p["name"] for p in props if str(p["type"]).startswith(("child<", "link<")))
        return [Completion(f"{parent}/{n}", start_position=-len(cur), display=n)
                for n in names if n.startswith(partial)]

    async def _values(self, prop: dict[str, Any], typename: str | None = None) -> list[str]:
        """Values a property accepts: enum members and choices (``x-query-property-values``
        when the server has it), bool on/off, ids for links."""
        ptype = str(prop.get("type", ""))
        for key in ("enum", "values", "choices"):
            if isinstance(prop.get(key), list):
                return [str(v) for v in prop[key]]
        if typename:
            for entry in await self._safe("x-query-property-values", {"typename": typename}):
                if entry.get("name") == prop.get("name"):
                    return [str(v) for v in entry.get("values", [])]
        if ptype == "bool":
            return list(BOOL_VALUES)
        if ptype.startswith("link<"):
            return await self._ids("/objects") + await self._ids("/machine/peripheral")
        return []

    async def _command_args(self, command: str) -> dict[str, list[str]]:
        """A QMP command's argument names and, for enums, their values, read from
        ``query-qmp-schema``: the command's own declaration drives its completion."""
        schema = await self._safe("query-qmp-schema")
        types = {e.get("name"): e for e in schema if isinstance(e, dict)}
        entry = types.get(command)
        if not entry:
            return {}
        out: dict[str, list[str]] = {}
        for member in types.get(entry.get("arg-type"), {}).get("members", []):
            mtype = types.get(member.get("type"), {})
            out[member["name"]] = list(mtype.get("values", [])) if mtype.get("meta-type") == "enum" else []
        return out

    async def _complete_command_args(self, command: str, text: str,
                                     words: dict[str, Callable[[dict[str, str]], Iterable[str]]] | None = None
                                     ) -> AsyncGenerator[Completion, None]:
        """``key=value,...`` for a shell command that passes its keyval to one QMP command.

        Values: an enum's members (from the schema), or ``words[key](typed)`` where the
        declaration offers words for an open-ended argument (given the others typed)."""
        args = await self._command_args(command)
        pieces = split_opts(text)
        cur = pieces[-1]
        if "=" in cur:
            key, _, value = cur.partition("=")
            values = args.get(key, [])
            if key == "ctrl":
                values = await self._ids("/machine/peripheral")
            elif not values and key in (words or {}):
                typed = dict(p.partition("=")[::2] for p in pieces[:-1] if "=" in p)
                values = list(words[key](typed))  # type: ignore[index]
            for c in _matching(value, values):
                yield c
            return
        used = {p.partition("=")[0] for p in pieces[:-1]}
        for c in _matching(cur, [n for n in args if n not in used], suffix="="):
            yield c

    async def _complete_opts(self, kind: str, text: str) -> AsyncGenerator[Completion, None]:
        """``type,prop=value,...`` for object_add/device_add."""
        pieces = split_opts(text)
        cur = pieces[-1]
        typekind = "device" if kind == "device-opts" else "object"
        if len(pieces) == 1:
            for c in _matching(cur, ["help"] + await self._types(typekind)):
                yield c
            return
        typename = pieces[0].partition("=")[2] if "=" in pieces[0] else pieces[0]
        command = "device-list-properties" if typekind == "device" else "qom-list-properties"
        props = await self._safe(command, {"typename": typename})
        if "=" in cur:
            key, _, value = cur.partition("=")
            for p in props:
                if p["name"] == key:
                    for c in _matching(value, await self._values(p, typename)):
                        yield c
            return
        used = {p.partition("=")[0] for p in pieces[1:-1]}
        names = ["id"] + [p["name"] for p in props]
        meta = {p["name"]: str(p.get("type", "")) for p in props}
        for c in _matching(cur, [n for n in names if n not in used], meta, suffix="="):
            yield c
        for c in _matching(cur, ["help"]):
            yield c
