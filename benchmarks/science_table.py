"""SCIENCE.md's COMICAL table from the runs `benchmarks/science_comical.sh WORK` leaves in WORK.

    python benchmarks/science_table.py WORK

One row per store (top n%, real or null): test bucket and within-bucket accuracy with their chance and null
levels, the calibrated and the paper's association tests (pairs at p < 0.05 and at FDR 5%), and AUPRC against
the planted pairs for COMICAL and its baselines.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl


def row(work: Path, top: int, kind: str) -> str:
    run = work / f"run{top}-{kind}"
    m = json.loads((run / "test_metrics.json").read_text())
    manifest = json.loads((work / f"pairs{top}-{kind}" / "manifest.json").read_text())
    calibrated = pl.read_csv(run / "associations.tsv", separator="\t", null_values="NA")
    paper = pl.read_csv(run / "associations_paper.tsv", separator="\t", null_values="NA")
    truth = json.loads((run / "truth_score.json").read_text())["methods"]

    def tested(t: pl.DataFrame) -> str:
        p = t["p"].drop_nulls()
        return f"{(p < 0.05).sum()} / {(t['p_adjusted'] < 0.05).sum()} of {p.len()}"

    auprc = " / ".join(f"{truth[k]['auprc']:.3f}" if truth[k]["auprc"] is not None else "NA"
                       for k in ("comical", "gwas", "gwas_test_subjects", "snp_only"))
    return (f"| {top}% {kind} | {manifest['n_subjects']:,} / {manifest['splits']['test']['subjects']:,} | "
            f"{len(manifest['buckets'])} / {manifest['pairs_per_subject']} | {m['bucket_accuracy']:.3f} "
            f"({m['bucket_accuracy_chance']:.3f}) | {m['within_bucket_accuracy']:.4f} "
            f"({m['within_bucket_accuracy_chance']:.4f}, {m['within_bucket_accuracy_null']:.4f}) | {m['loss']:.3f} | "
            f"{tested(calibrated)} | {tested(paper)} | {truth['comical']['n_planted']} | {auprc} "
            f"({truth['comical']['auprc_chance']:.3f}) | {truth['comical']['auroc']:.3f} / {truth['gwas']['auroc']:.3f} |")


def main(work: Path) -> None:
    print("| store | subjects / test | buckets / pairs per subject | bucket acc. (chance) | within-bucket acc. "
          "(chance, null) | test loss | calibrated: p<0.05 / FDR 5% | paper's test: p<0.05 / FDR 5% | planted "
          "pairs | AUPRC COMICAL / GWAS train / GWAS test subj. / SNP only (chance) | AUROC COMICAL / GWAS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for top in (5, 1):
        for kind in ("real", "null"):
            if (work / f"run{top}-{kind}" / "truth_score.json").is_file():
                print(row(work, top, kind))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
