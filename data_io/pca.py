"""Genetic principal components of a genotype matrix (randomized SVD of standardized allele counts)."""

from __future__ import annotations

import numpy as np

MISSING_INT8 = -127  # bed-reader's missing call in int8 reads


def standardized_genotypes(genotypes: np.ndarray) -> np.ndarray:
    """Allele counts (int8, -127 missing) -> float32 centred at 2p, scaled by sqrt(2p(1-p)), missing -> 0.

    Built one variant block at a time, so the only large allocation is the float32 result.
    Monomorphic variants become all-zero columns.
    """
    n, m = genotypes.shape
    out = np.empty((n, m), dtype=np.float32)
    for start in range(0, m, 1024):
        block = genotypes[:, start:start + 1024]
        called = block != MISSING_INT8
        x = np.where(called, block, 0).astype(np.float32)
        freq = x.sum(axis=0) / np.maximum(2 * called.sum(axis=0), 1)
        scale = np.sqrt(2 * freq * (1 - freq))
        x -= 2 * freq
        x /= np.where(scale > 0, scale, 1)
        x[~called] = 0
        out[:, start:start + 1024] = x
    return out


def genotype_pcs(genotypes: np.ndarray, n_pcs: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top `n_pcs` principal components of samples x variants allele counts (int8, -127 missing).

    Variants are standardized as `standardized_genotypes` does (Patterson et al. 2006). Returns
    (scores: samples x n_pcs, eigenvalues of the relationship matrix X X' / n_variants). The sign of
    each PC is fixed (largest-magnitude score positive), so the same data give the same scores.
    """
    from sklearn.utils.extmath import randomized_svd  # here: sklearn's import costs every command ~0.5 s

    x = standardized_genotypes(genotypes)
    u, s, _ = randomized_svd(x, n_components=n_pcs, n_iter=6, random_state=seed)
    signs = np.sign(u[np.abs(u).argmax(axis=0), np.arange(u.shape[1])])
    return u * signs * s, s**2 / x.shape[1]
