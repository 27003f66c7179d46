"""Benchmark: pair-making speed, memory and store size; and the column-wise build against a per-pair
Python-object build like the reference implementation's (a dict per pair with a 64-float PLE list, pickled).

    python benchmarks/bench_pairs.py --paper-cohort PAPER/ --paper-qc QC/    # part A (paper scale)
    python benchmarks/bench_pairs.py                                         # part B only (mini cohort)

Part A runs `comical pairs --top-n-perc 1` on the paper cohort in a child process (peak RSS from
getrusage), with QC given and without. Part B times, in one process on the mini cohort at --top-n-perc 5, our
`make_pairs` and the per-pair build from the same inputs, and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def _child(args: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "comical", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def part_a(cohort: Path, qc: Path, tmp: Path) -> None:
    for label, extra in (("pairs, QC given", ["--qc", str(qc)]), ("pairs incl. QC + PheWAS", [])):
        out = tmp / label.replace(" ", "_").replace(",", "").replace("+", "")
        wall, peak = _child(["pairs", "--cohort", str(cohort), "--top-n-perc", "1", "--out", str(out), *extra])
        manifest = json.loads((out / "manifest.json").read_text())
        n = sum(s["pairs"] for s in manifest["splits"].values())
        size = sum(f.stat().st_size for s in ("train", "val", "test") for f in (out / s).glob("*.parquet"))
        print(f"| paper, --top-n-perc 1, {label} | {n:,} pairs | {wall:.0f} s | {peak:.2f} GiB (max of runs so far) "
              f"| {size / n:.1f} B/pair |")


def part_b(tmp: Path) -> None:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.simulate import write_cohort
    from comical.data_io.tokenizers import fit_ple_edges, ple_encode
    from comical.data_io.traits import load_trait_map
    from comical.data_io.ukb_fields import IDPS, PAIR_DISEASES
    from comical.pipelines.comical.catalog_sets import catalog_snp_sets
    from comical.pipelines.comical.pairs import PairsConfig, make_pairs
    from comical.pipelines.statgen.phewas import run_phewas
    from comical.pipelines.statgen.qc import run_qc

    (tmp / "mini").mkdir()
    write_cohort(tmp / "mini", preset="mini", seed=0)
    cohort = load_cohort(tmp / "mini")
    qc = run_qc(cohort)
    _, idp_map = run_phewas(cohort, qc)
    variants = cohort.genotypes.variants.with_columns((qc.variants["filter"] == "PASS").alias("passed_qc"))
    selected, _ = catalog_snp_sets(cohort.catalog, variants, load_trait_map(), top_n_perc=5, diseases=PAIR_DISEASES)

    (tmp / "ours").mkdir()
    start = time.perf_counter()
    manifest = make_pairs(cohort, qc.pcs["eid"], idp_map, selected, PairsConfig(top_n_perc=5), tmp / "ours",
                          diseases=PAIR_DISEASES)
    ours = time.perf_counter() - start
    ours_bytes = sum(f.stat().st_size for f in (tmp / "ours").rglob("*.parquet"))

    # The per-pair build: a Python dict per pair, the PLE vector as a list of floats, pickled.
    start = time.perf_counter()
    keep = cohort.eids.is_in(qc.pcs["eid"].implode()).to_numpy()
    rows = cohort.sample_index[keep]
    bim = {v: i for i, v in enumerate(cohort.genotypes.variants["variant_id"])}
    genotypes = cohort.genotypes.read(rows, [bim[s] for s in manifest["snps"]], dtype=np.int8)
    values = cohort.idps.filter(pl.Series(keep)).select(IDPS).to_numpy()
    bins, frac = ple_encode(values, fit_ple_edges(values, manifest["n_bins"]))
    snp_col = {s: k for k, s in enumerate(manifest["snps"])}
    pairs = []
    for i in range(rows.size):
        for disease, bucket in manifest["buckets"].items():
            for snp in bucket["snps"]:
                token = int(genotypes[i, snp_col[snp]])
                for idp in bucket["idps"]:
                    j = IDPS.index(idp)
                    b = int(bins[i, j])
                    ple = [1.0] * b + [float(frac[i, j])] + [0.0] * (manifest["n_bins"] - b - 1)
                    pairs.append({"subject": i, "snp": snp, "idp": idp, "token": token, "disease": disease,
                                  "ple": ple})
    with open(tmp / "pairs.pkl", "wb") as f:
        pickle.dump(pairs, f)
    reference = time.perf_counter() - start
    reference_bytes = (tmp / "pairs.pkl").stat().st_size
    n = len(pairs)
    print(f"| mini, --top-n-perc 5, {n:,} pairs | column-wise store: {ours:.2f} s, {ours_bytes / n:.1f} B/pair | "
          f"per-pair objects + pickle: {reference:.1f} s, {reference_bytes / n:.0f} B/pair | "
          f"{reference / ours:.0f}x faster, {reference_bytes / ours_bytes:.0f}x smaller |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paper-cohort", type=Path)
    parser.add_argument("--paper-qc", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_cohort:
            part_a(args.paper_cohort, args.paper_qc, Path(tmp))
        part_b(Path(tmp))


if __name__ == "__main__":
    main()
