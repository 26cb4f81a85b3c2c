"""The fast suite fails, never skips, when the code it tests is broken or missing.

In a scratch copy of the tree: (1) the NVM Read handler is deleted, (2) the controller
module is renamed.  Each time the tests that drive the controller (and that once were
guarded by import-keyed skips) must fail, not turn into skips while the run stays green.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The modules that drive the real controller and the ones that used to skip without it.
SUITE = ["tests/test_nvm.py", "tests/test_controller_e2e.py", "tests/test_machine.py", "tests/test_hmp.py",
         "tests/test_logs.py", "tests/test_ns_admin.py"]


def scratch(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", ".hypothesis", ".pytest_cache", ".venv", "*.sock"))
    return tree


def run_suite(tree: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not guest", "-p", "no:cacheprovider",
                          "-p", "no:randomly", *SUITE], cwd=tree, env=env, capture_output=True, text=True, timeout=600)
    return run.returncode, run.stdout + run.stderr


#: pytest's closing line: "3 passed, 1 skipped in 2.10s" (``-q``), with or without "=" rules.
_SUMMARY_LINE = re.compile(r"\b\d+ (?:passed|failed|skipped|errors?|deselected)\b.* in [\d.]+s\b")


def summary(output: str) -> dict[str, int]:
    """The counts of pytest's summary line: the last line that *is* one, not the last line of
    ``output``. The output is stdout + stderr, so a line a thread writes to stderr while the
    child exits (a loaded host makes such races likelier) ends up after the summary."""
    for line in reversed(output.splitlines()):
        if _SUMMARY_LINE.search(line):
            return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", line)}
    return {}


def assert_fails_not_skips(code: int, output: str) -> None:
    counts = summary(output)
    assert code not in (0, 5), output[-3000:]                     # 5: nothing collected
    assert counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0) > 0, output[-3000:]
    assert counts.get("skipped", 0) == 0, output[-3000:]


@pytest.mark.parametrize("mutation", ["delete-read-handler", "rename-controller-module"])
def test_broken_code_fails_the_fast_suite(tmp_path: Path, mutation: str) -> None:
    tree = scratch(tmp_path)
    if mutation == "delete-read-handler":
        nvm = tree / "device" / "nvme" / "nvm.py"
        text = nvm.read_text()
        gone = re.sub(r"@NVM\.command\(NvmOpcode\.READ\b[^\n]*\n", "", text)
        assert gone != text, "the Read handler's registration was not found"
        nvm.write_text(gone)
    else:
        ctrl = tree / "device" / "nvme" / "controller.py"
        ctrl.rename(ctrl.with_name("controller_renamed.py"))
    assert_fails_not_skips(*run_suite(tree))


def test_the_unbroken_copy_passes(tmp_path: Path) -> None:
    """The same run on an untouched copy is green: the failures above come from the mutation."""
    code, output = run_suite(scratch(tmp_path))
    assert code == 0 and summary(output).get("skipped", 0) == 0, output[-3000:]
