"""The wheel built from the tree installs one top-level package, ``nvshell``, and runs.

The tree is copied (sources only) so the build leaves nothing in the checkout;
``pip wheel --no-deps --no-build-isolation`` uses the venv's setuptools (no download);
the wheel is installed with ``pip install --no-deps --target`` and run with that
directory first on ``sys.path`` (its dependencies come from the current venv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree_copy(dest: Path) -> None:
    """The sources the build reads (not .git, caches or an earlier build)."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", ".hypothesis", ".pytest_cache", ".venv", "*.sock"))


def test_wheel_holds_only_nvshell_and_runs(tmp_path: Path) -> None:
    tree, wheels, target = tmp_path / "tree", tmp_path / "wheels", tmp_path / "site"
    _tree_copy(tree)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(tree)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("nvshell-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"nvshell", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, top
    for package in ("nvshell/device/nvme/controller.py", "nvshell/monitor/qmp/session.py", "nvshell/__main__.py"):
        assert package in names
    assert not any(n.startswith(("tests/", "device/", "monitor/", "scripts/")) for n in names)

    subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert {p.name for p in target.iterdir()} - {"bin"} == {"nvshell", wheel.name.split("-py3")[0] + ".dist-info"}
    env = dict(os.environ, PYTHONPATH=str(target))
    outside = tmp_path / "elsewhere"          # not the checkout: nothing can come from the tree
    outside.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import nvshell, nvshell.device.nvme.controller as c; "
                            "print(nvshell.__file__); print(c.__file__)"],
                           cwd=outside, env=env, check=True, capture_output=True, text=True, timeout=60)
    assert all(line.startswith(str(target)) for line in probe.stdout.split()), probe.stdout
    for argv in ([sys.executable, "-m", "nvshell", "--help"], [str(target / "bin" / "nvshell"), "--help"]):
        run = subprocess.run(argv, cwd=outside, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        assert "usage: nvshell" in run.stdout and "-object" in run.stdout, run.stdout
