"""Heritability at scale: exact HE (the n x n GRM) against randomized HE (RHE-reg, no GRM), time and peak memory.

    python benchmarks/bench_heritability.py --cohort PAPER_COHORT --qc QC_DIR --sizes 2000,5000,10000,40000 \
        [--maf-bins 0.05,0.2]

On a cohort (the paper preset: 40,426 subjects), per size n: an embedding file of the first n QC-passed subjects
with 10 columns (AD's planted liability plus noise, and noise), then `heritability(..., method=M)` in a fresh
process for M in exact (sizes up to --exact-max) and randomized; each prints its wall time, peak RSS (the process's
ru_maxrss) and its h2 of the heritable column with se. The QC is read from --qc (made once by `comical qc`).
With --maf-bins, also randomized multi-component HE (RHE-mc, `--components`) over the pruned variants in MAF bins
cut at those frequencies: its total h2 and each bin's.
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
summary = heritability(sys.argv[1], sys.argv[2], sys.argv[3], qc_dir=sys.argv[4], method=sys.argv[5],
                       components=sys.argv[6] or None)
import polars as pl
h2 = pl.read_csv(sys.argv[3] + "/h2.csv").row(0, named=True)
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF)
                  .ru_maxrss / 2**20, "h2": h2["h2"], "se": h2["se"], "n": summary["n_subjects"],
                  "variants": summary["n_variants"],
                  "parts": {k[3:]: (v, h2["se_" + k[3:]]) for k, v in h2.items() if k.startswith("h2_")}}))
"""


def main() -> None:
    import numpy as np
    import polars as pl

    parser = argparse.ArgumentParser()
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--qc", type=Path, required=True)
    parser.add_argument("--sizes", default="2000,5000,10000,40000")
    parser.add_argument("--exact-max", type=int, default=10000)
    parser.add_argument("--maf-bins", help="MAF cut points for an RHE-mc run per size, e.g. 0.05,0.2")
    args = parser.parse_args()
    samples = pl.read_parquet(args.cohort / "truth" / "samples.parquet")
    kept = pl.read_csv(args.qc / "sample_qc.tsv", separator="\t", schema_overrides={"eid": pl.String})
    passing = set(kept.filter(pl.col("filter") == "PASS")["eid"].to_list())
    samples = samples.filter(pl.col("eid").cast(pl.String).is_in(passing))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        methods = [("exact", ""), ("randomized", "")]
        if args.maf_bins:
            cuts = [float(v) for v in args.maf_bins.split(",")]
            variants = pl.read_csv(args.qc / "variant_qc.tsv", separator="\t")
            edges = [0.0] + cuts + [0.5]
            names = [f"maf_{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]
            bins = np.clip(np.searchsorted(cuts, variants["maf"].to_numpy(), side="right"), 0, len(cuts))
            components = Path(tmp) / "maf_bins.tsv"
            variants.select("variant_id").with_columns(component=pl.Series([names[b] for b in bins])).write_csv(
                components, separator="\t")
            methods.append(("randomized", str(components)))
        for n in (int(v) for v in args.sizes.split(",")):
            part = samples.head(n)
            liability = part["liability_AD"].to_numpy()
            noise = rng.normal(size=(part.height, 10))
            columns = {"heritable": liability + noise[:, 0] * liability.std()}
            columns |= {f"noise_{k}": noise[:, k] for k in range(1, 10)}
            path = Path(tmp) / f"emb_{n}.parquet"
            pl.DataFrame({"eid": part["eid"], **columns}).write_parquet(path)
            for method, components in methods:
                if method == "exact" and n > args.exact_max:
                    continue
                label = "RHE-mc" if components else method
                out = Path(tmp) / f"out_{n}_{label}"
                result = subprocess.run([sys.executable, "-c", CHILD, str(path), str(args.cohort), str(out),
                                         str(args.qc), method, components], capture_output=True, text=True,
                                        check=True)
                row = json.loads(result.stdout.strip().splitlines()[-1])
                parts = ", ".join(f"{k} {v:.3f} ({e:.3f})" for k, (v, e) in row["parts"].items())
                print(f"n {row['n']:>6,} {label:>10}: {row['seconds']:7.1f} s, peak RSS {row['peak_rss_gib']:.2f} "
                      f"GiB, h2 {row['h2']:.3f} (se {row['se']:.3f}), {row['variants']:,} variants"
                      + (f"; {parts}" if parts else ""), flush=True)


if __name__ == "__main__":
    main()
