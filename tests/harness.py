"""Test-side glue over ``nvshell.testing``: guest tests skip with a clear reason when the harness
(root, the built image) is missing."""

from __future__ import annotations

import pytest

from nvshell.testing import (  # noqa: F401  (re-exported for the tests)
    GUEST_DIR,
    GUEST_SCRIPTS,
    NVGUEST_DIR,
    REPO,
    GuestUnavailable,
    NvshellProcess,
    guest_unavailable_reason,
    read_trace,
    run_guest as _run_guest,
)


def require_guest() -> None:
    reason = guest_unavailable_reason()
    if reason:
        pytest.skip(reason)


def run_guest(*args, **kwargs):  # type: ignore[no-untyped-def]
    """``nvshell.testing.run_guest``, skipping the test when the guest harness is unavailable."""
    require_guest()
    return _run_guest(*args, **kwargs)
