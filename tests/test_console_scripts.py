"""Every console script declared in pyproject.toml exists and has a complete ``--help``: each
option of its parser is listed with a help text, with examples.  Run through the declared entry
point (``module:function``), so the declaration itself is what is tested, installed or not."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tomllib

import pytest

from nvshell.testing import REPO

SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
#: The argparse parser behind each script (its options are what --help must list).
PARSERS = {
    "nvshell": ("nvshell.main", "build_parser"),
    "nvtrace": ("nvshell.nvtrace", "build_parser"),
    "nvshell-vm": ("nvshell.vm", "build_parser"),
}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    module, func = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv = ['{name}', *sys.argv[1:]]; from {module} import {func}; {func}()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="100"))


def test_every_script_is_covered() -> None:
    assert set(SCRIPTS) == set(PARSERS)


def _check_help(parser: argparse.ArgumentParser, text: str) -> None:
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in text, f"{parser.prog} --help lacks {opt}"
        if action.help is not argparse.SUPPRESS:
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help text"
    assert "examples" in text


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_help_is_complete(name: str) -> None:
    import importlib

    done = run_script(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {name}")
    module, func = PARSERS[name]
    _check_help(getattr(importlib.import_module(module), func)(), done.stdout)


def test_nvtrace_export_help() -> None:
    from nvshell.nvtrace import build_export_parser

    done = run_script("nvtrace", "export", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: nvtrace export")
    _check_help(build_export_parser(), done.stdout)
    assert "CLOCK_REALTIME" in done.stdout and "depth" in done.stdout
    assert "nvtrace export --perfetto" in run_script("nvtrace", "--help").stdout
