"""CGNI's inputs from a cohort with images (paper 002, sections II.A-C and G): groups, splits and the SNP panel.

    inputs/
      manifest.json      task, cohort, image store, modality, counts, the panel's QC, folds, seed
      subjects.parquet   eid, age, sex, label (0 low 2-5, 1 high 9-12, -1 neither or not tested), fold (0..folds-1: the
                         cross-validation fold of a training subject; -1: the hold-out; -2: not in the two groups),
                         age_split (train / val: the brain-age pre-training's subjects, those with an image outside
                         the two groups; test: the two groups, whose images no pre-training sees), g (the panel's
                         dosages, standardised; zeros outside the two groups)
      panel.tsv          variant_id, chromosome, base_pair_location, effect_allele, other_allele, maf, dosage_mean,
                         dosage_sd (of the effect allele on the training set: g = (dosage - mean) / sd)

Subjects: those with an image and a digit span in either group. The hold-out is a stratified 10% of them, the rest
are cut into `folds` stratified cross-validation folds (scikit-learn, seeded). The panel (`wm_panel.txt`, or the
file given) is kept where a variant has >= 90% calls and MAF >= 1% on the 90% training set; dosages are
mean-imputed and standardised with that set's means and SDs (so a cross-validation fold's own rows take part in its
panel QC and scaling: no labels are used, and the effect is small).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from comical.data_io.cohort import load_cohort
from comical.data_io.errors import InputError
from comical.data_io.output_dir import staged_folder
from comical.data_io.images import open_image_store, store_identity
from comical.data_io.simulate_wm import wm_group
from comical.data_io.tables import read_table

HOLDOUT = 0.1
MIN_PER_GROUP = 10


def read_panel(path: Path, variant_ids: list[str]) -> tuple[np.ndarray, int]:
    """Rows (in the genotypes) of the panel file's variant IDs, and how many IDs the genotypes lack."""
    if not path.is_file():
        raise InputError(f"{path}: panel file not found (one variant ID per line, plink --extract format)")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    index = {v: i for i, v in enumerate(variant_ids)}
    rows = np.array(sorted({index[v] for v in ids if v in index}), dtype=np.int64)
    if rows.size < 2:
        raise InputError(f"{path}: {rows.size} of its {len(ids)} variant IDs are in the genotypes; expected a panel")
    return rows, len(ids) - rows.size


def read_digit_span(path: Path, eids: pl.Series) -> np.ndarray:
    """The backward digit span (wm_digits) of each cohort subject (NaN: not tested); 2-12 whole numbers."""
    table = read_table(path, columns=["wm_digits"], allow_missing=True)
    values = table["wm_digits"].to_numpy().astype(float)
    bad = ~np.isnan(values) & ((values != np.round(values)) | (values < 2) | (values > 12))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{path} line {row + 2}, column wm_digits: {values[row]:g}; expected a whole number 2-12 "
                         "(the backward digit span, UK Biobank field 20240) or empty")
    aligned = pl.DataFrame({"eid": eids.cast(pl.String)}).join(
        pl.DataFrame({"eid": table["eid"], "d": values}), on="eid", how="left", maintain_order="left")
    return aligned["d"].fill_null(np.nan).to_numpy()


def prepare_cgni_inputs(cohort_dir: str | Path, out: str | Path, *, panel: str | Path | None = None,
                        modality: str = "t1", folds: int = 5, seed: int = 0, age_subjects: int | None = None) -> dict:
    """Write the inputs folder `out` (staged, renamed into place when whole); returns its manifest.
    `age_subjects`: brain-age pre-training on a random N of the subjects outside the two groups (None: all)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    cohort_dir = Path(cohort_dir)
    cohort = load_cohort(cohort_dir)
    panel_path = Path(panel) if panel else cohort_dir / "wm_panel.txt"
    store = open_image_store(cohort_dir / "images", cohort.eids.to_numpy())
    if modality not in store.modalities:
        raise InputError(f"{store.folder}: no {modality} images; the store holds {store.modalities}")
    digits = read_digit_span(cohort_dir / "cognition.csv", cohort.eids)
    panel_rows, absent = read_panel(panel_path, cohort.genotypes.variants["variant_id"].to_list())

    eids = cohort.eids.cast(pl.Int64).to_numpy()
    has_image = np.isin(eids, store.eids)
    label = np.where(has_image, wm_group(digits), -1).astype(np.int8)
    groups = np.flatnonzero(label >= 0)
    counts = np.bincount(label[groups], minlength=2)
    if counts.min() < MIN_PER_GROUP:
        raise InputError(f"{cohort_dir / 'cognition.csv'}: {counts[0]} subjects with images in the low group (2-5) "
                         f"and {counts[1]} in the high group (9-12); CGNI needs {MIN_PER_GROUP} in each")
    fold = np.full(len(eids), -2, np.int8)
    train, holdout = train_test_split(groups, test_size=HOLDOUT, stratify=label[groups], random_state=seed)
    fold[holdout] = -1
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for k, (_, rows) in enumerate(cv.split(train, label[train])):
        fold[train[rows]] = k
    # brain-age pre-training: the subjects with an image outside the two groups (age drives working memory, so a
    # CNN fitted to the ages of cross-validation subjects would carry their labels' main signal into validation);
    # the two groups are its test split
    age_split = np.full(len(eids), "", dtype=object)
    others = np.flatnonzero(has_image & (label < 0))
    if others.size < 20:
        raise InputError(f"{cohort_dir}: {others.size} subjects with images outside the two working-memory groups; "
                         "the brain-age pre-training needs at least 20")
    if age_subjects is not None:
        others = np.sort(np.random.default_rng([seed, 1]).permutation(others)[:max(20, age_subjects)])
    val = np.random.default_rng(seed).permutation(others)[:max(1, len(others) // 10)]
    age_split[others], age_split[val], age_split[groups] = "train", "val", "test"

    # the panel's dosages on the two groups: QC, imputation and scaling from the training set
    g = cohort.genotypes.read(samples=cohort.sample_index[groups], variants=panel_rows, dtype=np.float64)
    fit = fold[groups] >= 0
    with np.errstate(invalid="ignore"):
        freq = np.nanmean(g[fit], axis=0) / 2
    maf = np.minimum(freq, 1 - freq)
    usable = (np.mean(~np.isnan(g[fit]), axis=0) >= 0.9) & (maf >= 0.01)
    g, panel_rows, maf = g[:, usable], panel_rows[usable], maf[usable]
    g = np.where(np.isnan(g), np.nanmean(g[fit], axis=0), g)
    dosage_mean, dosage_sd = g[fit].mean(0), g[fit].std(0)
    g = (g - dosage_mean) / dosage_sd
    dosages = np.zeros((len(eids), g.shape[1]), np.float32)
    dosages[groups] = g

    with staged_folder(out) as stage:
        keep = np.flatnonzero(has_image)
        age = cohort.covariates["age"].to_numpy().astype(np.float32)
        sex = cohort.covariates["sex"].to_numpy().astype(np.int8)
        pq.write_table(pa.table({
            "eid": eids[keep], "age": age[keep], "sex": sex[keep], "label": label[keep], "fold": fold[keep],
            "age_split": pa.array(age_split[keep].astype(str)),
            "g": pa.FixedSizeListArray.from_arrays(pa.array(dosages[keep].ravel()), dosages.shape[1])}),
            stage / "subjects.parquet")
        variants = cohort.genotypes.variants[panel_rows]
        variants.select("variant_id", pl.col("chrom").alias("chromosome"), pl.col("pos").alias("base_pair_location"),
                        pl.col("allele1").alias("effect_allele"), pl.col("allele2").alias("other_allele"),
                        pl.Series("maf", np.round(maf, 5)), pl.Series("dosage_mean", dosage_mean),
                        pl.Series("dosage_sd", dosage_sd)).write_csv(stage / "panel.tsv", separator="\t")
        manifest = {
            "task": "cgni", "cohort": str(cohort_dir.resolve()), "images": str(store.folder.resolve()),
            "images_sha256": store_identity(store.folder), "modality": modality, "image_shape": list(store.shape),
            "seed": seed, "folds": folds,
            "subjects": {"with_images": int(has_image.sum()), "low": int(counts[0]), "high": int(counts[1]),
                         "holdout": int(holdout.size), "cross_validation": int(train.size)},
            "panel": {"file": str(panel_path.resolve()), "ids_not_in_genotypes": absent,
                      "in_genotypes": int(usable.size), "after_call_rate_and_maf": int(usable.sum())},
            "notes": ["groups: low 2-5, high 9-12 digits (paper 002 section II.A); the rest are left out",
                      "dosages: mean-imputed, standardised with the 90% training set's means and SDs"],
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest

