"""Test-suite wide collection rules."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Long fuzz runs (marker ``fuzz``) only when asked for (``-m fuzz``): the fast suite
    (``-m "not guest"``) must stay fast, and it already fuzzes briefly (tests/test_fuzz.py)."""
    if "fuzz" in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker("fuzz") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.get_closest_marker("fuzz") is not None])
        items[:] = kept
