"""Bounded seeded fuzzing of everything a hostile outsider can send (issue 13): vfio-user
messages, NVMe commands from a DMA-capable client, QMP input.

The fast suite runs each engine (tests/fuzz_engines.py) for a few seconds with fixed
seeds; ``pytest -m fuzz`` runs the same engines for NVSHELL_FUZZ_SECONDS (default 120)
each with a seed from NVSHELL_FUZZ_SEED (default: time-based, printed), and
``scripts/fuzz.py`` does the same from the command line and prints the figures.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.fuzz_engines import ENGINES

FAST_SECONDS = 2.5


@pytest.mark.parametrize("target,seed", [("vfio", 13), ("nvme", 13), ("qmp", 13)])
def test_fuzz_fast(target, seed, tmp_path):
    figures = ENGINES[target](FAST_SECONDS, seed, tmp_path)
    assert figures.inputs > 50, figures.line()
    assert figures.clean, figures.line() + "\n" + "\n".join(figures.notes[:20])


@pytest.mark.fuzz
@pytest.mark.parametrize("target", sorted(ENGINES))
def test_fuzz_long(target, tmp_path):
    seconds = float(os.environ.get("NVSHELL_FUZZ_SECONDS", "120"))
    seed = int(os.environ.get("NVSHELL_FUZZ_SEED", str(int(time.time()))))
    figures = ENGINES[target](seconds, seed, tmp_path)
    print(figures.line())
    assert figures.clean, figures.line() + "\n" + "\n".join(figures.notes[:50])
