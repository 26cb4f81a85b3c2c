"""nvshell's end is bounded: a task that will not honour its cancellation cannot keep a stopping
process alive (``asyncio.run`` would wait for it forever)."""

from __future__ import annotations

import asyncio
import time

from nvshell import main as nvshell_main


def test_a_task_ignoring_cancellation_does_not_hold_the_exit(monkeypatch, capsys):
    monkeypatch.setattr(nvshell_main, "EXIT_GRACE_S", 0.3)
    finished_cleanly: list[bool] = []

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # swallows every cancellation

    async def polite() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            finished_cleanly.append(True)
            raise

    async def serve() -> int:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
        asyncio.get_running_loop().create_task(polite(), name="polite")
        await asyncio.sleep(0)
        return 7

    start = time.monotonic()
    assert nvshell_main._run_to_end(serve()) == 7
    assert time.monotonic() - start < 5
    assert finished_cleanly == [True]
    err = capsys.readouterr().err
    assert "task stubborn did not stop within 0.3 s" in err
    assert "polite" not in err


def test_help_into_a_closed_pipe_is_not_an_error():
    """``nvshell -device x-nvme-ctrl,help | head -1``: the reader goes away before the help ends."""
    import subprocess
    import sys

    from nvshell.testing import REPO

    proc = subprocess.Popen([sys.executable, "-m", "nvshell", "-device", "x-nvme-ctrl,help"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # nobody reads: the first write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 0, err
    assert "BrokenPipeError" not in err and "Traceback" not in err
