"""Test-suite wide collection rules."""

from __future__ import annotations

import pytest

from nvshell.testing import NvshellProcess


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--nvshell-global", action="append", default=[], metavar="DRIVER.PROP=VALUE",
                     help="run every nvshell the tests start with this -global (repeatable), e.g. "
                          "x-nvme-ctrl.doorbells=mmap for the guest suite in mmap doorbell mode")


def pytest_configure(config: pytest.Config) -> None:
    """Check the ``--nvshell-global`` options as nvshell would (a typo is a usage error here, not
    a failure of every test), then hand them to ``NvshellProcess``.  Without any, the device
    model is not imported here: a broken one must fail its tests, not the session's start
    (tests/test_suite_can_fail.py)."""
    globals = config.getoption("nvshell_global")
    if not globals:
        return
    from nvshell.cmdline import CmdlineError, apply_globals, parse
    from nvshell.device.machine import Machine

    try:
        apply_globals(Machine("."), parse(globals=globals).globals)
    except CmdlineError as e:
        raise pytest.UsageError(f"--nvshell-global: {e}") from None
    NvshellProcess.use_globals(globals)


def pytest_report_header(config: pytest.Config) -> str | None:
    globals = config.getoption("nvshell_global")
    return f"nvshell globals: {' '.join(globals)}" if globals else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long fuzz runs (marker ``fuzz``) only when asked for (``-m fuzz``): the fast suite
    (``-m "not guest"``) must stay fast, and it already fuzzes briefly (tests/test_fuzz.py)."""
    if "fuzz" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("fuzz") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("fuzz") is not None])
        items[:] = kept
