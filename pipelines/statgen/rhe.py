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

Multi-component (RHE-mc, Pazokitoroudi et al. 2020; `randomized_he_components`): the variants fall into K
components, A_k = Z_k Z_k' / m_k, and var(y) = sum_k s_k A_k + s_e I. The same moments on the pairs i != j give the
K x K normal equations

    sum_l (tr(A_k A_l) - sum_i A_k,ii A_l,ii) s_l = y'A_k y - sum_i A_k,ii y_i^2,

with tr(A_k A_l) = E (A_k u)'(A_l u) from the same vectors; K = 1 is RHE-reg above. Total h2 = sum_k s_k. The
randomisation's variance of s generalises by the delta method: vector b moves the matrix by dT_b, so s by
-M^-1 dT_b s.
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
    h2, se, _, _ = randomized_he_components(read, np.zeros(n_variants, int), y, covariates, vectors=vectors,
                                            blocks=blocks, seed=seed)
    return h2, se


def randomized_he_components(read: Callable[[int, int], np.ndarray], components: np.ndarray, y: np.ndarray,
                             covariates: np.ndarray, *, vectors: int = VECTORS, blocks: int = JACKKNIFE_BLOCKS,
                             seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """RHE-mc: (total h2, its se, per-component h2 (K x phenotypes), their se). `components[v]`: the component
    (0..K-1) of variant v, for every variant `read` reaches. A component with no polymorphic variant gets NaN and
    adds nothing to the total; one that lies within a single jackknife block gets an NaN se, and so does the total
    (its leave-one-block-out replicates would lose that component)."""
    from comical.pipelines.statgen.heritability import _residualised

    y = _residualised(np.asarray(y, float).reshape(len(y), -1), covariates)
    sums = _pass(read, components, y, None, vectors=vectors, blocks=blocks, seed=seed)
    every = np.ones(sums["blocks"], bool)
    parts, per_vector = sums["estimate"](every, "q11", y, y)
    leave_out = np.stack([sums["estimate"](every & (np.arange(len(every)) != j), "q11", y, y)[0]
                          for j in range(len(every))])  # blocks x K x phenotypes
    present = ~np.isnan(parts[:, 0])
    if not present.any():
        nan = np.full(parts.shape[1], np.nan)
        return nan, nan, parts, np.full(parts.shape, np.nan)
    monte_carlo = (per_vector ** 2).sum(0) / (vectors - 1) / vectors  # K x phenotypes, and the total's below
    total_monte_carlo = (per_vector.sum(1) ** 2).sum(0) / (vectors - 1) / vectors
    se = np.sqrt(_jackknife_variance(leave_out) + monte_carlo)
    total_se = np.sqrt(_jackknife_variance(leave_out[:, present].sum(1)) + total_monte_carlo)
    return parts[present].sum(0), total_se, parts, se


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
    sums = _pass(read, np.zeros(n_variants, int), first, second, vectors=vectors, blocks=blocks, seed=seed)

    def rg(keep: np.ndarray) -> np.ndarray:
        h1 = sums["estimate"](keep, "q11", first, first)[0][0]
        h2 = sums["estimate"](keep, "q22", second, second)[0][0]
        covariance = sums["estimate"](keep, "q12", first, second)[0][0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((h1 > 0) & (h2 > 0), covariance / np.sqrt(h1 * h2), np.nan)

    every = np.ones(sums["blocks"], bool)
    estimate = rg(every)
    leave_out = np.stack([rg(every & (np.arange(len(every)) != j)) for j in range(len(every))])
    se = np.full(len(estimate), np.nan)
    ok = np.isfinite(estimate) & np.isfinite(leave_out).all(0)
    se[ok] = np.sqrt(_jackknife_variance(leave_out[:, ok]))
    return estimate, se


def _jackknife_variance(leave_out: np.ndarray) -> np.ndarray:
    count = len(leave_out)
    return (count - 1) / count * ((leave_out - leave_out.mean(0)) ** 2).sum(0)


def _pass(read, components: np.ndarray, y1: np.ndarray, y2: np.ndarray | None, *, vectors: int, blocks: int,
          seed: int) -> dict:
    """One pass over the genotypes in variant blocks: per block and component, sum over its variants of (z'y1)^2
    (q11), and with y2 of (z'y2)^2 (q22) and (z'y1)(z'y2) (q12); Z_jk (Z_jk'U), the row sums of Z_jk^2 and the
    polymorphic count. Its `estimate(keep, q, ya, yb)` gives the HE estimates over the kept blocks (K x phenotypes)
    and each vector's delta-method deviation of them (vectors x K x phenotypes)."""
    from comical.data_io.pca import standardized_genotypes

    n, n_variants, k_count = len(y1), len(components), int(components.max()) + 1
    u = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n, vectors))
    edges = np.linspace(0, n_variants, min(blocks, n_variants) + 1).astype(int)
    count = len(edges) - 1
    q = {key: np.zeros((count, k_count, y1.shape[1]))
         for key in (("q11",) if y2 is None else ("q11", "q22", "q12"))}
    w = np.zeros((count, k_count, n, vectors), np.float32)  # per block and component: Z_jk (Z_jk'U)
    d = np.zeros((count, k_count, n))  # row sums of Z_jk^2
    m = np.zeros((count, k_count))  # polymorphic variants
    for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        for start in range(lo, hi, READ_VARIANTS):
            stop = min(start + READ_VARIANTS, hi)
            z_all = standardized_genotypes(read(start, stop)).astype(np.float64)
            for k in np.unique(components[start:stop]):
                z = z_all[:, components[start:stop] == k]
                zy1 = z.T @ y1
                q["q11"][j, k] += (zy1 ** 2).sum(0)
                if y2 is not None:
                    zy2 = z.T @ y2
                    q["q22"][j, k] += (zy2 ** 2).sum(0)
                    q["q12"][j, k] += (zy1 * zy2).sum(0)
                w[j, k] += (z @ (z.T @ u)).astype(np.float32)
                d[j, k] += (z * z).sum(1)
                m[j, k] += int((z.std(0) > 0).sum())

    def estimate(keep: np.ndarray, key: str, ya: np.ndarray, yb: np.ndarray):
        scale = m[keep].sum(0)  # K
        present = scale > 0
        scale = np.where(present, scale, 1)
        diag = d[keep].sum(0) / scale[:, None]  # K x n
        au = w[keep].sum(0, dtype=np.float64) / scale[:, None, None]  # K x n x B: A_k u_b
        per_vector = np.einsum("knb,lnb->bkl", au, au)  # (A_k u_b)'(A_l u_b)
        matrix = per_vector.mean(0) - diag @ diag.T  # tr(A_k A_l) - sum_i A_k,ii A_l,ii
        right = q[key][keep].sum(0) / scale[:, None] - diag @ (ya * yb)  # K x phenotypes
        parts = np.full(right.shape, np.nan)
        solve = np.linalg.solve(matrix[np.ix_(present, present)], right[present])
        parts[present] = solve
        inverse = np.linalg.inv(matrix[np.ix_(present, present)])
        deviation = np.zeros((vectors, *right.shape))  # -M^-1 (T_b - mean T) s: the randomisation's error
        moved = per_vector[:, present][:, :, present] - per_vector.mean(0)[np.ix_(present, present)]
        deviation[:, present] = -np.einsum("kl,blm,mt->bkt", inverse, moved, solve)
        return parts, deviation

    return {"estimate": estimate, "blocks": count}
