"""Manhattan and QQ plots: one PNG pair per phenotype for a few phenotypes, one combined page for many."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl

PER_PHENOTYPE_LIMIT = 6  # above this, one combined page (plotting 154 pages would cost more than the GWAS)


def _positions(variants: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cumulative x position per variant, chromosome centres and labels (chromosomes in file order)."""
    chrom = variants["chrom"].to_numpy()
    pos = variants["pos"].to_numpy().astype(float)
    x = np.empty(len(pos))
    offset, centres, labels = 0.0, [], []
    for c in dict.fromkeys(chrom):
        rows = chrom == c
        x[rows] = pos[rows] - pos[rows].min() + offset
        centres.append(offset + np.ptp(pos[rows]) / 2)
        labels.append(str(c))
        offset += np.ptp(pos[rows]) + 1e6
    return x, np.array(centres), labels


def _plottable(neg: np.ndarray) -> np.ndarray:
    """+inf (a p-value below float64's range: the statistic's tail underflowed) drawn at the top of the finite
    values, not dropped: those are the strongest hits."""
    top = np.nanmax(np.where(np.isinf(neg), np.nan, neg), initial=0.0) if neg.size else 0.0
    return np.where(np.isposinf(neg), max(top, 320.0), neg)


def _manhattan(ax, x, neg, chrom, centres, labels, title):
    neg = _plottable(neg)
    colours = np.where(np.unique(chrom, return_inverse=True)[1] % 2 == 0, "#1f4e79", "#7fa7d0")
    ok = np.isfinite(neg)
    ax.scatter(x[ok], neg[ok], s=3, c=colours[ok], rasterized=True)
    ax.axhline(-math.log10(5e-8), color="red", lw=0.8, ls="--")
    ax.set(title=title, ylabel="-log10 p")
    ax.set_xticks(centres, labels, fontsize=6)


def _qq(ax, neg, title):
    neg = _plottable(neg)
    neg = np.sort(neg[np.isfinite(neg)])[::-1]
    _qq_points(ax, -np.log10((np.arange(1, neg.size + 1) - 0.5) / neg.size), neg, title)


def _qq_points(ax, expected, observed, title):
    ax.scatter(expected, observed, s=3, rasterized=True)
    # Each axis fits its own range: expected -log10 p ends near log10(n), observed can reach 40 or more, and a
    # square frame would squeeze the expected range into a sliver.
    right = expected.max(initial=1.0)
    ax.plot([0, right], [0, right], color="grey", lw=0.8)
    ax.set(title=title, xlabel="expected -log10 p", ylabel="observed -log10 p", xlim=(0, right * 1.05),
           ylim=(0, max(right, observed.max(initial=1.0)) * 1.05))


class _PooledQQ:
    """The QQ points of many phenotypes pooled, gathered one phenotype at a time: values above TAIL kept
    exactly, the bulk below counted in bins of 0.001 (one point per bin), so memory does not grow with the
    variant count and the plot looks the same."""

    TAIL = 3.0

    def __init__(self):
        self.tail, self.bins = [], np.zeros(int(self.TAIL * 1000) + 1, np.int64)

    def add(self, neg: np.ndarray) -> None:
        neg = _plottable(neg[~np.isnan(neg)])
        self.tail.append(neg[neg > self.TAIL])
        self.bins += np.bincount(np.round(neg[neg <= self.TAIL].clip(min=0) * 1000).astype(np.int64),
                                 minlength=self.bins.size)

    def draw(self, ax, title):
        tail = np.sort(np.concatenate(self.tail))[::-1]
        counts = self.bins[::-1]  # from the largest bin value down, after the tail
        filled = counts > 0
        total = tail.size + counts.sum()
        rank = np.r_[np.arange(1, tail.size + 1), tail.size + np.cumsum(counts)[filled] - counts[filled] / 2 + 0.5]
        observed = np.r_[tail, (np.arange(self.bins.size)[::-1] / 1000)[filled]]
        _qq_points(ax, -np.log10((rank - 0.5) / total), observed, title)


def plot_all(variants: pl.DataFrame, neg_log10_p: Mapping[str, np.ndarray], summary: dict, prefix: Path) -> None:
    """`neg_log10_p` is read one phenotype at a time (it may load each from disk)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, centres, labels = _positions(variants)
    chrom = variants["chrom"].to_numpy()
    names = list(neg_log10_p)
    if len(names) <= PER_PHENOTYPE_LIMIT:
        for name in names:
            neg = neg_log10_p[name]
            fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5), gridspec_kw={"width_ratios": [3, 1]})
            lam = summary["phenotypes"][name]["lambda_gc"]
            _manhattan(left, x, neg, chrom, centres, labels, name)
            _qq(right, neg, f"QQ, lambda_GC {lam:.3f}" if lam else "QQ")
            fig.tight_layout()
            fig.savefig(f"{prefix}.{name}.png", dpi=100)
            plt.close(fig)
        return
    # Many phenotypes: the strongest per variant across phenotypes, the 8 phenotypes with most hits, one QQ.
    best, pooled = np.full(len(x), np.nan), _PooledQQ()
    for name in names:
        neg = neg_log10_p[name]
        best = np.fmax(best, neg)
        pooled.add(neg)
    ranked = sorted(names, key=lambda n: -summary["phenotypes"][n]["max_neg_log10_p"])[:8]
    fig, axes = plt.subplots(5, 2, figsize=(14, 14))
    _manhattan(axes[0, 0], x, best, chrom, centres, labels, f"best of {len(names)} phenotypes")
    pooled.draw(axes[0, 1], f"QQ, all {len(names)} phenotypes")
    for ax, name in zip(axes[1:].ravel(), ranked):
        _manhattan(ax, x, neg_log10_p[name], chrom, centres, labels, name[:60])
    fig.tight_layout()
    fig.savefig(f"{prefix}.manhattan.png", dpi=80)
    plt.close(fig)
