"""The tests that once ran against fakes fail when the real code they now drive breaks.

The vfio-user transport tests used a fake device, the PCI function tests a fake BAR0,
the controller tests a recording interrupt sink, the QMP event tests a fake Machine.
Now each drives the real module; here, in one scratch copy of the tree, one behaviour
at a time is broken (the mutation is data: file, text, replacement, why) and the test
file that covers it must fail. A fake would have kept them green.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from tests.test_suite_can_fail import scratch, summary


class Mutation(NamedTuple):
    path: str
    old: str
    new: str
    #: The test file that covers the behaviour, and the tests in it (``-k``) that must fail.
    tests: str
    select: str


SERVER = "device/vfio_user/server.py"
VFIO = "tests/test_vfio_user.py"
MUTATIONS = {
    "unmap-without-telling-the-device": Mutation(
        SERVER, "            self.device.dma_unmapping(req.addr, req.size)\n", "", VFIO, "remapped"),
    "disconnect-without-telling-the-device": Mutation(
        SERVER, "            self._guard(self.device.client_disconnected)\n", "", VFIO, "disconnect_and_reconnect"),
    "dma-map-offset-ignored": Mutation(
        SERVER, "fds[0] if fds else None, req.offset, req.flags)", "fds[0] if fds else None, 0, req.flags)",
        VFIO, "offset_and_readonly"),
    "dma-map-protection-ignored": Mutation(
        SERVER, "fds[0] if fds else None, req.offset, req.flags)", "fds[0] if fds else None, req.offset, 3)",
        VFIO, "offset_and_readonly"),
    "set-irqs-deassign-ignored": Mutation(
        SERVER, "                    sink.deassign(vector)\n", "                    pass\n", VFIO, "msix_eventfds"),
    "device-reset-not-forwarded": Mutation(
        SERVER, "    def _h_reset(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:\n        self.device.reset()",
        "    def _h_reset(self, header: Any, payload: bytes, fds: list[int]) -> _Reply:\n        pass", VFIO, "test_reset"),
    "device-exception-escapes": Mutation(
        SERVER, "        except Exception as exc:\n            log.exception",
        "        except ZeroDivisionError as exc:\n            log.exception", VFIO, "device_exception"),
    "eventfd-never-written": Mutation(
        "device/vfio_user/irq.py", "            os.eventfd_write(fd, 1)\n", "            pass\n", VFIO, "msix_eventfds"),
    "bar0-accesses-not-split": Mutation(
        "device/pci/function.py", "    out = []\n    pos, end = offset, offset + count",
        "    return [(offset, count)]\n    out = []\n    pos, end = offset, offset + count",
        "tests/test_pci.py", "boundary"),
    "completions-raise-no-interrupt": Mutation(
        "device/nvme/interrupts.py", "        self.ctrl.pci.trigger(vector)\n", "        pass\n",
        "tests/test_controller.py", "phase_flip"),
    "events-delivered-on-the-emitting-thread": Mutation(
        "monitor/events.py", "            loop.call_soon_threadsafe(self._deliver, event)",
        "            self._deliver(event)", "tests/test_qmp_client.py", "other_threads"),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield scratch(tmp_path_factory.mktemp("mutants"))


def run_tests(tree: Path, tests: str | list[str], select: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
                          "-k", select, *([tests] if isinstance(tests, str) else tests)], cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_breaking_the_real_code_fails_its_tests(tree: Path, name: str) -> None:
    m = MUTATIONS[name]
    target = tree / m.path
    original = target.read_text()
    assert original.count(m.old) == 1, f"{name}: the text to break is not in {m.path} exactly once"
    target.write_text(original.replace(m.old, m.new))
    try:
        code, output = run_tests(tree, m.tests, m.select)
    finally:
        target.write_text(original)
    counts = summary(output)
    assert code not in (0, 5) and counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0), output[-3000:]


def test_the_unbroken_copy_passes(tree: Path) -> None:
    """The same tests pass on the untouched copy: the failures above come from the mutations.
    One child for all of them (every pytest start costs seconds on a loaded host); the union
    of the selections picks the same tests, and a few namesakes with them."""
    files = sorted({m.tests for m in MUTATIONS.values()})
    select = " or ".join(sorted({m.select for m in MUTATIONS.values()}))
    code, output = run_tests(tree, files, select)
    counts = summary(output)
    assert code == 0 and counts.get("passed", 0) >= len({(m.tests, m.select) for m in MUTATIONS.values()}), output[-3000:]
    assert not counts.get("skipped"), output[-3000:]
