"""Benchmark: `comical images import` of the mini cohort's T1 volumes written as NIfTI, with 1 and 2 CPUs of Ray.

    python benchmarks/bench_image_import.py --work /tmp/bench-import [--voxel-mm 4]

Simulates the mini cohort with T1 volumes into --work (unless there), writes each volume as
NIFTI/{eid}/T1.nii.gz with nibabel, then runs `comical images import --workers N` for N = 1 and 2, each into a fresh
store, one run each, side by side. Measured: the command's wall time, and the peak resident memory of its whole
process tree (the driver, Ray's raylet and GCS, the import tasks; sampled every 0.1 s with psutil; Ray's object
store is shared memory and counts where it is touched).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mini_images import mini_image_cohort  # benchmarks/ is the script's folder: on sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    args = parser.parse_args()
    cohort = mini_image_cohort(args.work, args.voxel_mm)
    nifti = args.work / f"nifti_{args.voxel_mm:g}mm"
    if not (nifti / "done").is_file():
        export(cohort, nifti)
    rows = []
    for workers in (1, 2):
        out = args.work / f"import_{workers}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "comical", "images", "import", "--t1", str(nifti / "{eid}" / "T1.nii.gz"),
                   "--subjects", str(cohort / "covariates.csv"), "--out", str(out), "--workers", str(workers)]
        seconds, peak = run_measured(command)
        rows.append((workers, seconds, peak))
    volumes = len(list(nifti.glob("*/T1.nii.gz")))
    print(f"| images import, {volumes} NIfTI T1 volumes at {args.voxel_mm:g} mm | " + " | ".join(
        f"{w} worker{'s' if w > 1 else ''}: {s:.1f} s ({volumes / s:.0f} volumes/s), peak {p / 2**20:,.0f} MiB"
        for w, s, p in rows) + f" | {platform.machine()}, {_cpus()} CPUs |")


def export(cohort: Path, nifti: Path) -> None:
    """Every volume of the cohort's store as NIFTI/{eid}/T1.nii.gz (nibabel), as a UK Biobank download holds them."""
    import nibabel
    import numpy as np

    from comical.data_io.images import open_image_store

    store = open_image_store(cohort / "images")
    affine = np.array(store.manifest["affine"])
    for volumes, eids in store.batches("t1"):
        for volume, eid in zip(volumes, eids):
            (nifti / str(eid)).mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(volume, affine), nifti / str(eid) / "T1.nii.gz")
    (nifti / "done").write_text("")


def run_measured(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak resident bytes of the process tree)."""
    measured = run_measured_pss(command, pss_every=0)
    return measured["seconds"], measured["peak_rss"]


def run_measured_pss(command: list[str], *, pss_every: float = 1.0) -> dict:
    """Wall seconds; the process tree's peak summed RSS (sampled every 0.1 s: pages shared between processes, such
    as Ray's object store, count once per process that maps them); with `pss_every` > 0 also its peak summed PSS
    (each shared page split between its processes, so counted once in the sum; read from smaps every `pss_every`
    s, which costs CPU) and each process's own peak PSS and peak USS (its private pages: PSS minus USS is its share of
    pages it shares, Ray's object store among them), by its title (Ray names its workers ray::<actor>)."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    root, peak, peak_pss, by_process, last_pss, uss = psutil.Process(process.pid), 0, 0, {}, 0.0, {}
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            if pss_every and time.perf_counter() - last_pss >= pss_every:
                last_pss, total = time.perf_counter(), 0
                for p in tree:
                    full = p.memory_full_info()
                    title = (p.cmdline() or [p.name()])[0].split("/")[-1][:60]
                    by_process[title] = max(by_process.get(title, 0), full.pss)
                    uss[title] = max(uss.get(title, 0), full.uss)
                    total += full.pss
                peak_pss = max(peak_pss, total)
        except psutil.Error:
            pass
        time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode})")
    return {"seconds": time.perf_counter() - start, "peak_rss": peak, "peak_pss": peak_pss,
            "peak_pss_by_process": dict(sorted(by_process.items(), key=lambda kv: -kv[1])[:8]),
            "peak_uss_by_process": dict(sorted(uss.items(), key=lambda kv: -kv[1])[:8])}


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
