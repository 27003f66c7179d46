"""Benchmark: wall time and peak memory of `comical simulate` (target for paper: < 5 min, < 4 GiB on 2 cores).

    python benchmarks/bench_simulate.py --preset paper

Runs the CLI in a child process and reads its peak RSS from getrusage(RUSAGE_CHILDREN); prints a
Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="paper", choices=["mini", "paper"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cohort"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "comical", "simulate", "--preset", args.preset, "--seed",
                        str(args.seed), "--out", str(out)], check=True)
        wall = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    print(f"| simulate --preset {args.preset} | {wall:.0f} s | {peak_gib:.2f} GiB | {size / 2**20:.0f} MiB on disk "
          f"| {machine} |")


if __name__ == "__main__":
    main()
