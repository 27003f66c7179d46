"""Benchmark: every image command on a cohort with T1 and T2 volumes, each step's wall time and peak memory (issue 35).

    python benchmarks/bench_paper_images.py --work /tmp/paper4 [--preset paper] [--voxel-mm 4] [--epochs 1]

Simulates the cohort into --work (unless there), then runs, one at a time and in this order: `qc`; GEMCONT
(`train --task gemcont --disease AD`), its `embed` and `evaluate gemcont`; the joint T1/T2 model (`train --task
momentum-t1t2`), its `embed`, `evaluate momentum --qc` and `heritability --rg t1_,t2_ --qc`; `cgni` (no loss grid).
Each is a fresh `python -m comical` process on this machine's CPUs; measured: its wall time and the peak resident
memory of its whole process tree (the driver, Ray's raylet and GCS, its workers; sampled every 0.1 s with psutil,
benchmarks/bench_image_import.py). A step already in --work/results.json is not run again, so a stopped bench
resumes. Prints BENCHMARKS.md's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from bench_image_import import _cpus, run_measured_pss  # benchmarks/ is the script's folder: on sys.path


def steps(work: Path, cohort: Path, epochs: int) -> list[tuple[str, list[str]]]:
    gemcont, momentum = work / "gemcont", work / "momentum"
    return [
        ("qc", ["qc", "--cohort", cohort, "--out", work / "qc"]),
        ("train gemcont (AD panel)", ["train", "--task", "gemcont", "--cohort", cohort, "--disease", "AD", "--out",
                                      gemcont, "--epochs", epochs]),
        ("embed gemcont", ["embed", "--run", gemcont, "--cohort", cohort, "--out", work / "gemcont.parquet"]),
        ("evaluate gemcont", ["evaluate", "gemcont", "--run", gemcont, "--cohort", cohort, "--out",
                              work / "gemcont_eval"]),
        ("train momentum-t1t2", ["train", "--task", "momentum-t1t2", "--cohort", cohort, "--out", momentum,
                                 "--epochs", epochs]),
        ("embed momentum-t1t2", ["embed", "--run", momentum, "--cohort", cohort, "--out",
                                 work / "momentum.parquet"]),
        ("evaluate momentum", ["evaluate", "momentum", "--runs", f"joint={momentum}", "--cohort", cohort, "--out",
                               work / "momentum_eval", "--qc", work / "qc"]),
        ("heritability (T1/T2 embeddings, rg)", ["heritability", "--embeddings", work / "momentum.parquet",
                                                 "--cohort", cohort, "--out", work / "h2", "--rg", "t1_,t2_",
                                                 "--qc", work / "qc"]),
        # the image stages (brain age, transfer CNN) for `epochs`, the feature stages their paper's 30; brain age on
        # 4,000 subjects, as the positive control does
        ("cgni (no loss grid)", ["cgni", "--cohort", cohort, "--out", work / "cgni", "--epochs",
                                 f"{epochs},{epochs},30,30", "--age-subjects", 4000]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # `python -m comical` from a checkout's root would import its comical/ folder, not the package
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    cohort = args.work / "cohort"
    plan = [("simulate", ["simulate", "--preset", args.preset, "--images", "t1,t2", "--voxel-mm", args.voxel_mm,
                          "--out", cohort])] + steps(args.work, cohort, args.epochs)
    for name, command in plan:
        if name in results:
            continue
        measured = run_measured_pss([sys.executable, "-m", "comical", *map(str, command)])
        results[name] = {"seconds": round(measured["seconds"], 1), "peak_bytes": measured["peak_rss"],
                         "peak_pss_bytes": measured["peak_pss"],
                         "peak_pss_by_process": measured["peak_pss_by_process"],
                         "command": "comical " + " ".join(map(str, command))}
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"{name}: {measured['seconds']:.0f} s, peak RSS {measured['peak_rss'] / 2**30:.2f} GiB, PSS "
              f"{measured['peak_pss'] / 2**30:.2f} GiB", flush=True)
    machine = f"{platform.machine()}, {_cpus()} CPUs"
    for name, r in results.items():
        pss = f"{r['peak_pss_bytes'] / 2**30:.2f} GiB" if "peak_pss_bytes" in r else "not measured"
        print(f"| {name} | {r['seconds']:,.0f} s | {r['peak_bytes'] / 2**30:.2f} GiB | {pss} | {machine} | "
              f"`{r['command']}` |")


if __name__ == "__main__":
    main()
