"""Benchmark: one `comical train` of an image task, its wall time and the peak memory of each process (issue 35).

    python benchmarks/bench_train_memory.py --cohort PAPER_COHORT --task gemcont --out W/gemcont_pss \
        [--config F.yaml] [--epochs 1]

Runs `comical train --task T --cohort C [--disease AD for gemcont] --out OUT --epochs N [--config F]` as a fresh
process (OUT is replaced) and prints `run_measured_pss`'s JSON: wall seconds, the process tree's peak RSS and peak
PSS, and each process's peak PSS and USS by title (the Ray Train worker, the driver, Ray Data's readers). Set
RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION in the environment to run with another object-store size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench_image_import import run_measured_pss  # benchmarks/ is the script's folder: on sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    cohort, out = args.cohort.resolve(), args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    os.chdir(out.parent)  # `python -m comical` from a checkout's root would import its comical/ folder
    command = [sys.executable, "-m", "comical", "train", "--task", args.task, "--cohort", str(cohort), "--out",
               str(out), "--epochs", str(args.epochs)]
    command += ["--disease", "AD"] if args.task == "gemcont" else []
    command += ["--config", str(args.config.resolve())] if args.config else []
    print(json.dumps(run_measured_pss(command), indent=1))


if __name__ == "__main__":
    main()
