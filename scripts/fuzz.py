#!/usr/bin/env python3
"""Run nvshell's fuzzers for longer than the fast suite does and print their figures.

    python scripts/fuzz.py [--seconds N] [--seed S] [vfio] [nvme] [qmp]

Each engine (tests/fuzz_engines.py) drives the real code through its real socket:
malformed vfio-user messages against a controller, random and targeted NVMe commands
from a DMA-capable client, random bytes and schema-shaped QMP requests against a real
machine. Exit status 1 if any run saw a crash, hang, protocol violation or leak.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fuzz_engines import ENGINES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET", help=f"any of {', '.join(sorted(ENGINES))} (default all)")
    parser.add_argument("--seconds", type=float, default=120.0, help="per target (default 120)")
    parser.add_argument("--seed", type=int, default=None, help="default: time-based (printed)")
    args = parser.parse_args()
    unknown = [t for t in args.targets if t not in ENGINES]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(sorted(ENGINES))}")
    logging.basicConfig(level=logging.CRITICAL)  # the engines collect ERROR records themselves
    seed = args.seed if args.seed is not None else int(time.time())
    failed = False
    for target in args.targets or sorted(ENGINES):
        figures = ENGINES[target](args.seconds, seed)
        print(figures.line(), flush=True)
        for note in figures.notes[:20]:
            print(f"  {note}")
        failed |= not figures.clean
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
