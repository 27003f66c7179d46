"""Randomized Haseman-Elston regression (RHE-reg; Wu & Sankararaman 2018): HE without the n x n GRM.

The exact estimator (heritability.py) forms A = Z Z' / m and computes, per residualised, standardised phenotype y,

    h2 = (y'Ay - sum_j A_jj y_j^2) / (tr(A^2) - sum_j A_jj^2).

Every term but tr(A^2) needs only Z'y and the diagonal; tr(A^2) = E ||A u||^2 for random vectors u with
independent +-1 entries (Hutchinson), and A u = Z (Z'u) / m. So one pass over the genotypes in variant blocks,
accumulating Z'Y, Z (Z'U) and the row sums of Z^2, costs O(n m (t + B)) time and O(n B) memory for B vectors
and t phenotypes. Standard errors: a delete-one-block jackknife over contiguous variant blocks (as RHE-mc,
Pazokitoroudi et al. 2020), from per-block sums kept in the pass (memory O(n B J) for J blocks), plus the
randomisation's own variance, which the jackknife cannot see (every leave-out reuses the same vectors): by the
delta method, var(h2) from tr(A^2)'s Monte Carlo error is (h2 / (tr(A^2) - sum A_jj^2))^2 var(||A u||^2) / B.
The bivariate form (`randomized_rg`) replaces y'Ay by y1'Ay2 = (Z'y1)'(Z'y2) / m in the same pass.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

VECTORS = 100  # B: Hutchinson's random vectors
JACKKNIFE_BLOCKS = 20  # J: contiguous variant blocks
READ_VARIANTS = 1024  # variants read and standardised at a time (memory: n x this, float32)


def randomized_he(read: Callable[[int, int], np.ndarray], n_variants: int, y: np.ndarray, covariates: np.ndarray, *,
                  vectors: int = VECTORS, blocks: int = JACKKNIFE_BLOCKS, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(h2 estimates, jackknife standard errors), one per column of `y`. `read(start, stop)`: int8 allele counts
    (-127 missing) of the subjects (rows, in `y`'s order) for variants start..stop-1 of `n_variants`."""
    from comical.pipelines.statgen.heritability import _residualised

    y = _residualised(np.asarray(y, float).reshape(len(y), -1), covariates)
    sums = _pass(read, n_variants, y, None, vectors=vectors, blocks=blocks, seed=seed)
    every = np.ones(len(sums["m"]), bool)
    h2, denominator, per_vector = sums["estimate"](every, "q11", y, y)
    leave_out = np.stack([sums["estimate"](every & (np.arange(len(every)) != j), "q11", y, y)[0]
                          for j in range(len(every))])
    monte_carlo = (h2 / denominator) ** 2 * per_vector.var(ddof=1) / vectors
    return h2, np.sqrt(_jackknife_variance(leave_out) + monte_carlo)


def randomized_rg(read: Callable[[int, int], np.ndarray], n_variants: int, y1: np.ndarray, y2: np.ndarray,
                  covariates: np.ndarray, *, vectors: int = VECTORS, blocks: int = JACKKNIFE_BLOCKS,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rg, jackknife se) of each column pair (y1[:, t], y2[:, t]) by bivariate randomized HE: the genetic
    covariance's HE estimate over the square root of the two heritabilities'. All three share tr(A^2) - sum A_jj^2,
    which cancels, so rg is free of the random vectors' error; the se is the variant-block jackknife's. NaN where
    either heritability is not positive (in the estimate or in any leave-out), as `genetic_correlation`."""
    from comical.pipelines.statgen.heritability import _residualised

    first = _residualised(np.asarray(y1, float).reshape(len(y1), -1), covariates)
    second = _residualised(np.asarray(y2, float).reshape(len(y2), -1), covariates)
    sums = _pass(read, n_variants, first, second, vectors=vectors, blocks=blocks, seed=seed)

    def rg(keep: np.ndarray) -> np.ndarray:
        h1 = sums["estimate"](keep, "q11", first, first)[0]
        h2 = sums["estimate"](keep, "q22", second, second)[0]
        covariance = sums["estimate"](keep, "q12", first, second)[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((h1 > 0) & (h2 > 0), covariance / np.sqrt(h1 * h2), np.nan)

    every = np.ones(len(sums["m"]), bool)
    estimate = rg(every)
    leave_out = np.stack([rg(every & (np.arange(len(every)) != j)) for j in range(len(every))])
    se = np.full(len(estimate), np.nan)
    ok = np.isfinite(estimate) & np.isfinite(leave_out).all(0)
    se[ok] = np.sqrt(_jackknife_variance(leave_out[:, ok]))
    return estimate, se


def _jackknife_variance(leave_out: np.ndarray) -> np.ndarray:
    count = len(leave_out)
    return (count - 1) / count * ((leave_out - leave_out.mean(0)) ** 2).sum(0)


def _pass(read, n_variants: int, y1: np.ndarray, y2: np.ndarray | None, *, vectors: int, blocks: int,
          seed: int) -> dict:
    """One pass over the genotypes in variant blocks: per block, sum over its variants of (z'y1)^2 (q11), and with
    y2 of (z'y2)^2 (q22) and (z'y1)(z'y2) (q12); Z_j (Z_j'U), the row sums of Z_j^2 and the polymorphic count. Its
    `estimate(keep, q, ya, yb)` gives the HE estimates over the kept blocks, the denominator and ||A u_b||^2."""
    from comical.data_io.pca import standardized_genotypes

    n = len(y1)
    u = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, vectors))
    edges = np.linspace(0, n_variants, min(blocks, n_variants) + 1).astype(int)
    count = len(edges) - 1
    q = {key: np.zeros((count, y1.shape[1])) for key in (("q11",) if y2 is None else ("q11", "q22", "q12"))}
    w = np.zeros((count, n, vectors), np.float32)  # per block: Z_j (Z_j'U)
    d = np.zeros((count, n))  # per block: row sums of Z_j^2
    m = np.zeros(count)  # per block: polymorphic variants
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        for start in range(lo, hi, READ_VARIANTS):
            z = standardized_genotypes(read(start, min(start + READ_VARIANTS, hi))).astype(np.float64)
            zy1 = z.T @ y1
            q["q11"][j] += (zy1 ** 2).sum(0)
            if y2 is not None:
                zy2 = z.T @ y2
                q["q22"][j] += (zy2 ** 2).sum(0)
                q["q12"][j] += (zy1 * zy2).sum(0)
            w[j] += (z @ (z.T @ u)).astype(np.float32)
            d[j] += (z * z).sum(1)
            m[j] += int((z.std(0) > 0).sum())

    def estimate(keep: np.ndarray, key: str, ya: np.ndarray, yb: np.ndarray):
        """HE estimates, the denominator tr(A^2) - sum A_jj^2, and the B values ||A u_b||^2 behind tr(A^2)."""
        scale = max(m[keep].sum(), 1)
        diag = d[keep].sum(0) / scale
        au = w[keep].sum(0, dtype=np.float64) / scale
        per_vector = (au * au).sum(0)
        denominator = per_vector.mean() - (diag * diag).sum()
        return (q[key][keep].sum(0) / scale - diag @ (ya * yb)) / denominator, denominator, per_vector

    return {"estimate": estimate, "m": m}
