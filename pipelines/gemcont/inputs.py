"""GEMCONT's inputs from a cohort with images (paper 001, section 2.1): subject splits, the disease's variant panel
and the genotype features, written to a folder the GEMCONT task reads (`comical train --task gemcont`).

    inputs/
      manifest.json      task, cohort, image store, disease, modality, splits, panel size, what each step did
      panel.tsv          variant_id, chromosome, base_pair_location, effect_allele, other_allele, p_value (catalog),
                         effect (log odds ratio of the counted allele, the projector's initial weights)
      genotypes.parquet  eid, split, g: the panel's dosages (mean-imputed, top PCs regressed out on the training
                         subjects, standardised), one fixed-size float32 list per subject

The panel is the disease's GWAS Catalog variants found in the genotypes (the catalog's risk allele harmonised to
the counted allele as pair-making does) with >= 90% calls and MAF >= 1% on the training subjects, clumped at r^2 < 0.05 within 5 Mb on the training subjects (plink's greedy
walk from the smallest catalog p-value). Splits are by subject among those with images (70/15/15, seeded).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from comical.data_io.cohort import load_cohort
from comical.data_io.errors import InputError
from comical.data_io.output_dir import staged_folder
from comical.data_io.images import open_image_store, store_identity
from comical.data_io.traits import load_trait_map
from comical.data_io.ukb_fields import DISEASES

SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def split_subjects(n: int, seed: int) -> np.ndarray:
    """train / val / test (SPLITS' shares; test takes the remainder) for n subjects, by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0] + [math.floor(f * n) for f in SPLITS.values()])
    bounds[-1] = n
    split = np.empty(n, dtype=object)
    for name, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        split[order[lo:hi]] = name
    return split


def prepare_gemcont_inputs(cohort_dir: str | Path, out: str | Path, *, disease: str, modality: str = "t1",
                           n_pcs: int = 20, seed: int = 0, clump_r2: float = 0.05, window_kb: float = 5000.0) -> dict:
    """Write the inputs folder `out` (staged, renamed into place when whole); returns its manifest."""
    from comical.pipelines.comical.catalog_sets import catalog_snp_sets
    from comical.pipelines.statgen.clump import clump_hits

    if disease not in DISEASES:
        raise InputError(f"--disease {disease}: expected one of {DISEASES}")
    cohort = load_cohort(cohort_dir)
    store = open_image_store(Path(cohort_dir) / "images", cohort.eids.to_numpy())
    if modality not in store.modalities:
        raise InputError(f"{store.folder}: no {modality} images; the store holds {store.modalities}")
    pcs = [f"PC{i}" for i in range(1, n_pcs + 1)]
    absent = [c for c in pcs if c not in cohort.covariates.columns]
    if absent:
        raise InputError(f"{cohort.path / 'covariates.csv'}: no column {absent[0]} (--pcs {n_pcs} needs PC1..PC{n_pcs})")

    # subjects with an image, in cohort order, split by a seeded permutation
    eids = cohort.eids.to_numpy().astype(np.int64)
    rows = np.flatnonzero(np.isin(eids, store.eids))
    if rows.size < 20:
        raise InputError(f"{store.folder}: {rows.size} cohort subjects have images; GEMCONT needs at least 20")
    split = split_subjects(rows.size, seed)
    train = rows[split == "train"]

    # the disease's catalog variants, harmonised to the counted allele, with the catalog's odds ratio
    variants = cohort.genotypes.variants.with_columns(pl.lit(True).alias("passed_qc"))
    _, catalog_rows = catalog_snp_sets(cohort.catalog, variants, load_trait_map(), top_n_perc=100, diseases=[disease])
    odds = cohort.catalog.with_row_index("row").select(
        "row", pl.col("OR or BETA").cast(pl.Float64, strict=False).alias("odds_ratio"))
    panel = (catalog_rows.filter((pl.col("status") == "selected") & (pl.col("disease") == disease))
             .join(odds, on="row", how="left")
             .join(variants.select("variant_id", "chrom", "pos", "allele1", "allele2"), on="variant_id", how="left"))
    if panel.is_empty():
        raise InputError(f"{cohort.path / 'gwas_catalog.tsv'}: no {disease} variant is in the genotypes")
    # log OR of the counted allele (allele1); a risk allele the catalog does not name, or no usable OR (missing,
    # not positive: a beta in the OR column): 0, no prior
    sign = pl.when(pl.col("risk_allele") == pl.col("allele1")).then(1.0).when(
        pl.col("risk_allele") == pl.col("allele2")).then(-1.0).otherwise(0.0)
    log_or = pl.when(pl.col("odds_ratio") > 0).then(pl.col("odds_ratio").log()).otherwise(0.0)
    panel = panel.with_columns((log_or * sign + 0.0).alias("effect"))  # + 0.0: no -0.0 in the table

    n_catalog = panel.height
    # every panel variant's calls, read once: training subjects decide the QC and the clumps
    index = {v: i for i, v in enumerate(variants["variant_id"].to_list())}
    g = cohort.genotypes.read(samples=cohort.sample_index[rows], variants=[index[v] for v in panel["variant_id"]],
                              dtype=np.float64)
    fit = split == "train"
    # a panel variant needs calls (>= 90%) and variation (MAF >= 1%) on the training subjects
    with np.errstate(invalid="ignore"):
        frequency = np.nanmean(g[fit], axis=0) / 2
    usable = (np.mean(~np.isnan(g[fit]), axis=0) >= 0.9) & (np.minimum(frequency, 1 - frequency) >= 0.01)
    panel, g = panel.filter(pl.Series(usable)), g[:, usable]
    if panel.is_empty():
        raise InputError(f"{cohort.path}: none of the {n_catalog} {disease} catalog variants in the genotypes has "
                         "90% calls and MAF >= 1% on the training subjects")
    # clump at r^2 < clump_r2 within the window on the training subjects, from the smallest catalog p
    neg = np.full(variants.height, -np.inf)
    neg[[index[v] for v in panel["variant_id"]]] = -np.log10(panel["p_value"].clip(lower_bound=1e-300).to_numpy())
    clumps = clump_hits(cohort.genotypes, cohort.sample_index[train], neg, p1=1.0, p2=1.0 + 1e-9, r2=clump_r2,
                        window_kb=window_kb)
    kept = panel["variant_id"].is_in(clumps["index_variant"].implode())
    panel, g = panel.filter(kept), g[:, kept.to_numpy()]

    # dosages: mean-imputed, the top PCs regressed out (fitted on the training subjects), standardised
    g = np.where(np.isnan(g), np.nanmean(g[fit], axis=0), g)
    c = np.column_stack([np.ones(rows.size), cohort.covariates.select(pcs).to_numpy()[rows].astype(float)])
    coef, *_ = np.linalg.lstsq(c[fit], g[fit], rcond=None)
    g = g - c @ coef
    sd = g[fit].std(0)
    g = g / np.where(sd > 0, sd, 1.0)

    with staged_folder(out) as stage:
        panel_out = panel.select("variant_id", pl.col("chrom").alias("chromosome"), pl.col("pos").alias("base_pair_location"),
                                 pl.col("allele1").alias("effect_allele"), pl.col("allele2").alias("other_allele"),
                                 "p_value", "effect")
        panel_out.write_csv(stage / "panel.tsv", separator="\t")
        pq.write_table(pa.table({
            "eid": pa.array(eids[rows]), "split": pa.array(split.astype(str)),
            "g": pa.FixedSizeListArray.from_arrays(pa.array(g.astype(np.float32).ravel()), g.shape[1])}),
            stage / "genotypes.parquet")
        manifest = {
            "task": "gemcont", "cohort": str(Path(cohort_dir).resolve()), "images": str(store.folder.resolve()),
            # also relative to this folder: a run folder moved with its cohort (the demo's staging) still finds them
            "images_relative": os.path.relpath(store.folder.resolve(), Path(out).resolve()),
            "images_sha256": store_identity(store.folder),  # which store these features belong to (`comical embed`)
            "modality": modality, "image_shape": list(store.shape), "disease": disease, "seed": seed,
            "splits": {name: int((split == name).sum()) for name in SPLITS},
            "panel": {"catalog_variants": n_catalog, "after_call_rate_and_maf": int(usable.sum()),
                      "after_clumping": panel_out.height,
                      "clump_r2": clump_r2, "window_kb": window_kb},
            "n_pcs_regressed": n_pcs,
            "notes": ["panel: the disease's GWAS Catalog variants in the genotypes, clumped on the training subjects",
                      "genotypes: mean-imputed, PCs regressed out on the training subjects, standardised"],
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
