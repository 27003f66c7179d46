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
    from comical.data_io.pca import standardized_genotypes
    from comical.pipelines.statgen.heritability import _residualised

    y = _residualised(np.asarray(y, float).reshape(len(y), -1), covariates)
    n, t = y.shape
    u = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, vectors))
    edges = np.linspace(0, n_variants, min(blocks, n_variants) + 1).astype(int)
    q = np.zeros((len(edges) - 1, t))  # per block: ||Z_j'y||^2
    w = np.zeros((len(edges) - 1, n, vectors), np.float32)  # per block: Z_j (Z_j'U)
    d = np.zeros((len(edges) - 1, n))  # per block: row sums of Z_j^2
    m = np.zeros(len(edges) - 1)  # per block: polymorphic variants
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        for start in range(lo, hi, READ_VARIANTS):
            z = standardized_genotypes(read(start, min(start + READ_VARIANTS, hi))).astype(np.float64)
            q[j] += ((z.T @ y) ** 2).sum(0)
            w[j] += (z @ (z.T @ u)).astype(np.float32)
            d[j] += (z * z).sum(1)
            m[j] += int((z.std(0) > 0).sum())

    def estimate(keep: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        """h2, the denominator tr(A^2) - sum A_jj^2, and the B values ||A u_b||^2 behind tr(A^2)."""
        scale = max(m[keep].sum(), 1)
        diag = d[keep].sum(0) / scale
        au = w[keep].sum(0, dtype=np.float64) / scale
        per_vector = (au * au).sum(0)
        denominator = per_vector.mean() - (diag * diag).sum()
        return (q[keep].sum(0) / scale - diag @ (y * y)) / denominator, denominator, per_vector

    every = np.ones(len(m), bool)
    h2, denominator, per_vector = estimate(every)
    leave_out = np.stack([estimate(every & (np.arange(len(m)) != j))[0] for j in range(len(m))])
    count = len(m)
    jackknife = (count - 1) / count * ((leave_out - leave_out.mean(0)) ** 2).sum(0)
    monte_carlo = (h2 / denominator) ** 2 * per_vector.var(ddof=1) / vectors
    return h2, np.sqrt(jackknife + monte_carlo)
