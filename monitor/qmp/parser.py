"""Streaming JSON framing for QMP input.

Why not readline: QMP clients (``QMPClient``) send requests without a trailing newline,
while nc/socat users send newlines and split lines; so messages are delimited by
bracket depth, skipping strings and escapes, like QEMU's json-streamer.  A message is
decoded only once it is complete.

Error recovery follows QEMU's lexer, which resets on errors: a byte that cannot
appear where it is (binary garbage, an ASCII control character -- also inside a
string --, 0xFE/0xFF, an upper-case letter outside a string other than an
exponent's ``E``) yields one parse error and drops the partial message; parsing
resumes with the next plausible byte.  So an arrow key typed into socat
(``ESC [ A``) costs two parse errors instead of opening an array that swallows
every later command.  Too deep nesting yields one error for the whole (skipped)
message.  A number JSON can carry but a reply cannot (``1e400`` is infinity) is a
parse error.  A message growing past ``max_size`` without completing is fatal:
the session reports it and closes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Union

MAX_MESSAGE = 10 * 1024 * 1024
MAX_DEPTH = 1024

_WS = frozenset(b" \t\r\n")
_OPEN = frozenset(b"{[")
_CLOSE = frozenset(b"}]")
_BARE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+.-,:}]")
# inside a message (outside strings): the next byte that is not plain token material
# (keywords are lower case; an upper-case letter is matched and checked: only an
# exponent's E is valid)
_OUT = re.compile(rb"[^ \t\r\n,:a-z0-9+.\-]")
# inside a string: the next quote or backslash, or a byte that cannot be in a string
_IN = re.compile(rb'["\\\x00-\x1f\xfe\xff]')
_DIGITS = frozenset(b"0123456789")
# after an error: where to start again (as QEMU's lexer: the start of an object or
# array, or just after a control character such as the newline ending the bad line)
_RESYNC = re.compile(rb"[\[{\x00-\x08\x0a-\x1f]")
_E = 0x45
# end of a bare top-level token (a scalar or stray punctuation)
_BARE_END = re.compile(rb"[^A-Za-z0-9+.\-,:}\]]")


@dataclass
class Message:
    """A complete, decoded JSON value (not necessarily an object)."""

    value: Any


@dataclass
class ParseError:
    """Input that is not JSON; ``fatal`` means the stream cannot be resynchronised."""

    desc: str
    fatal: bool = False


Item = Union[Message, ParseError]


def _stray(byte: int) -> str:
    return chr(byte) if 0x20 < byte < 0x7f else f"\\x{byte:02x}"


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid literal '{name}'")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number '{text}' is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key '{key}'")
        result[key] = value
    return result


def decode(raw: bytes) -> Item:
    """Decode one delimited message."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ParseError("JSON parse error, invalid UTF-8 sequence in string")
    try:
        return Message(json.loads(text, parse_constant=_no_constants, parse_float=_finite,
                                  object_pairs_hook=_no_duplicates))
    except json.JSONDecodeError as exc:
        return ParseError(f"JSON parse error, {exc.msg}")
    except ValueError as exc:
        return ParseError(f"JSON parse error, {exc}")
    except RecursionError:
        return ParseError("JSON parse error, nesting too deep")


class JSONStreamParser:
    """Feed bytes, get complete messages and parse errors in input order."""

    def __init__(self, max_size: int = MAX_MESSAGE, max_depth: int = MAX_DEPTH) -> None:
        self.max_size = max_size
        self.max_depth = max_depth
        self.failed = False
        self._after_garbage = False
        #: After an error, bytes are skipped up to a resynchronisation point (see _RESYNC).
        self._recovering = False
        self._reset()

    def _reset(self) -> None:
        self._buf = bytearray()
        self._size = 0
        self._depth = 0
        self._active = False
        self._bare = False
        self._in_string = False
        self._escape = False
        self._discard: str | None = None

    def _after_digit(self, data: bytes, pos: int, start: int) -> bool:
        """The byte before ``pos`` (in ``data`` or the held part of the message) is a digit."""
        if pos > start:
            return data[pos - 1] in _DIGITS
        return bool(self._buf) and self._buf[-1] in _DIGITS

    def discard(self) -> None:
        """Drop the partial message (the session is gone: free its buffer now)."""
        self._reset()
        self.failed = True

    @property
    def pending(self) -> int:
        """Bytes of the incomplete message held so far."""
        return self._size

    def feed(self, data: bytes) -> list[Item]:
        """Consume ``data``; after a fatal error everything is ignored."""
        out: list[Item] = []
        if self.failed:
            return out
        n = len(data)
        i = 0
        start = 0  # where the unflushed part of the current message begins in ``data``

        def complete(end: int) -> None:
            nonlocal start
            if self._discard is not None:
                out.append(ParseError(self._discard))
            else:
                self._buf += data[start:end]
                out.append(decode(bytes(self._buf)))
            self._reset()
            start = end

        def garbage(pos: int) -> None:
            nonlocal start
            if not self._after_garbage:
                out.append(ParseError(f"JSON parse error, stray '{_stray(data[pos])}'"))
            self._after_garbage = True
            self._recovering = True
            self._reset()
            start = pos + 1

        while i < n:
            if self._in_string:
                if self._escape:
                    self._escape = False
                    if data[i] < 0x20 or data[i] >= 0xFE:  # not even escaped (QEMU's lexer agrees)
                        garbage(i)
                    i += 1
                    continue
                m = _IN.search(data, i)
                if m is None:
                    i = n
                    break
                i = m.end()
                b = data[m.start()]
                if b == 0x5C:
                    self._escape = True
                elif b != 0x22:
                    garbage(m.start())
                else:
                    self._in_string = False
                    if self._depth == 0:
                        complete(i)
                continue
            if not self._active and self._recovering:
                m = _RESYNC.search(data, i)
                if m is None:
                    i = start = n
                    break
                self._recovering = False
                i = start = m.start() if data[m.start()] in _OPEN else m.end()
                continue
            if not self._active:
                b = data[i]
                if b in _WS:
                    i += 1
                    start = i
                    continue
                start = i
                if b in _OPEN:
                    self._active, self._depth = True, 1
                elif b == 0x22:
                    self._active, self._in_string = True, True
                elif b in _BARE:
                    self._active, self._bare = True, True
                else:
                    garbage(i)
                    i += 1
                    continue
                self._after_garbage = False
                i += 1
                continue
            if self._bare:
                m = _BARE_END.search(data, i)
                if m is None:
                    i = n
                    break
                i = m.start()
                complete(i)
                continue
            m = _OUT.search(data, i)
            if m is None:
                i = n
                break
            b = data[m.start()]
            i = m.end()
            if b in _OPEN:
                self._depth += 1
                if self._depth > self.max_depth and self._discard is None:
                    self._discard = f"JSON parse error, nesting exceeds {self.max_depth} levels"
                    self._buf = bytearray()
            elif b in _CLOSE:
                self._depth -= 1
                if self._depth == 0:
                    complete(i)
            elif b == 0x22:
                self._in_string = True
            elif b == _E and self._after_digit(data, m.start(), start):
                pass
            else:
                garbage(m.start())
                i = m.start() + 1
        if self._active:
            if self._discard is None:
                self._buf += data[start:n]
            self._size += n - start
            if self._size > self.max_size:
                out.append(ParseError(f"JSON parse error, message exceeds {self.max_size} bytes", fatal=True))
                self.failed = True
                self._reset()
        return out
