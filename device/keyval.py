"""QEMU's option syntax, parsed once for everyone: ``type,id=x,path=a,,b,attached-to=c0,attached-to=c1``.

Items are separated by single commas; ``,,`` stands for a literal comma (so a
path may contain one). The command line (``-object``/``-device``/``-qmp``/
``-trace``/``-fault``), the shell's ``object_add``/``device_add``/``fault_add``
and its completer all use these functions, so an option means the same thing
wherever it is typed:

* ``split_items``: the comma splitter;
* ``parse_keyval``: items to a dict; the first item may omit ``implied=`` (the
  type or driver); a repeated key makes a list (valid only where the property
  is a list, e.g. ``attached-to``; a scalar property given twice is refused by
  the property's own type check); a bare ``help`` or ``?`` item asks for help;
* ``parse_bool`` / ``BOOL_WORDS``: the one list of boolean words, for every
  boolean anywhere (properties, fault rules, ``-qmp`` flags, HMP on/off);
  ``BOOL_CHOICES`` is what completion offers.
"""

from __future__ import annotations

from typing import Any

from nvshell.device.errors import PropertyError

#: Every accepted boolean word (case-insensitive), as QEMU's keyval and HMP accept them.
BOOL_WORDS: dict[str, bool] = {"on": True, "yes": True, "true": True, "y": True, "1": True,
                               "off": False, "no": False, "false": False, "n": False, "0": False}
#: The words completion and help offer.
BOOL_CHOICES = ("on", "off")
#: The key ``parse_keyval`` sets for a bare ``help``/``?`` item.
HELP = "help"


def split_items(text: str) -> list[str]:
    """``"a,b=1,,2"`` -> ``["a", "b=1,2"]``; always at least one (maybe empty) item."""
    items: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    items.append("".join(current))
    return items


def parse_bool(value: Any, what: str) -> bool:
    """A boolean from a JSON bool or one of ``BOOL_WORDS``; PropertyError names ``what``."""
    if isinstance(value, bool):
        return value
    word = BOOL_WORDS.get(str(value).lower()) if isinstance(value, (str, int)) else None
    if word is None:
        raise PropertyError(f"Parameter '{what}' expects 'on' or 'off'")
    return word


def parse_keyval(text: str, implied_key: str | None = None) -> dict[str, Any]:
    """Parse ``type,k=v,k2=v,,with-comma`` into a dict of strings; repeated keys become lists.

    ``implied_key`` names the value of a first item without ``=`` (QEMU's implied key).
    A bare ``help`` or ``?`` item sets ``{"help": True}``.  Raises ``PropertyError``.
    """
    if not isinstance(text, str):
        raise PropertyError("expected a string of key=value pairs")
    items = split_items(text)
    out: dict[str, Any] = {}
    for n, item in enumerate(items):
        if item in ("help", "?"):
            out[HELP] = True
            continue
        if "=" not in item:
            if n == 0 and implied_key is not None and item:
                out[implied_key] = item
                continue
            if item == "":
                raise PropertyError(f"Invalid parameter '' in '{text}'" if n else "Parameter 'id' is missing")
            raise PropertyError(f"Expected '=' after parameter '{item}'")
        key, _, value = item.partition("=")
        if not key:
            raise PropertyError(f"Invalid parameter '' in '{item}'")
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[key] = value
    return out
