"""Benchmark: wall time and peak memory of `comical simulate` (target for paper: < 5 min, < 4 GiB on 2 cores).

    python benchmarks/bench_simulate.py --preset paper [--images t1,t2 --voxel-mm 4]

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
    parser.add_argument("--images", help="modalities, e.g. t1,t2 (comical simulate --images)")
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    args = parser.parse_args()
    images = ["--images", args.images, "--voxel-mm", str(args.voxel_mm)] if args.images else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cohort"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "comical", "simulate", "--preset", args.preset, "--seed",
                        str(args.seed), "--out", str(out), *images], check=True)
        wall = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        image_size = sum(p.stat().st_size for p in (out / "images").rglob("*") if p.is_file()) if images else 0
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    what = f" --images {args.images} --voxel-mm {args.voxel_mm:g}" if images else ""
    of_images = f" ({image_size / 2**20:.0f} MiB of images)" if images else ""
    print(f"| simulate --preset {args.preset}{what} | {wall:.0f} s | {peak_gib:.2f} GiB | {size / 2**20:.0f} MiB on disk"
          f"{of_images} | {machine} |")


if __name__ == "__main__":
    main()
