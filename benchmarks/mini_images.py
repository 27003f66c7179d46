"""The benchmarks' mini cohort with T1 volumes, simulated once into their work folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mini_image_cohort(work: Path, voxel_mm: float) -> Path:
    cohort = work / f"mini_{voxel_mm:g}mm"
    if not (cohort / "images" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "comical", "simulate", "--preset", "mini", "--images", "t1",
                        "--voxel-mm", str(voxel_mm), "--out", str(cohort)], check=True)
    return cohort
