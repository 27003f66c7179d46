"""SCIENCE.md's positive-control figure: each method's share of its ceiling's lift against the signal.

    python benchmarks/positive_control_figure.py   # reads benchmarks/positive-control-*.csv, writes positive-control.png

The CSVs are `comical bench positive-control --method M` results.csv files (SCIENCE.md names each command). Lines:
the mean over a method's seeds at each signal; the rotation benchmark, whose dial is h_g, has its own panel.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

HERE = Path(__file__).resolve().parent
LINES = {  # file, share column, label
    "comical_auprc": ("positive-control-comical.csv", "auprc_share", "COMICAL: association AUPRC (of a GWAS's lift)"),
    "comical_within": ("positive-control-comical.csv", "within_bucket_share", "COMICAL: within-bucket accuracy"),
    "gemcont": ("positive-control-gemcont.csv", "latent_r2_share", "GEMCONT (volumes): latent R^2 (of the lift to 1)"),
    "cgni": ("positive-control-cgni.csv", "cgni_share", "CGNI: balanced accuracy (of the true features' lift)"),
    "momentum": ("positive-control-momentum.csv", "latent_r2_share", "T1/T2 joint: latent R^2 (of the lift to 1)"),
}


def main() -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    for file, column, label in LINES.values():
        path = HERE / file
        if not path.is_file():
            continue
        table = pl.read_csv(path).group_by("signal").agg(pl.col(column).cast(pl.Float64).mean()).sort("signal")
        left.plot(table["signal"], table[column], marker="o", label=label)
    left.axhline(1, color="grey", ls="--", lw=1, label="ceiling")
    left.axhline(0, color="black", lw=0.8, label="floor")
    left.set(xscale="log", xlabel="signal K (comical simulate --signal)", ylabel="share of the ceiling's lift",
             title="Positive controls (mini cohort, one seed)")
    left.legend(fontsize=7)
    rotation = pl.read_csv(HERE / "positive-control-rotation.csv")
    right.scatter(rotation["signal"], rotation["r2_share"], label="share of the supervised model's lift")
    right.scatter(rotation["signal"], rotation["ratio_to_ceiling"], marker="x", label="R^2 / supervised R^2")
    right.axhline(0.9, color="red", ls=":", lw=1, label="issue 32's bar (ratio 0.9)")
    right.set(xlabel="h_g", title="Rotation benchmark (3 populations)", ylim=(0, 1.05))
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "positive-control.png", dpi=100)


if __name__ == "__main__":
    main()
