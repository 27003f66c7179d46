"""The simulated cohort: deterministic, in formats independent readers take, with its planted structure visible."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import statsmodels.api as sm

from comical.data_io.cohort import load_cohort
from comical.data_io.simulate import _CATALOG_COLUMNS, write_cohort
from comical.data_io.ukb_fields import DISEASES, IDPS, PAIR_DISEASES


def test_same_seed_gives_identical_bytes_and_other_seed_differs(mini_cohort, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    again.mkdir(), other.mkdir()
    write_cohort(again, preset="mini", seed=0)
    write_cohort(other, preset="mini", seed=1)
    files = sorted(p.relative_to(mini_cohort) for p in mini_cohort.rglob("*") if p.is_file())
    assert len(files) >= 14
    for f in files:
        assert (mini_cohort / f).read_bytes() == (again / f).read_bytes(), f
    assert (mini_cohort / "genotypes.bed").read_bytes() != (other / "genotypes.bed").read_bytes()


def test_manifest_lists_every_file_with_its_checksum(mini_cohort):
    manifest = json.loads((mini_cohort / "manifest.json").read_text())
    on_disk = {str(p.relative_to(mini_cohort)) for p in mini_cohort.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == on_disk
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((mini_cohort / name).read_bytes()).hexdigest() == digest
    assert manifest["seed"] == 0 and manifest["preset"] == "mini" and manifest["package_version"]
    assert manifest["n_subjects"] == 2000 and manifest["n_idps"] == 154
    assert "raised" in manifest["notes"][0]


def test_tables_read_by_polars_have_the_documented_columns(mini_cohort):
    idps = pl.read_csv(mini_cohort / "idps.csv")
    assert idps.columns == ["eid"] + IDPS and len(IDPS) == 154
    assert "Volume_of_grey_matter_in_Left_Amygdala" in IDPS
    covariates = pl.read_csv(mini_cohort / "covariates.csv")
    assert covariates.columns[:6] == ["eid", "age", "sex", "height", "bmi", "smoking"]
    assert covariates.columns[6:] == [f"PC{i}" for i in range(1, 41)]
    diagnoses = pl.read_csv(mini_cohort / "diagnoses.csv")
    assert diagnoses.columns == ["eid"] + DISEASES
    assert all(diagnoses[d].sum() > 100 for d in DISEASES)  # mini: every disease has cases
    assert pl.read_csv(mini_cohort / "eprs.csv").columns == ["eid", "AD", "BD", "MS", "PD", "SZ"]
    # Realistic scales: FIRST hippocampus about 4,000 mm^3, cortical GM volumes in the thousands.
    hippocampus = idps["Volume_of_Left_Hippocampus"]
    assert 3000 < hippocampus.median() < 5000 and hippocampus.std() / hippocampus.mean() > 0.05
    assert (idps.drop("eid").min_horizontal() > 50).all()


def test_catalog_is_the_download_layout_with_real_trait_names(mini_cohort):
    catalog = pl.read_csv(mini_cohort / "gwas_catalog.tsv", separator="\t", infer_schema=False, quote_char=None)
    assert catalog.columns == _CATALOG_COLUMNS and len(_CATALOG_COLUMNS) == 38
    traits = set(catalog["DISEASE/TRAIT"])
    assert {"Alzheimer's disease", "Bipolar disorder", "Multiple sclerosis"} <= traits
    assert not traits & set(DISEASES)  # trait names, never our column codes
    assert catalog["P-VALUE"].str.contains(r"^\d E-\d+$".replace(" ", "")).all()
    assert catalog["SNPS"].str.contains(" x ").any() and catalog["SNPS"].str.contains("; ").any()
    # True hits carry smaller p-values than the catalog's false hits.
    truth = pl.read_parquet(mini_cohort / "truth" / "catalog_rows.parquet")
    p = catalog["P-VALUE"].cast(pl.Float64).to_numpy()
    single = truth.filter(pl.col("kind") == "single")
    causal = single.filter(pl.col("causal"))["row"].to_numpy()
    null = single.filter(~pl.col("causal"))["row"].to_numpy()
    assert np.median(-np.log10(p[causal])) > np.median(-np.log10(p[null])) + 3


def test_plink2_reads_the_bed_and_its_frequencies_match_ours(mini_cohort, plink2, tmp_path):
    plink2("--bfile", mini_cohort / "genotypes", "--freq", "--out", tmp_path / "f")
    theirs = pl.read_csv(tmp_path / "f.afreq", separator="\t")
    cohort = load_cohort(mini_cohort)
    g = cohort.genotypes.read()
    ours = np.nanmean(g, axis=0) / 2
    assert theirs["ID"].to_list() == cohort.genotypes.variants["variant_id"].to_list()
    # plink2 calls the bim's allele 1 ALT when it reads a .bed; ours counts allele 1.
    assert (theirs["ALT"] == cohort.genotypes.variants["allele1"]).all()
    np.testing.assert_allclose(theirs["ALT_FREQS"].to_numpy(), ours, atol=5e-7)
    assert 0.01 < np.isnan(g).mean() < 0.05  # a few percent missing calls


def test_neighbouring_variants_are_in_ld(mini_cohort):
    truth = pl.read_parquet(mini_cohort / "truth" / "variants.parquet")
    g = load_cohort(mini_cohort).genotypes.read(variants=slice(0, 400))
    x = np.where(np.isnan(g), np.nanmean(g, axis=0), g)
    r = np.corrcoef(x.T)
    same_block = (truth["ld_block"][:399] == truth["ld_block"][1:400]).to_numpy()
    adjacent = np.abs(np.diag(r, 1))
    assert np.nanmedian(adjacent[same_block]) > 0.2
    assert np.nanmedian(adjacent[~same_block]) < 0.05


def test_planted_catalog_snps_associate_with_their_disease(mini_cohort):
    """Plain logistic regression of each disease on its strongest planted SNP (statsmodels)."""
    cohort = load_cohort(mini_cohort)
    effects = pl.read_parquet(mini_cohort / "truth" / "disease_snp_effects.parquet")
    index = {v: i for i, v in enumerate(cohort.genotypes.variants["variant_id"])}
    significant = 0
    for d in PAIR_DISEASES:
        lead = effects.filter((pl.col("disease") == d) & pl.col("causal")).sort(pl.col("beta").abs())[-1]
        null = effects.filter((pl.col("disease") == d) & ~pl.col("causal"))[0]
        y = cohort.diagnoses[d].to_numpy()
        for row, expect_signal in ((lead, True), (null, False)):
            g = cohort.genotypes.read(variants=[index[row["variant_id"][0]]])[:, 0]
            ok = ~np.isnan(g)
            fit = sm.Logit(y[ok], sm.add_constant(g[ok])).fit(disp=0)
            if expect_signal:
                assert np.sign(fit.params[1]) == np.sign(row["beta"][0]), d
                significant += fit.pvalues[1] < 1e-4
    assert significant >= 7


def test_planted_qc_failures_are_recorded(mini_cohort):
    variants = pl.read_parquet(mini_cohort / "truth" / "variants.parquet")
    counts = variants.filter(pl.col("is_catalog"))["planted_failure"].value_counts()
    assert dict(zip(counts["planted_failure"], counts["count"])) == {"": 591, "maf": 3, "hwe": 3, "geno": 3}
