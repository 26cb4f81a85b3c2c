"""QEMU's option syntax, split once for everyone: ``type,id=x,path=a,,b``.

Items are separated by single commas; ``,,`` stands for a literal comma (so a
path may contain one). The command line (``-object``/``-device``/``-qmp``/
``-trace``/``-fault``), the shell's keyval arguments and its completer all use
this splitter, so an option means the same thing wherever it is typed.
"""

from __future__ import annotations


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
