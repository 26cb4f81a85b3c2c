"""nvshell's pytest plugin: fixtures for testing NVMe hosts, drivers and tools against nvshell.

Installing nvshell registers this module with pytest (entry point ``pytest11``), so a user's
test suite gets the fixtures without importing anything; the project's own tests load the same
module (``-p nvshell.pytest_plugin`` in pyproject.toml): one harness for both.

Fixtures (each function-scoped; everything started is stopped at the end of the test):

- ``nvshell``: a headless nvshell process (``nvshell.testing.NvshellProcess``) in a fresh run
  directory under ``tmp_path``, its controller and QMP sockets ready.  Its command line is
  ``nvshell_args`` (a fixture to override) plus the arguments of ``@pytest.mark.nvshell(...)``.
- ``nvshell_factory``: ``nvshell_factory(*args, wait_for=[...])`` starts more processes.
- ``qmp``: a ``nvshell.testing.QmpConnection`` (``qemu.qmp.QMPClient``) connected to ``nvshell``:
  ``execute``, ``hmp``, ``wait_event``, ``add_namespace``, ``add_fault``, ``trace``, ``trace_file``.
- ``nvme_host``: a ``nvshell.testing.NvmeTestHost`` on ``ctrl0``, enabled with one I/O queue pair:
  real NVMe commands over vfio-user, no VM.
- ``trace_path``: a path in ``tmp_path`` to record to; ``read_trace(path)`` decodes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from nvshell.testing import NvmeTestHost, NvshellProcess, QmpConnection, read_trace

__all__ = ["read_trace"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nvshell(*args): extra nvshell command-line arguments for the "
                                       "'nvshell' fixture (e.g. '-device', 'x-nvme-ctrl,id=ctrl1,...')")


@pytest.fixture
def nvshell_args() -> list[str]:
    """The ``nvshell`` fixture's command line (after ``--run-dir DIR --no-shell``); override it
    in a conftest or module to give every test there the same topology."""
    return []


@pytest.fixture
def nvshell_factory(tmp_path: Path) -> Iterator[Callable[..., NvshellProcess]]:
    """Start nvshell processes, each in its own run directory under ``tmp_path``; all are
    stopped (SIGTERM, then SIGKILL) when the test ends."""
    started: list[NvshellProcess] = []

    def start(*args: str, wait_for: list[str] | None = None, timeout: float = 20.0) -> NvshellProcess:
        proc = NvshellProcess(tmp_path / f"nvshell{len(started)}", *args)
        started.append(proc)
        return proc.start(wait_for=wait_for, timeout=timeout)

    yield start
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def nvshell(request: pytest.FixtureRequest, nvshell_factory: Callable[..., NvshellProcess],
            nvshell_args: list[str]) -> NvshellProcess:
    """A running nvshell: ``nvshell.socket("ctrl0")``, ``nvshell.qmp_path``, ``nvshell.log()``.

    It waits for ``qmp.sock`` and, unless the command line declares devices of its own, for
    ``ctrl0.sock`` of the default topology."""
    args = list(nvshell_args)
    marker = request.node.get_closest_marker("nvshell")
    if marker is not None:
        args += [str(a) for a in marker.args]
    custom = any(a in ("-device", "-readconfig") for a in args)
    return nvshell_factory(*args, wait_for=["qmp.sock"] if custom else None)


@pytest.fixture
def qmp(nvshell: NvshellProcess) -> Iterator[QmpConnection]:
    """A QMP client connected to ``nvshell`` (capabilities negotiated)."""
    conn = QmpConnection(nvshell.qmp_path)
    yield conn
    conn.close()


@pytest.fixture
def nvme_host(nvshell: NvshellProcess) -> Iterator[NvmeTestHost]:
    """A vfio-user NVMe host on ``ctrl0``: enabled, I/O queue pair 1 created (depth 64)."""
    host = NvmeTestHost(nvshell.socket("ctrl0"))
    try:
        host.start(io_queues=1)
        yield host
    finally:
        host.close()


@pytest.fixture
def trace_path(tmp_path: Path) -> Path:
    """Where a test records its trace (``qmp.trace_file(trace_path)`` or ``-trace file=...``)."""
    return tmp_path / "trace.msgpack"
