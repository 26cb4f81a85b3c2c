#!/usr/bin/env python3
"""nvtrace: decode nvshell trace files (``-trace file=PATH``) as text, JSON lines or a summary.

Usage: python scripts/nvtrace.py FILE [--json] [--summary] [--follow] [--name GLOB]
(run with --help for details).  The logic lives in ``device.trace_decode`` so that it
can be tested and reused without a subprocess; this file only makes the repository
importable when the script is run from a checkout.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nvshell.device.trace_decode import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
