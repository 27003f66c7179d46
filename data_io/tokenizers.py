"""Tokenizers: SNP genotype tokens (genotype x allele vocabulary) and piecewise-linear IDP encoding (PLE).

SNP tokens (paper 000, Fig. 3b): each SNP's genotype is written with its own alleles, `G/G`, `A/G`, `A/A`
(alleles of a heterozygote sorted, so the same mutation type shares a token across SNPs; indels are just longer
alleles, `A/AT`), and token 0 is `<missing>`. PLE (Gorishniy et al. 2022; paper Fig. 3a): per IDP, quantile bin
edges fitted on training subjects only; a value in bin t becomes ones before t, its fraction inside bin t at t,
zeros after. Only `(bin, fraction)` is stored; the vector is rebuilt in torch on the worker (pair_store).
"""

from __future__ import annotations

import numpy as np

from comical.data_io.plink import MISSING_CALL

MISSING_TOKEN = "<missing>"
_BELOW_ONE = np.float32(np.nextafter(np.float32(1), np.float32(0)))


def snp_vocabulary(allele1: list[str], allele2: list[str]) -> tuple[list[str], np.ndarray]:
    """(tokens, table): `tokens[0]` is the missing token; `table[s, g]` is the token of g copies of allele1."""
    texts = []
    for a1, a2 in zip(allele1, allele2):
        het = "/".join(sorted((a1, a2)))
        texts.append((f"{a2}/{a2}", het, f"{a1}/{a1}"))
    tokens = [MISSING_TOKEN] + sorted({t for triple in texts for t in triple})
    if len(tokens) > 127:
        raise ValueError(f"{len(tokens)} genotype tokens do not fit the pair store's int8 column")
    index = {t: i for i, t in enumerate(tokens)}
    return tokens, np.array([[index[t] for t in triple] for triple in texts], dtype=np.int8).reshape(-1, 3)


def encode_genotypes(genotypes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Allele-1 counts (subjects x SNPs, int8, -127 missing) -> token ids (same shape, int8)."""
    called = genotypes != MISSING_CALL
    snp = np.broadcast_to(np.arange(genotypes.shape[1]), genotypes.shape)
    return np.where(called, table[snp, np.where(called, genotypes, 0)], 0).astype(np.int8)


def decode_tokens(tokens: list[str], ids: np.ndarray) -> np.ndarray:
    """Token ids -> token texts (for reports and round-trip checks)."""
    return np.asarray(tokens, dtype=object)[ids]


def fit_ple_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bin edges per column (IDP): (columns x n_bins + 1), from the rows given (training subjects)."""
    return np.quantile(values, np.linspace(0, 1, n_bins + 1), axis=0).T


def ple_encode(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values (subjects x IDPs) -> (bin int16, fraction float32 in [0, 1)) against each IDP's edges.

    Values outside the training range fall in the first or last bin with fraction 0 or just below 1.
    """
    n_bins = edges.shape[1] - 1
    bins = np.empty(values.shape, dtype=np.int16)
    frac = np.empty(values.shape, dtype=np.float32)
    for j in range(values.shape[1]):
        e = edges[j]
        b = np.clip(np.searchsorted(e, values[:, j], side="right") - 1, 0, n_bins - 1)
        width = e[b + 1] - e[b]
        f = np.where(width > 0, (values[:, j] - e[b]) / np.where(width > 0, width, 1), 0.0)
        bins[:, j] = b
        frac[:, j] = np.clip(f, 0, _BELOW_ONE)
    return bins, frac
