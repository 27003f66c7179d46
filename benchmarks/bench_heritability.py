"""Heritability at scale: exact HE (the n x n GRM) against randomized HE (RHE-reg, no GRM), time and peak memory.

    python benchmarks/bench_heritability.py --cohort PAPER_COHORT --qc QC_DIR --sizes 2000,5000,10000,40000

On a cohort (the paper preset: 40,426 subjects), per size n: an embedding file of the first n QC-passed subjects
with 10 columns (AD's planted liability plus noise, and noise), then `heritability(..., method=M)` in a fresh
process for M in exact (sizes up to --exact-max) and randomized; each prints its wall time, peak RSS (the process's
ru_maxrss) and its h2 of the heritable column with se. The QC is read from --qc (made once by `comical qc`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
from comical.pipelines.statgen.heritability import heritability
start = time.perf_counter()
summary = heritability(sys.argv[1], sys.argv[2], sys.argv[3], qc_dir=sys.argv[4], method=sys.argv[5])
import polars as pl
h2 = pl.read_csv(sys.argv[3] + "/h2.csv").row(0, named=True)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF)
                  .ru_maxrss / 2**20, "h2": h2["h2"], "se": h2["se"], "n": summary["n_subjects"],
                  "variants": summary["n_variants"]}))
"""


def main() -> None:
    import numpy as np
    import polars as pl

    parser = argparse.ArgumentParser()
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--qc", type=Path, required=True)
    parser.add_argument("--sizes", default="2000,5000,10000,40000")
    parser.add_argument("--exact-max", type=int, default=10000)
    args = parser.parse_args()
    samples = pl.read_parquet(args.cohort / "truth" / "samples.parquet")
    kept = pl.read_csv(args.qc / "sample_qc.tsv", separator="\t", schema_overrides={"eid": pl.String})
    passing = set(kept.filter(pl.col("filter") == "PASS")["eid"].to_list())
    samples = samples.filter(pl.col("eid").cast(pl.String).is_in(passing))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(v) for v in args.sizes.split(",")):
            part = samples.head(n)
            liability = part["liability_AD"].to_numpy()
            noise = rng.normal(size=(part.height, 10))
            columns = {"heritable": liability + noise[:, 0] * liability.std()}
            columns |= {f"noise_{k}": noise[:, k] for k in range(1, 10)}
            path = Path(tmp) / f"emb_{n}.parquet"
            pl.DataFrame({"eid": part["eid"], **columns}).write_parquet(path)
            for method in ("exact", "randomized"):
                if method == "exact" and n > args.exact_max:
                    continue
                out = Path(tmp) / f"out_{n}_{method}"
                result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.cohort), str(out),
                                         str(args.qc), method], capture_output=True, text=True, check=True)
                row = json.loads(result.stdout.strip().splitlines()[-1])
                print(f"n {row['n']:>6,} {method:>10}: {row['seconds']:7.1f} s, peak RSS {row['peak_rss_gib']:.2f} "
                      f"GiB, h2 {row['h2']:.3f} (se {row['se']:.3f}), {row['variants']:,} variants", flush=True)


if __name__ == "__main__":
    main()
