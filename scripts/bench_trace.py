#!/usr/bin/env python3
"""What tracing costs on the data path: fio QD32 IOPS in the test guest, three ways, alternating.

* ``disabled``: this tree, every trace point off (the call sites' ``if T.X.enabled:``
  checks are still there, each one attribute load);
* ``file``: this tree with ``-trace nvme_cmd_* -trace file=...`` (two records per
  command, recorded to a msgpack file);
* ``notrace``: a copy of this tree in a temporary directory where an AST transform
  replaced every ``T.X.enabled`` with ``False`` and removed the blocks that become dead
  (``if T.X.enabled: ...``; ``a or T.X.enabled`` becomes ``a``): a build with no trace
  calls at all.

Machines here are noisy, so the script boots each variant in turn, ROUNDS times, and
reports the median IOPS and the ratios disabled/notrace and file/notrace.

    sudo python3 scripts/bench_trace.py [--rounds 3] [--runtime 5] [--json]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nvshell.testing import GUEST_DIR, NvshellProcess, guest_unavailable_reason  # noqa: E402

VARIANTS = ("disabled", "file", "notrace")


# ---------------------------------------------------------------------------------------
# The "no trace calls" build


class StripTrace(ast.NodeTransformer):
    """``T.X.enabled`` -> ``False``, then fold boolean operators and drop dead ``if`` blocks."""

    def __init__(self, alias: str = "T") -> None:
        self.alias = alias
        self.removed = 0

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if (node.attr == "enabled" and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == self.alias):
            self.removed += 1
            return ast.copy_location(ast.Constant(False), node)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        false = [isinstance(v, ast.Constant) and v.value is False for v in node.values]
        if isinstance(node.op, ast.And) and any(false):
            return ast.copy_location(ast.Constant(False), node)
        if isinstance(node.op, ast.Or):
            rest = [v for v, f in zip(node.values, false) if not f]
            if not rest:
                return ast.copy_location(ast.Constant(False), node)
            if len(rest) == 1:
                return rest[0]
            node.values = rest
        return node

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt]:
        self.generic_visit(node)
        if isinstance(node.test, ast.Constant) and node.test.value is False:
            return node.orelse or [ast.copy_location(ast.Pass(), node)]
        return node


def strip_source(source: str) -> tuple[str, int]:
    """The module without trace calls, and how many ``enabled`` checks were removed."""
    tree = ast.parse(source)
    alias = None
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "device":
            for name in stmt.names:
                if name.name == "trace":
                    alias = name.asname or "trace"
    if alias is None:
        return source, 0
    t = StripTrace(alias)
    tree = ast.fix_missing_locations(t.visit(tree))
    return ast.unparse(tree) + "\n", t.removed


def make_notrace_tree(dest: Path) -> int:
    """Copy the repository to ``dest`` and strip every trace check; returns how many."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.msgpack", ".pytest_cache"))
    removed = 0
    for path in sorted((dest / "device").rglob("*.py")):
        if path.name.startswith("trace"):
            continue
        new, n = strip_source(path.read_text())
        if n:
            path.write_text(new)
            removed += n
    left = [str(p) for p in (dest / "device").rglob("*.py")
            if not p.name.startswith("trace") and re.search(r"\bT\.[A-Z_]+\.enabled\b", p.read_text())]
    if left:
        raise RuntimeError(f"trace checks left in {left}")
    return removed


# ---------------------------------------------------------------------------------------
# Running


class TreeProcess(NvshellProcess):
    """NvshellProcess running the program of another source tree (``python -m`` uses the cwd)."""

    def __init__(self, tree: Path, run_dir: Path, *args: str) -> None:
        super().__init__(run_dir, *args, env={"PYTHONPATH": str(tree)})
        self.tree = tree

    def start(self, wait_for: list[str] | None = None, timeout: float = 20.0) -> "TreeProcess":
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "nvshell", *self.args], cwd=self.tree, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        for name in wait_for if wait_for is not None else ["ctrl0.sock", "qmp.sock"]:
            self.wait_socket(self.run_dir / name, timeout)
        return self


def guest_script(runtime: int) -> str:
    return f"""
set -e
DEV=$(ls /dev/nvme*n1 | head -n1)
fio --name=qd32 --filename=$DEV --direct=1 --bs=4k --ioengine=libaio --rw=randread --iodepth=32 \\
    --time_based --runtime={runtime} --size=256M --output-format=terse --terse-version=3 >/tmp/out 2>&1 \\
    || {{ cat /tmp/out; exit 1; }}
echo "result qd32 $(cut -d';' -f8 /tmp/out | tail -n1)"
"""


def run_guest_once(script: Path, sock: Path) -> float:
    cmd = ["bash", str(GUEST_DIR / "run.sh"), "--script", str(script), "--timeout", "300", "--socket", str(sock)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    m = re.search(r"^result qd32 ([\d.]+)$", done.stdout, re.M)
    if done.returncode or not m:
        raise RuntimeError(f"guest failed ({done.returncode}):\n{done.stdout}")
    return float(m.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="boots per variant (alternating)")
    parser.add_argument("--runtime", type=int, default=5, help="seconds of fio per boot")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    reason = guest_unavailable_reason()
    if reason:
        print(f"bench_trace: {reason}", file=sys.stderr)
        return 2
    iops: dict[str, list[float]] = {v: [] for v in VARIANTS}
    records = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        removed = make_notrace_tree(tmp / "notrace")
        print(f"notrace tree: {removed} trace checks removed", file=sys.stderr)
        script = tmp / "bench.sh"
        script.write_text(guest_script(args.runtime))
        for rnd in range(args.rounds):
            for variant in VARIANTS:
                run_dir = tmp / f"{variant}{rnd}"
                trace = tmp / f"{variant}{rnd}.msgpack"
                if variant == "notrace":
                    proc: NvshellProcess = TreeProcess(tmp / "notrace", run_dir)
                elif variant == "file":
                    proc = NvshellProcess(run_dir, "-trace", "nvme_cmd_*", "-trace", f"file={trace}")
                else:
                    proc = NvshellProcess(run_dir)
                with proc:
                    iops[variant].append(run_guest_once(script, run_dir / "ctrl0.sock"))
                if variant == "file":
                    records = max(records, trace.stat().st_size)
                    trace.unlink()
            print(f"round {rnd + 1}: " + ", ".join(f"{v}={iops[v][-1]:.0f}" for v in VARIANTS), file=sys.stderr)
    med = {v: statistics.median(iops[v]) for v in VARIANTS}
    result = {"runtime": args.runtime, "rounds": args.rounds, "iops": iops, "median": med,
              "ratio_disabled_vs_notrace": med["disabled"] / med["notrace"],
              "ratio_file_vs_notrace": med["file"] / med["notrace"],
              "max_trace_file_bytes": records}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"QD32 4k randread IOPS (median of {args.rounds}, {args.runtime}s each):")
        for v in VARIANTS:
            print(f"  {v:<9} {med[v]:>10.0f}   {' '.join(f'{x:.0f}' for x in iops[v])}")
        print(f"  all trace points disabled / no trace calls: {result['ratio_disabled_vs_notrace']:.3f}")
        print(f"  nvme_cmd_* to a file      / no trace calls: {result['ratio_file_vs_notrace']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
