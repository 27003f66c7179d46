"""Per-subject SNP and IDP embeddings from a COMICAL run's frozen encoders (the input of downstream prediction and of
the multi-trait embedding GWAS).

    comical embed --run RUN/ --cohort COHORT/ --out embeddings.parquet
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

from comical.data_io.cohort import Cohort
from comical.data_io.errors import InputError
from comical.data_io.pair_store import ple_vectors
from comical.data_io.tokenizers import encode_genotypes, ple_encode


def embed_comical(model, spec: dict, run: Path, cohort_dir: Path):
    """`comical embed` of a COMICAL run: every cohort subject's SNP and IDP embeddings (`subject_embeddings`) as an
    Arrow table, and a line saying what they are."""
    from comical.data_io.cohort import load_cohort

    table = subject_embeddings(model, spec["input"], load_cohort(cohort_dir))
    dim = spec["model"]["embed_dim"]
    return table.to_arrow(), (f"{table.height} subjects x ({len(spec['input']['snps'])} SNP + "
                              f"{len(table['idp_embedding'][0]) // dim} IDP embeddings of {dim})")


def model_idps(info: dict) -> list[str]:
    """The IDPs a COMICAL model encodes (those of its buckets), in its vocabulary's order."""
    return sorted({i for b in info["buckets"].values() for i in b["idps"]}, key=info["idps"].index)


def model_snp_columns(info: dict, cohort: Cohort) -> list[int]:
    """The genotype columns of a COMICAL model's SNPs, in its order; an error if the cohort lacks one."""
    bim = {v: i for i, v in enumerate(cohort.genotypes.variants["variant_id"])}
    missing = [s for s in info["snps"] if s not in bim]
    if missing:
        raise InputError(f"{cohort.path}: the model's SNPs {missing[:5]} are not in genotypes.bim")
    return [bim[s] for s in info["snps"]]


@torch.no_grad()
def subject_embeddings(model, info: dict, cohort: Cohort, *, rows: np.ndarray | None = None,
                       batch_size: int = 512) -> pl.DataFrame:
    """One row per cohort subject (or per `rows`, cohort row indices): `eid`, `snp_embedding` (the model's SNPs in
    order, each `embed_dim` floats, concatenated), `idp_embedding` (the bucket IDPs likewise), and their means
    `snp_mean_0..` / `idp_mean_0..`.

    Genotype tokens and PLE bins come from the model's own vocabulary and training-split bin edges.
    """
    subjects = np.arange(len(cohort.sample_index)) if rows is None else np.asarray(rows)
    idps = model_idps(info)
    tokens = encode_genotypes(cohort.genotypes.read(cohort.sample_index[subjects], model_snp_columns(info, cohort),
                                                    dtype=np.int8), np.array(info["snp_token_table"], dtype=np.int8))
    edges = np.array([info["ple_bin_edges"][i] for i in idps])
    bins, frac = ple_encode(cohort.idps[subjects].select(idps).to_numpy(), edges)
    n, n_snps, n_idps = tokens.shape[0], tokens.shape[1], len(idps)
    idp_index = torch.tensor([info["idps"].index(i) for i in idps])
    snp_out, idp_out = [], []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        rows = stop - start
        snp = model.encode_snps(torch.arange(n_snps).repeat(rows), torch.from_numpy(tokens[start:stop]).long().ravel())
        ple = ple_vectors(torch.from_numpy(bins[start:stop]).ravel(), torch.from_numpy(frac[start:stop]).ravel(),
                          info["n_bins"])
        idp = model.encode_idps(idp_index.repeat(rows), ple)
        snp_out.append(snp.reshape(rows, n_snps, -1))
        idp_out.append(idp.reshape(rows, n_idps, -1))
    snp_all, idp_all = torch.cat(snp_out).numpy(), torch.cat(idp_out).numpy()
    dim = snp_all.shape[2]
    table = pl.DataFrame({"eid": cohort.eids.gather(subjects),
                          "snp_embedding": snp_all.reshape(n, -1), "idp_embedding": idp_all.reshape(n, -1)})
    means = {**{f"snp_mean_{k}": snp_all.mean(axis=1)[:, k] for k in range(dim)},
             **{f"idp_mean_{k}": idp_all.mean(axis=1)[:, k] for k in range(dim)}}
    return table.with_columns(**{k: pl.Series(v) for k, v in means.items()})
