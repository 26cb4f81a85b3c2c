"""The shell's live ``info iostat INTERVAL`` view: a full-screen prompt_toolkit application
that re-runs the HMP command every INTERVAL seconds and returns to the prompt on a key.

Why client-side and built on HMP text: the view must look the same in the local shell and in
``nvshell --connect`` (where the monitor runs in another process), so it only needs the
shell backend's ``execute(line)``; the numbers and their history come from the monitor
(``monitor/commands_iostat.py``).  Why prompt_toolkit's own widgets (``Frame`` around a
``Window``): the shell already runs on prompt_toolkit, and its full-screen application takes
the terminal over and gives it back intact (alternate screen), prompt and history untouched.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from nvshell.monitor.hmp import HMPError, split_word

HELP = "q, Esc, Enter or Ctrl-C: back to the prompt"


def live_interval(line: str) -> float | None:
    """The refresh interval when ``line`` is ``info iostat INTERVAL [device]``, else None."""
    try:
        word, rest = split_word(line)
        if word != "info":
            return None
        sub, rest = split_word(rest)
        if sub != "iostat":
            return None
        interval, _ = split_word(rest)
    except HMPError:
        return None
    try:
        value = float(interval)
    except ValueError:
        return None  # no interval (one table) or a bad one (the command's own error)
    return value if value > 0 else None


async def run_live_view(execute: Callable[[str], Awaitable[Any]], line: str, interval: float, *,
                        input: Any = None, output: Any = None) -> str:
    """Show ``line``'s output full screen, refreshed every ``interval`` s, until a key.

    Returns the text to print at the prompt afterwards: nothing, or the command's error
    (a refused interval or device ends the view at once with its ``Error:`` line)."""
    from prompt_toolkit.application import Application
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout import HSplit, Layout, Window
    from prompt_toolkit.layout.controls import FormattedTextControl
    from prompt_toolkit.widgets import Frame

    first = await execute(line)
    if not first.ok:
        return first.text
    state = {"text": first.text.rstrip("\n"), "refreshes": 1}
    body = Window(FormattedTextControl(lambda: state["text"]), wrap_lines=False)
    footer = Window(FormattedTextControl(lambda: f" every {interval:g} s, refresh {state['refreshes']} -- {HELP}"),
                    height=1, style="reverse")
    keys = KeyBindings()

    @keys.add("q")
    @keys.add("escape", eager=True)
    @keys.add("enter")
    @keys.add("c-c")
    @keys.add("c-d")
    def _leave(event: Any) -> None:
        event.app.exit()

    app: Application[None] = Application(layout=Layout(HSplit([Frame(body, title=line.strip()), footer])),
                                         key_bindings=keys, full_screen=True, input=input, output=output)
    error = ""

    async def refresh() -> None:
        nonlocal error
        while True:
            await asyncio.sleep(interval)
            result = await execute(line)
            if not result.ok:  # the controller went away, the connection was lost...
                error = result.text
                app.exit()
                return
            state["text"] = result.text.rstrip("\n")
            state["refreshes"] += 1
            app.invalidate()

    task = asyncio.ensure_future(refresh())
    try:
        await app.run_async()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return error
