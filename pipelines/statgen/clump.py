"""LD clumping of association hits (plink's greedy rule; paper 001: p < 5e-8, r^2 < 0.05 within 5 Mb).

Walk the hits from the smallest p: each hit not yet taken becomes an index variant and takes every other
variant on its chromosome within `window_kb` whose p < `p2` and whose r^2 with it (pairwise-complete dosage
correlation) is at least `r2`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

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


def clump_phenotypes(genotypes: Genotypes, sample_index: np.ndarray, neg_log10_p: Mapping[str, np.ndarray], *,
                     p1: float = 5e-8, p2: float = 1e-2, r2: float = 0.05,
                     window_kb: float = 5000.0) -> dict[str, pl.DataFrame]:
    """Every phenotype's clumps: one row per clump (index variant, its p, the variants it took and their count).

    The genotypes are read once for all phenotypes: the variants some phenotype's clumping can touch (its hits,
    and variants with p < p2 within a window of one) form regions separated by more than a window, so no clump
    spans two; each region is read once, and r^2 with an index variant comes from products over the region's
    calls (pairwise-complete, as `r_squared`). The greedy walk is plink's, per phenotype. `neg_log10_p` is read
    twice, one phenotype at a time (it may load each from disk), and only the touched variants' values are kept.
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
    needed = np.flatnonzero(needed)
    # per phenotype, only its variants with p < p2 among them (a few percent): the others take no part in its walk
    below_p2 = {}
    for name, neg in neg_log10_p.items():
        at = np.flatnonzero(neg[needed] > neg2)
        below_p2[name] = at, neg[needed[at]]

    rows: dict[str, list[tuple]] = {name: [] for name in neg_log10_p}
    bytes_per_call = _bytes_per_call(genotypes)
    for region in _regions(needed, chrom, pos, window):
        if bytes_per_call * len(sample_index) * region.size <= REGION_BYTES:  # the region's calls, held once
            r2_of = _Region.read(genotypes.read(samples=sample_index, variants=region, dtype=np.float32),
                                 genotypes.hard_calls).r2
        else:  # a dense region: read each index variant with its neighbours (memory bounded by one window)
            def r2_of(i, near, region=region):
                return _r2_read(genotypes, sample_index, region, i, near)
        at = np.searchsorted(needed, region)
        for name, (where, values) in below_p2.items():
            neg = np.full(region.size, -np.inf)  # p >= p2 for this phenotype: outside its walk
            lo, hi = np.searchsorted(where, [at[0], at[-1] + 1])
            inside = np.searchsorted(at, where[lo:hi])
            ours = at[inside.clip(max=at.size - 1)] == where[lo:hi]
            neg[inside[ours]] = values[lo:hi][ours]
            rows[name] += _clump_region(region, neg, chrom[region], pos[region], r2_of, -np.log10(p1),
                                        -np.log10(p2), r2, window)
    ids = variants["variant_id"].to_numpy()
    out = {}
    for name, found in rows.items():
        found.sort(key=lambda row: (-row[0], row[1]))  # by p, then file order: plink's walk order
        index = np.array([i for _, i, _ in found], dtype=np.int64)
        out[name] = pl.DataFrame({
            "index_variant": ids[index], "chromosome": chrom[index].astype(str), "base_pair_location": pos[index],
            "p_value": np.power(10.0, -np.array([neg for neg, _, _ in found], dtype=np.float64)),
            "neg_log10_p": np.array([neg for neg, _, _ in found], dtype=np.float64),
            "n_clumped": np.array([len(m) for _, _, m in found], dtype=np.int64),
            "clumped": [",".join(ids[m]) for _, _, m in found]}, schema=_SCHEMA)
    return out


REGION_BYTES = 256 << 20  # a region's arrays held at once; denser regions are read in pieces of a quarter of it
_SCHEMA = {"index_variant": pl.String, "chromosome": pl.String, "base_pair_location": pl.Int64,
           "p_value": pl.Float64, "neg_log10_p": pl.Float64, "n_clumped": pl.Int64, "clumped": pl.String}


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


@dataclasses.dataclass
class _Region:
    """A region's genotypes for r^2: calls variant-major (0 where missing; an index variant's neighbours are
    contiguous rows), which samples each variant misses (sparse: calls are mostly present), and per-variant sums.

    Pairwise-complete sums over the samples called at both i and j come from the dense product x_j . x_i and
    corrections over the few missing samples: sum x_i over j's called samples = S_i - (x_i over j's missing), and
    so on. So only the calls are held and gathered, not a call mask and squares beside them. float32 for hard
    calls (their sums are integers below 2^24 for fewer than 4 million samples, so exact); dosages in float64."""

    x: np.ndarray
    gap_start: np.ndarray  # variant v misses the samples gap_sample[gap_start[v]:gap_start[v + 1]]
    gap_sample: np.ndarray
    sums: np.ndarray  # sum of calls, of squared calls, count of calls (float64)

    @classmethod
    def read(cls, g: np.ndarray, hard_calls: bool) -> "_Region":
        x = np.ascontiguousarray(g.T)  # bed-reader's reads are variant-major already: no copy
        gaps = np.isnan(x)
        variant, sample = np.nonzero(gaps)  # row-major: grouped by variant
        np.copyto(x, 0, where=gaps)
        if not hard_calls:  # dosages (multiples of 1/16384): their squares and sums need float64
            x = x.astype(np.float64)
        gap_start = np.searchsorted(variant, np.arange(len(x) + 1))
        sums = np.stack([x.sum(1, dtype=np.float64), np.einsum("ij,ij->i", x, x, dtype=np.float64),
                         x.shape[1] - np.diff(gap_start)])
        return cls(x, gap_start, sample, sums)

    def r2(self, i: int, near: np.ndarray) -> np.ndarray:
        """Pairwise-complete r^2 of variant i with each variant in `near`."""
        xi, others = self.x[i], self.x[near]
        gaps_i = self.gap_sample[self.gap_start[i]:self.gap_start[i + 1]]  # samples i misses
        called_i = np.ones_like(xi)
        called_i[gaps_i] = 0
        # sums over samples called at both: i's calls, squares and count over j's calls (i's values at the
        # samples each j misses, summed per j); j's over i's calls
        counts = self.gap_start[near + 1] - self.gap_start[near]
        owner = np.repeat(np.arange(near.size), counts)
        at = self.gap_sample[np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - self.gap_start[near],
                                                                 counts)]
        sx, sxx, n = (self.sums[k, i] - np.bincount(owner, weights=v[at], minlength=near.size)
                      for k, v in enumerate((xi, xi * xi, called_i)))
        at_gaps = others[:, gaps_i].astype(np.float64)
        sy = self.sums[0, near] - at_gaps.sum(1)
        syy = self.sums[1, near] - (at_gaps * at_gaps).sum(1)
        sxy = (others @ xi).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = sxy - sx * sy / n
            return np.nan_to_num(cov * cov / ((sxx - sx * sx / n) * (syy - sy * sy / n)))


def _bytes_per_call(genotypes: Genotypes) -> int:
    """Memory per sample and variant of a region: the float32 read, the calls kept (float32, or float64 for
    dosages), and what the format's decoder holds beyond a plain read (BGEN's probabilities)."""
    return (8 if genotypes.hard_calls else 12) + genotypes.read_bytes_per_call - 8


def _r2_read(genotypes: Genotypes, sample_index: np.ndarray, region: np.ndarray, i: int,
             near: np.ndarray) -> np.ndarray:
    """As `_Region.r2`, reading the index variant and its neighbours, a memory budget's worth of columns at a time."""
    step = max(1, REGION_BYTES // 4 // (_bytes_per_call(genotypes) * len(sample_index)) - 1)
    out = []
    for start in range(0, near.size, step):
        part = near[start:start + step]
        calls = _Region.read(genotypes.read(samples=sample_index, variants=region[np.r_[i, part]], dtype=np.float32),
                             genotypes.hard_calls)
        out.append(calls.r2(0, np.arange(1, part.size + 1)))
    return np.concatenate(out)


def _clump_region(region, neg, chrom, pos, r2_of, neg1, neg2, r2, window) -> list[tuple]:
    """plink's greedy walk over one region for one phenotype, on -log10 p (p-values below 1e-308 underflow to 0
    and would tie): (-log10 p, variant index, clumped variant indices). p < p1 is -log10 p > neg1."""
    taken = np.zeros(len(region), bool)
    found = []
    for i in np.argsort(-neg, kind="stable"):
        if not neg[i] > neg1:
            break
        if taken[i]:
            continue
        taken[i] = True
        near = np.flatnonzero((chrom == chrom[i]) & (np.abs(pos - pos[i]) <= window) & (neg > neg2) & ~taken)
        if near.size:
            near = near[r2_of(i, near) >= r2]
            taken[near] = True
        found.append((neg[i], int(region[i]), region[near]))
    return found
