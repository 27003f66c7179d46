"""LD clumping of association hits (plink's greedy rule; paper 001: p < 5e-8, r^2 < 0.05 within 5 Mb).

Walk the hits from the smallest p: each hit not yet taken becomes an index variant and takes every other
variant on its chromosome within `window_kb` whose p < `p2` and whose r^2 with it (pairwise-complete dosage
correlation) is at least `r2`.
"""

from __future__ import annotations

import functools

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


def clump_hits(genotypes: Genotypes, sample_index: np.ndarray, neg_log10_p: np.ndarray, **params) -> pl.DataFrame:
    """One phenotype's clumps (see `clump_phenotypes`)."""
    return clump_phenotypes(genotypes, sample_index, {"p": neg_log10_p}, **params)["p"]


def clump_phenotypes(genotypes: Genotypes, sample_index: np.ndarray, neg_log10_p: dict[str, np.ndarray], *,
                     p1: float = 5e-8, p2: float = 1e-2, r2: float = 0.05,
                     window_kb: float = 5000.0) -> dict[str, pl.DataFrame]:
    """Every phenotype's clumps: one row per clump (index variant, its p, the variants it took and their count).

    The genotypes are read once for all phenotypes: the variants some phenotype's clumping can touch (its hits,
    and variants with p < p2 within a window of one) form regions separated by more than a window, so no clump
    spans two; each region is read once, and r^2 with an index variant comes from products over the region's
    columns (pairwise-complete, as `r_squared`). The greedy walk is plink's, per phenotype.
    """
    variants = genotypes.variants
    chrom, pos = variants["chrom"].to_numpy(), variants["pos"].to_numpy()
    window = window_kb * 1000
    # thresholds on -log10 p, so no p-value array per phenotype is held beside the caller's
    neg1, neg2 = -np.log10(p1) - 1e-9, -np.log10(p2) - 1e-9  # a hair inclusive: the walk below decides
    needed = np.zeros(len(chrom), bool)
    for neg in neg_log10_p.values():
        hits = np.flatnonzero(neg > neg1)
        needed[hits] = True
        needed[_near_any(np.flatnonzero(neg > neg2), hits, chrom, pos, window)] = True

    rows: dict[str, list[tuple]] = {name: [] for name in neg_log10_p}
    for region in _regions(np.flatnonzero(needed), chrom, pos, window):
        if 12 * len(sample_index) * region.size <= REGION_BYTES:  # the region's three float32 arrays, held once
            columns = _columns(genotypes.read(samples=sample_index, variants=region, dtype=np.float32))
            r2_of = functools.partial(_r2, columns)
        else:  # a dense region: read each index variant with its neighbours (memory bounded by one window)
            r2_of = functools.partial(_r2_read, genotypes, sample_index, region)
        for name, neg in neg_log10_p.items():
            p = np.power(10.0, -np.nan_to_num(neg[region], nan=0.0))
            rows[name] += _clump_region(region, p, chrom[region], pos[region], r2_of, p1, p2, r2,
                                        window)
    out = {}
    for name, found in rows.items():
        found.sort(key=lambda row: (row[0], row[1]))  # by p, then file order: plink's walk order
        out[name] = pl.DataFrame(
            [{"index_variant": variants["variant_id"][i], "chromosome": chrom[i], "base_pair_location": int(pos[i]),
              "p_value": float(pv), "n_clumped": len(members),
              "clumped": ",".join(variants["variant_id"].gather(members).to_list())} for pv, i, members in found],
            schema=_SCHEMA)
    return out


REGION_BYTES = 256 << 20  # a region's arrays held at once; denser regions are read in pieces of a quarter of it
_SCHEMA = {"index_variant": pl.String, "chromosome": pl.String, "base_pair_location": pl.Int64,
           "p_value": pl.Float64, "n_clumped": pl.Int64, "clumped": pl.String}


def _near_any(candidates: np.ndarray, hits: np.ndarray, chrom: np.ndarray, pos: np.ndarray,
              window: float) -> np.ndarray:
    """The candidates within `window` bp of some hit on their chromosome."""
    keep = np.zeros(len(candidates), bool)
    for c in np.unique(chrom[hits]):
        hit_pos = np.sort(pos[hits][chrom[hits] == c])
        on = np.flatnonzero(chrom[candidates] == c)
        cand_pos = pos[candidates[on]]
        right = np.searchsorted(hit_pos, cand_pos).clip(max=len(hit_pos) - 1)
        left = (right - 1).clip(min=0)
        gap = np.minimum(np.abs(hit_pos[right] - cand_pos), np.abs(cand_pos - hit_pos[left]))
        keep[on] = gap <= window
    return candidates[keep]


def _regions(index: np.ndarray, chrom: np.ndarray, pos: np.ndarray, window: float):
    """`index` split where the chromosome changes or two neighbouring positions are more than a window apart; each
    region's variants in file order."""
    if index.size == 0:
        return
    order = index[np.lexsort((pos[index], chrom[index]))]
    breaks = np.flatnonzero((chrom[order][1:] != chrom[order][:-1]) | (np.diff(pos[order]) > window)) + 1
    for part in np.split(order, breaks):
        yield np.sort(part)


def _columns(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calls (0 where missing), the call mask and squared calls, column-major like the read (each index gathers
    the columns near it). float32: hard calls' sums are integers below 2^24 (for fewer than 4 million samples), so
    exact; dosages are kept in float64."""
    called = ~np.isnan(g)
    x = np.where(called, g, np.float32(0))
    if (x != np.round(x)).any():  # dosages (multiples of 1/16384): their squares and sums need float64
        x = x.astype(np.float64)
    return x, called.astype(x.dtype), x * x


def _r2(columns, i: int, near: np.ndarray) -> np.ndarray:
    """Pairwise-complete r^2 of column i with the columns `near`: sums over the samples called at both variants,
    as the index's (x, called, x^2) rows times the others' columns (three products)."""
    x, called, squares = columns
    index = np.stack([x[:, i], called[:, i], squares[:, i]])
    (sx, n, sxx), (sxy, sy) = index @ called[:, near], index[:2] @ x[:, near]
    syy = called[:, i] @ squares[:, near]
    sx, n, sxx, sxy, sy, syy = (v.astype(np.float64) for v in (sx, n, sxx, sxy, sy, syy))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        return np.nan_to_num(cov * cov / ((sxx - sx * sx / n) * (syy - sy * sy / n)))


def _r2_read(genotypes: Genotypes, sample_index: np.ndarray, region: np.ndarray, i: int,
             near: np.ndarray) -> np.ndarray:
    """As `_r2`, reading the index variant and its neighbours, a memory budget's worth of columns at a time."""
    step = max(1, REGION_BYTES // 4 // (12 * len(sample_index)) - 1)
    out = []
    for start in range(0, near.size, step):
        part = near[start:start + step]
        columns = _columns(genotypes.read(samples=sample_index, variants=region[np.r_[i, part]], dtype=np.float32))
        out.append(_r2(columns, 0, np.arange(1, part.size + 1)))
    return np.concatenate(out)


def _clump_region(region, p, chrom, pos, r2_of, p1, p2, r2, window) -> list[tuple]:
    """plink's greedy walk over one region for one phenotype: (p, variant index, clumped variant indices)."""
    taken = np.zeros(len(region), bool)
    found = []
    for i in np.argsort(p, kind="stable"):
        if p[i] >= p1:
            break
        if taken[i]:
            continue
        taken[i] = True
        near = np.flatnonzero((chrom == chrom[i]) & (np.abs(pos - pos[i]) <= window) & (p < p2) & ~taken)
        if near.size:
            near = near[r2_of(i, near) >= r2]
            taken[near] = True
        found.append((p[i], int(region[i]), region[near]))
    return found
