"""``-qmp`` address strings in QEMU's chardev syntax.

Accepted: ``unix:PATH[,server=on][,wait=off]`` and ``tcp:[HOST]:PORT[,server=on][,wait=off]``
(``[::1]:PORT`` for IPv6; ``,,`` is a literal comma as in QEMU; the old boolean
spellings ``server``/``nowait`` too).  nvshell only serves, so ``server=off`` and
``wait=on`` are refused with a clear message instead of being silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nvshell.device.keyval import BOOL_WORDS, split_items
from nvshell.monitor.errors import AddressError



@dataclass(frozen=True)
class QMPAddress:
    """Where a QMP server listens: ``kind`` "unix" (``path``) or "tcp" (``host``, ``port``)."""

    kind: str
    path: Optional[str] = None
    host: Optional[str] = None
    port: Optional[int] = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = self.host or ""
        if ":" in host:
            host = f"[{host}]"
        return f"tcp:{host}:{self.port}"


def _flag(name: str, value: Optional[str], text: str) -> bool:
    if value is None:
        return True
    word = BOOL_WORDS.get(value.lower())
    if word is not None:
        return word
    raise AddressError(f"-qmp {text}: option '{name}' expects on or off, not '{value}'")


def parse_qmp_address(text: str) -> QMPAddress:
    """Parse one ``-qmp`` argument; raises ``AddressError`` (a ``ValueError``) with a clear message."""
    if not isinstance(text, str) or not text:
        raise AddressError("-qmp: empty address (expected unix:PATH or tcp:HOST:PORT)")
    head, *options = split_items(text)
    for option in options:
        name, sep, value = option.partition("=")
        value_or_none = value if sep else None
        if name == "server":
            if not _flag(name, value_or_none, text):
                raise AddressError(f"-qmp {text}: nvshell only serves QMP; server=off is not supported")
        elif name == "nowait":
            if value_or_none is not None:
                raise AddressError(f"-qmp {text}: option 'nowait' takes no value")
        elif name == "wait":
            if _flag(name, value_or_none, text):
                raise AddressError(f"-qmp {text}: wait=on is not supported (nvshell never blocks "
                                   "waiting for a QMP client); use wait=off")
        elif name in ("ipv4", "ipv6", "nodelay"):
            _flag(name, value_or_none, text)
        elif name == "":
            continue
        else:
            raise AddressError(f"-qmp {text}: unknown option '{name}'")
    kind, sep, rest = head.partition(":")
    if not sep:
        raise AddressError(f"-qmp {text}: expected unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            raise AddressError(f"-qmp {text}: missing socket path")
        return QMPAddress("unix", path=rest)
    if kind == "tcp":
        host, sep, port_text = rest.rpartition(":")
        if not sep or not port_text:
            raise AddressError(f"-qmp {text}: expected tcp:HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text, 10)
        except ValueError:
            raise AddressError(f"-qmp {text}: port '{port_text}' is not a number") from None
        if not 0 <= port <= 65535:
            raise AddressError(f"-qmp {text}: port {port} is out of range")
        return QMPAddress("tcp", host=host or None, port=port)
    raise AddressError(f"-qmp {text}: unsupported backend '{kind}' (expected unix or tcp)")
