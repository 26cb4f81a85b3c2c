#!/usr/bin/env python3
"""nvtrace from a source checkout that is not installed: ``python scripts/nvtrace.py ...``.

The installed package provides ``nvtrace`` as a console script (``nvshell.nvtrace``); this file
only puts the repository on the import path first.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nvshell.nvtrace import console_main  # noqa: E402

if __name__ == "__main__":
    console_main()
