"""LD clumping of association hits (plink's greedy rule; paper 001: p < 5e-8, r^2 < 0.05 within 5 Mb).

Walk the hits from the smallest p: each hit not yet taken becomes an index variant and takes every other
variant on its chromosome within `window_kb` whose p < `p2` and whose r^2 with it (pairwise-complete dosage
correlation) is at least `r2`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from comical.data_io.plink import Genotypes


def r_squared(index: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Squared Pearson correlation of one dosage vector with each column of `others`, on samples called in both."""
    both = ~np.isnan(index)[:, None] & ~np.isnan(others)
    x = np.where(both, index[:, None], 0.0)
    y = np.where(both, others, 0.0)
    n = both.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = (x * y).sum(0) - x.sum(0) * y.sum(0) / n
        vx = (x * x).sum(0) - x.sum(0) ** 2 / n
        vy = (y * y).sum(0) - y.sum(0) ** 2 / n
        return np.nan_to_num(cov * cov / (vx * vy))


def clump_hits(genotypes: Genotypes, sample_index: np.ndarray, neg_log10_p: np.ndarray, *, p1: float = 5e-8,
               p2: float = 1e-2, r2: float = 0.05, window_kb: float = 5000.0) -> pl.DataFrame:
    """One row per clump: index variant, its p, the variants it took (comma-separated) and their count."""
    schema = {"index_variant": pl.String, "chromosome": pl.String, "base_pair_location": pl.Int64,
              "p_value": pl.Float64, "n_clumped": pl.Int64, "clumped": pl.String}
    variants = genotypes.variants
    p = np.power(10.0, -np.nan_to_num(neg_log10_p, nan=0.0))
    if not (p < p1).any():
        return pl.DataFrame(schema=schema)
    chrom, pos = variants["chrom"].to_numpy(), variants["pos"].to_numpy()
    taken = np.zeros(len(p), bool)
    rows = []
    for i in np.argsort(p, kind="stable"):
        if p[i] >= p1:
            break
        if taken[i]:
            continue
        taken[i] = True
        near = np.flatnonzero((chrom == chrom[i]) & (np.abs(pos - pos[i]) <= window_kb * 1000) & (p < p2) & ~taken)
        members = near[:0]
        if near.size:
            g = genotypes.read(samples=sample_index, variants=np.concatenate([[i], near]), dtype=np.float64)
            members = near[r_squared(g[:, 0], g[:, 1:]) >= r2]
            taken[members] = True
        rows.append({"index_variant": variants["variant_id"][int(i)], "chromosome": chrom[i],
                     "base_pair_location": int(pos[i]), "p_value": float(p[i]), "n_clumped": int(members.size),
                     "clumped": ",".join(variants["variant_id"].gather(members).to_list())})
    return pl.DataFrame(rows, schema=schema)
