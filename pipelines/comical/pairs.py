"""Disease-mediated SNP-IDP pairs (paper 000, section 2.2, Fig. 2), written as the pair store of docs/architecture.md.

    comical pairs --cohort DIR --top-n-perc 1 --out DIR

A disease d with catalog SNP set S_d and PheWAS IDP set I_d forms a bucket; every subject gives one pair per
(s, i) in S_d x I_d, so a subject has sum_d |S_d||I_d| pairs. Subjects (not pairs) are split 70/20/10, so no
validation or test subject is seen in training; PLE bin edges are fitted on training subjects only, and by
default so is the PheWAS that forms the buckets (`buckets_from`). `permute_idps` writes a null store. Built
column-wise with numpy: a bucket's pairs for a split are a repeat/tile of its subjects and its (SNP, IDP) grid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.cohort import Cohort
from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.pair_store import SPLITS, write_pair_split
from comical.data_io.tokenizers import encode_genotypes, fit_ple_edges, ple_encode, snp_vocabulary
from comical.data_io.ukb_fields import IDPS


@dataclasses.dataclass(frozen=True)
class PairsConfig(Config):
    top_n_perc: float = 1.0  # top n% of each disease's catalog SNPs by p (paper: 0.5, 1, 2, 5, 10)
    split_fractions: tuple[float, float, float] = (0.7, 0.2, 0.1)  # train/val/test, by subject (paper: 70/20/10)
    n_bins: int = 64  # PLE bins per IDP (the reference's 64-float IDP vector)
    seed: int = 0  # subject split and training-row shuffle
    rows_per_file: int = 1 << 22  # pairs per Parquet file (4M pairs, ~40 MB)
    # train: the PheWAS that maps IDPs to diseases sees training subjects only (no test subject shapes the
    # buckets); all: every QC-kept subject, as the paper
    buckets_from: str = "train"
    # A null store: within each split, subjects' IDP values are permuted across subjects with this seed
    # (buckets, tokens and PLE edges unchanged), so no genotype-IDP association is left to learn.
    permute_idps: int | None = None
    # Keep a seeded random sample of this many QC-kept subjects, drawn after the split (so buckets still come
    # from the whole training split): a laptop-sized run of a biobank cohort.
    max_subjects: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "split_fractions", tuple(self.split_fractions))
        if not 0 < self.top_n_perc <= 100:
            raise InputError(f"--top-n-perc {self.top_n_perc}: expected a percentage in (0, 100]")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-9 or min(self.split_fractions) < 0:
            raise InputError(f"split_fractions {self.split_fractions}: expected three fractions summing to 1")
        if not 2 <= self.n_bins <= 32767:
            raise InputError(f"n_bins {self.n_bins}: expected 2 to 32767")
        if self.buckets_from not in ("train", "all"):
            raise InputError(f"--buckets-from {self.buckets_from}: expected train or all")
        if self.max_subjects is not None and self.max_subjects < 10:
            raise InputError(f"--max-subjects {self.max_subjects}: expected at least 10")


def split_subjects(n: int, config: PairsConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """Each of n QC-kept subjects' split (train/val/test), by subject, from the config's seed."""
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_train, n_val = round(config.split_fractions[0] * n), round(config.split_fractions[1] * n)
    split_of = np.empty(n, dtype=object)
    split_of[order[:n_train]], split_of[order[n_train:n_train + n_val]] = "train", "val"
    split_of[order[n_train + n_val:]] = "test"
    return split_of


def make_pairs(cohort: Cohort, kept_eids: pl.Series, idp_map: pl.DataFrame, snp_sets: pl.DataFrame,
               config: PairsConfig, out: Path, *, diseases: list[str]) -> dict:
    """Write `out/{train,val,test}/part-*.parquet`, `out/subjects.parquet` and `out/manifest.json`.

    `kept_eids`: the QC-kept subjects; `idp_map`: `idp, disease` (PheWAS); `snp_sets`: `disease, variant_id`
    (catalog sets). Returns the manifest.
    """
    buckets = {}
    for d in diseases:
        snps = snp_sets.filter(pl.col("disease") == d)["variant_id"].to_list()
        idps = idp_map.filter(pl.col("disease") == d)["idp"].to_list()
        if snps and idps:
            buckets[d] = {"snps": snps, "idps": sorted(idps, key=IDPS.index)}
    if not buckets:
        raise InputError("no disease has both catalog SNPs and PheWAS IDPs, so there are no pairs; raise "
                         "--top-n-perc, or relax the PheWAS (alpha, map_nonsignificant)")
    rng = np.random.default_rng(config.seed)
    keep = cohort.eids.is_in(kept_eids.implode()).to_numpy()
    rows = cohort.sample_index[keep]
    eids = cohort.eids.filter(pl.Series(keep))
    n = rows.size
    split_of = split_subjects(n, config, rng)
    if config.max_subjects is not None and config.max_subjects < n:
        sample = np.sort(np.random.default_rng([config.seed, 1]).choice(n, config.max_subjects, replace=False))
        rows, eids, split_of, keep_rows = rows[sample], eids.gather(sample), split_of[sample], sample
        n = sample.size
    else:
        keep_rows = np.arange(n)

    variants = cohort.genotypes.variants
    bim_index = {v: i for i, v in enumerate(variants["variant_id"])}
    snp_ids = sorted({s for b in buckets.values() for s in b["snps"]}, key=bim_index.__getitem__)
    columns = [bim_index[s] for s in snp_ids]
    vocabulary, token_table = snp_vocabulary(variants["allele1"].gather(columns).to_list(),
                                             variants["allele2"].gather(columns).to_list())
    tokens = encode_genotypes(cohort.genotypes.read(rows, columns, dtype=np.int8), token_table)
    values = cohort.idps.filter(pl.Series(keep)).select(IDPS).to_numpy()[keep_rows]
    if config.permute_idps is not None:
        null_rng = np.random.default_rng(config.permute_idps)
        for split in SPLITS:
            members = np.flatnonzero(split_of == split)
            values[members] = values[null_rng.permutation(members)]
    edges = fit_ple_edges(values[split_of == "train"], config.n_bins)
    bins, frac = ple_encode(values, edges)

    snp_pos = {s: i for i, s in enumerate(snp_ids)}
    disease_index = {d: i for i, d in enumerate(diseases)}
    grids = {d: np.array([(snp_pos[s], IDPS.index(i)) for s in b["snps"] for i in b["idps"]], dtype=np.int64)
             for d, b in buckets.items()}
    counts = {}
    for split in SPLITS:
        subjects = np.flatnonzero(split_of == split)
        parts = [_bucket_pairs(subjects, grids[d], disease_index[d], tokens, bins, frac) for d in buckets]
        pairs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if split == "train":  # stream order = training order: no subject or bucket runs
            perm = rng.permutation(len(pairs["subject"]))
            pairs = {k: v[perm] for k, v in pairs.items()}
        counts[split] = write_pair_split(out / split, pairs, rows_per_file=config.rows_per_file)
        del pairs, parts

    pl.DataFrame({"subject": np.arange(n, dtype=np.int32), "eid": eids, "split": split_of.astype(str)}).write_parquet(
        out / "subjects.parquet")
    per_subject = sum(len(g) for g in grids.values())
    manifest = {
        "n_subjects": int(n), "pairs_per_subject": per_subject,
        "splits": {s: {"subjects": int((split_of == s).sum()), "pairs": int(counts[s])} for s in SPLITS},
        "diseases": diseases, "buckets": buckets, "snps": snp_ids,
        "snp_alleles": {s: [variants["allele1"][bim_index[s]], variants["allele2"][bim_index[s]]] for s in snp_ids},
        "idps": IDPS, "vocabulary": vocabulary, "snp_token_table": token_table.tolist(),
        "n_bins": config.n_bins, "ple_bin_edges": {idp: edges[j].tolist() for j, idp in enumerate(IDPS)},
        "seed": config.seed, "config": config.to_dict(), "inputs_sha256": _input_checksums(cohort.path),
        "null_store": (f"IDP values permuted across subjects within each split (seed {config.permute_idps}): no "
                       "genotype-IDP association is left; buckets, tokens and PLE edges are the real store's"
                       if config.permute_idps is not None else None),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _bucket_pairs(subjects: np.ndarray, grid: np.ndarray, disease: int, tokens: np.ndarray, bins: np.ndarray,
                  frac: np.ndarray) -> dict[str, np.ndarray]:
    """All pairs of one bucket for the given subjects: subject-major, the (SNP, IDP) grid within a subject."""
    subject = np.repeat(subjects, len(grid))
    snp = np.tile(grid[:, 0], subjects.size)
    idp = np.tile(grid[:, 1], subjects.size)
    return {
        "subject": subject.astype(np.int32), "snp": snp.astype(np.int16), "idp": idp.astype(np.int16),
        "genotype_token": tokens[subject, snp], "idp_bin": bins[subject, idp], "idp_frac": frac[subject, idp],
        "disease": np.full(subject.size, disease, dtype=np.int8),
    }


def _input_checksums(cohort: Path) -> dict[str, str]:
    from comical.data_io.cohort import TABLE_FILES, genotype_files

    digests = {}
    for path in genotype_files(cohort)[1] + [cohort / name for name in TABLE_FILES]:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        digests[path.name] = h.hexdigest()
    return digests
