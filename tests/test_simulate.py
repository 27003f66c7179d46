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


# sha256 of the default mini cohort's (seed 0) tables and genotypes, as written before the signal dials existed:
# `--signal 1 --idp-h2 0` must write these bytes (Parquet files are left out: their bytes name the writer's version).
# covariates.csv: its columns before PC1 only. The PCs are a randomized SVD of the (pinned) genotypes, and BLAS on
# another CPU changed their sixth decimal (2026-12-07: the whole file's digest failed on a new machine, the rest held).
COVARIATES_BEFORE_PCS = 6
DEFAULT_MINI_SHA256 = {
    "cognition.csv": "0a23f8b75d4909d4272b9182d7f9b446584ea5979f2a67948bfbb3f9736d49b9",
    "covariates.csv": "5cef4c580aa51340df701434ebdaf7a65e77849d9b752ad01348031d4a829e3b",
    "diagnoses.csv": "e874fc36a3e029507cb9d0a169a97419c27d775fbdd0de072bc9472bcf20f371",
    "eprs.csv": "04081bd739112e4f5d72b294d7770982186951149e144e8e8ac45ae959536238",
    "genotypes.bed": "782dfa42ecd7a511c0ab40abb937892d64ddad8e8a00ef8a3984ac2d189100d0",
    "genotypes.bim": "ea25cbe6c66e2adb2a8c85d650568eb38b33c85e39ea1be3ae46f126e8c4b4ec",
    "genotypes.fam": "f86ddaba87b0e7fefe02fb0488e86c8ca39bc235f5ec5834aca66fd3faab1699",
    "gwas_catalog.tsv": "9c2e3ee181edd63563f943bf53623bc62b8538e56e9b54d242dc8456e2d943c8",
    "idps.csv": "a9a4e2bdc53be23a1368c942c9f0ec3e4dd9b8ac42818e46e4c2ebf7f70e73bd",
    "wm_panel.txt": "1db5fca42cc7021eae36f171d1f4e89a47c6c002045d21e3c3837b6aee7b1302",
}


def test_the_default_dials_write_the_default_cohort_byte_for_byte(mini_cohort):
    manifest = json.loads((mini_cohort / "manifest.json").read_text())
    assert manifest["signal"] == {"signal": 1.0, "idp_h2": 0.0}
    assert json.loads((mini_cohort / "truth" / "signal.json").read_text())["signal"] == 1.0
    for name, digest in DEFAULT_MINI_SHA256.items():
        data = (mini_cohort / name).read_bytes()
        if name == "covariates.csv":
            assert data.split(b"\n")[0].split(b",")[COVARIATES_BEFORE_PCS] == b"PC1"
            data = b"\n".join(b",".join(line.split(b",")[:COVARIATES_BEFORE_PCS]) for line in data.splitlines())
        assert hashlib.sha256(data).hexdigest() == digest, name


def _planted_pair_r2(cohort) -> tuple[np.ndarray, pl.DataFrame]:
    """Each planted SNP->IDP pair's R^2 measured in the written files: the squared correlation of the log IDP with
    the allele count over the subjects with a call (the planted truth only names the pairs)."""
    data = load_cohort(cohort)
    planted = pl.read_parquet(cohort / "truth" / "snp_idp_effects.parquet")
    column = {v: i for i, v in enumerate(data.genotypes.variants["variant_id"].to_list())}
    genotypes = data.genotypes.read(samples=data.sample_index, dtype=np.float64)  # NaN: no call
    log_idps = np.log(data.idps.select(IDPS).to_numpy())
    r2 = []
    for variant, idp in zip(planted["variant_id"], planted["idp"]):
        g = genotypes[:, column[variant]]
        called = ~np.isnan(g)
        r2.append(np.corrcoef(g[called], log_idps[called, IDPS.index(idp)])[0, 1] ** 2)
    return np.array(r2), planted


def test_signal_scales_the_planted_pairs_and_zero_plants_none(mini_cohort, tmp_path):
    """--signal 10: the planted pairs' median R^2, measured in the files, several times the default's (effects x
    sqrt(10), less than tenfold as effects stacked on one IDP share it: 0.046 against 0.013); about sqrt(10) times as
    many pairs from the diseases' pleiotropic leads. --signal 0: no effect, and pairs' R^2 at the null's."""
    strong, null = tmp_path / "strong", tmp_path / "null"
    strong.mkdir(), null.mkdir()
    write_cohort(strong, preset="mini", seed=0, signal=10)
    write_cohort(null, preset="mini", seed=0, signal=0)
    base_r2, base = _planted_pair_r2(mini_cohort)
    strong_r2, planted = _planted_pair_r2(strong)
    assert np.median(strong_r2) > 2.5 * np.median(base_r2) and np.quantile(strong_r2, 0.9) > 0.2
    assert planted["via_disease"].is_not_null().sum() >= 2.5 * base["via_disease"].is_not_null().sum()
    null_r2, nothing = _planted_pair_r2(null)
    assert (nothing["effect_sd"] == 0).all() and np.median(null_r2) < 2 / 2000  # chance R^2 of 2000 subjects: ~1/n
    assert json.loads((strong / "manifest.json").read_text())["signal"] == {"signal": 10.0, "idp_h2": 0.0}


def test_idp_h2_is_what_he_regression_finds(mini_cohort, tmp_path):
    """--idp-h2 0.4: Haseman-Elston regression (pipelines/statgen/heritability, itself checked against the direct
    pair regression) on the written genotypes and log IDPs finds a mean SNP-h2 over the 154 IDPs about 0.4 above the
    default cohort's; truth/idp_h2.parquet says about 0.4 for each. Within the largest subpopulation (1,093
    subjects): over all four, the GRM's population structure attenuates HE's slope (measured: 0.25 above the
    default's instead of 0.37; noted for `comical heritability`)."""
    from comical.pipelines.statgen.heritability import he_regression, relationship_matrix

    out = tmp_path / "h2"
    out.mkdir()
    write_cohort(out, preset="mini", seed=0, idp_h2=0.4)
    shares = pl.read_parquet(out / "truth" / "idp_h2.parquet")["h2_polygenic"]  # realised: chance covariance aside
    assert shares.is_between(0.35, 0.45).all() and abs(shares.mean() - 0.4) < 0.01
    means = []
    for cohort in (mini_cohort, out):
        data = load_cohort(cohort)
        population = pl.DataFrame({"eid": data.idps["eid"].cast(pl.String)}).join(
            pl.read_parquet(cohort / "truth" / "samples.parquet").select(pl.col("eid").cast(pl.String), "population"),
            on="eid", how="left", maintain_order="left")["population"].to_numpy()
        one = population == 0
        genotypes = data.genotypes.read(samples=data.sample_index[one])
        counts = np.where(np.isnan(genotypes), -127, genotypes).astype(np.int8)  # the GRM's missing code
        pcs = data.covariates.select([f"PC{i + 1}" for i in range(10)]).to_numpy()[one]
        h2, _ = he_regression(relationship_matrix(counts), np.log(data.idps.select(IDPS).to_numpy()[one]), pcs)
        means.append(h2.mean())
    assert abs(means[1] - means[0] - 0.4) < 0.08, means


def test_simulate_refuses_a_dial_out_of_range(tmp_path, capsys):
    from comical.cli import main

    for flags in (["--signal", "-1"], ["--idp-h2", "1"]):
        assert main(["simulate", "--out", str(tmp_path / "c"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "expected K >= 0 and 0 <= H < 1" in err
        assert not (tmp_path / "c").exists()
    assert main(["simulate", "--out", str(tmp_path / "c"), "--signal", "3", "--idp-h2", "0.3"]) == 0
    assert "signal 3, idp_h2 0.3" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["signal"] == {"signal": 3.0, "idp_h2": 0.3}
