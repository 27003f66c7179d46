"""GWAS: exact against statsmodels and plink2 --glm (with missing calls), calibrated under the null, planted
effects found, multi-trait test against a direct likelihood, clumping, and bad input."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import time
from functools import partial

import numpy as np
import polars as pl
import psutil
import pytest
import statsmodels.api as sm
from statsmodels.multivariate.multivariate_ols import _MultivariateOLS
from scipy import stats

from comical.cli import main
from comical.data_io.plink import open_genotypes
from comical.pipelines.statgen import gwas_stats
from comical.pipelines.statgen.clump import clump_hits, r_squared
from comical.pipelines.statgen.gwas import GwasTables, _Writers, build_inputs, lambda_gc, run_gwas


def _tiny(seed=0, n=300, m=12, p=3, k=3, missing=0.05):
    rng = np.random.default_rng(seed)
    g = rng.binomial(2, rng.uniform(0.1, 0.5, m), size=(n, m)).astype(float)
    g[rng.random((n, m)) < missing] = np.nan
    c = np.column_stack([rng.normal(50, 10, n), rng.integers(0, 2, n), rng.normal(size=(n, k - 2))])
    y = 0.3 * np.nan_to_num(g[:, :p]) + c[:, :1] * 0.02 + rng.normal(size=(n, p))
    return g, c, y


def test_linear_equals_statsmodels_per_variant_with_missing_calls():
    g, c, y = _tiny()
    q = gwas_stats.covariate_basis(c, ["age", "sex", "x"])
    result = gwas_stats.linear(g, q, y - q @ (q.T @ y))
    for j in range(g.shape[1]):
        ok = ~np.isnan(g[:, j])
        for k in range(y.shape[1]):
            fit = sm.OLS(y[ok, k], sm.add_constant(np.column_stack([c[ok], g[ok, j]]))).fit()
            assert result["beta"][j, k] == pytest.approx(fit.params[-1], rel=1e-9)
            assert result["se"][j, k] == pytest.approx(fit.bse[-1], rel=1e-9)
            assert result["p"][j, k] == pytest.approx(fit.pvalues[-1], rel=1e-8)
        assert result["n"][j] == ok.sum()


def test_logistic_equals_statsmodels_and_firth_rescues_separation():
    g, c, _ = _tiny(seed=1)
    rng = np.random.default_rng(2)
    y = (rng.random(len(g)) < 1 / (1 + np.exp(-(np.nan_to_num(g[:, 0]) - 1)))).astype(float)
    g[:, -1] = np.where(y == 1, 2.0, 0.0)  # perfect separation: plain logistic diverges
    result = gwas_stats.logistic(g, c, y)
    for j in range(g.shape[1] - 1):
        ok = ~np.isnan(g[:, j])
        fit = sm.Logit(y[ok], sm.add_constant(np.column_stack([c[ok], g[ok, j]]))).fit(disp=0, tol=1e-12)
        assert result["beta"][j] == pytest.approx(fit.params[-1], rel=1e-7)
        assert result["se"][j] == pytest.approx(fit.bse[-1], rel=1e-7)
        assert not result["firth"][j]
    assert result["firth"][-1] and np.isfinite(result["beta"][-1]) and result["beta"][-1] > 0


def test_multi_trait_p_values_are_uniform_with_many_traits_beside_few_samples():
    # an embedding GWAS on a held-out set: D = 100 traits on 300 subjects, where chi-square(D) of the LRT is far off
    rng = np.random.default_rng(11)
    n, d = 300, 100
    g = rng.binomial(2, rng.uniform(0.05, 0.5, 3000), size=(n, 3000)).astype(float)
    c = rng.normal(size=(n, 2))
    q = gwas_stats.covariate_basis(c, ["a", "b"])
    y = rng.normal(size=(n, d))
    result = gwas_stats.multi_trait(g, q, y - q @ (q.T @ y))
    assert stats.kstest(result["p"], "uniform").pvalue > 1e-3
    assert 0.04 < (result["p"] < 0.05).mean() < 0.06
    assert (stats.chi2.sf(result["lrt"], d) < 0.05).mean() > 0.3  # what the asymptotic p-value would have said


def test_multi_trait_equals_the_direct_likelihood_ratio():
    g, c, y = _tiny(seed=3, p=4)
    q = gwas_stats.covariate_basis(c, ["age", "sex", "x"])
    result = gwas_stats.multi_trait(g, q, y - q @ (q.T @ y))
    for j in range(g.shape[1]):
        ok = ~np.isnan(g[:, j])
        null = np.column_stack([np.ones(ok.sum()), c[ok]])
        full = np.column_stack([null, g[ok, j]])
        sigma = [np.cov((y[ok] - x @ np.linalg.lstsq(x, y[ok], rcond=None)[0]).T, bias=True) for x in (null, full)]
        lrt = ok.sum() * (np.linalg.slogdet(sigma[0])[1] - np.linalg.slogdet(sigma[1])[1])
        assert result["lrt"][j] == pytest.approx(lrt, rel=1e-8)
        # the p-value: Wilks' lambda's exact F, as statsmodels' multivariate OLS gives it
        test = _MultivariateOLS(y[ok], full).fit().mv_test([("g", np.eye(full.shape[1])[-1:])])
        wilks = test.results["g"]["stat"].loc["Wilks' lambda"]
        assert result["p"][j] == pytest.approx(float(wilks["Pr > F"]), rel=1e-6)


def test_monomorphic_and_collinear_variants_get_na_with_a_reason():
    g, c, y = _tiny(seed=4)
    g[:, 0] = 1.0
    g[:, 1] = np.where(np.isnan(g[:, 1]), np.nan, c[:, 1])  # the variant is the sex covariate
    q = gwas_stats.covariate_basis(c, ["age", "sex", "x"])
    result = gwas_stats.linear(g, q, y - q @ (q.T @ y))
    assert result["note"][0] == gwas_stats.MONOMORPHIC and result["note"][1] == gwas_stats.COLLINEAR
    assert np.isnan(result["beta"][:2]).all() and np.isfinite(result["beta"][2:]).all()


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
@pytest.mark.parametrize("df", [1, 4])
def test_lambda_gc_is_the_median_chi_square_over_its_expectation(n, df):
    p = np.random.default_rng(n).uniform(size=n)
    neg = np.append(-np.log10(p), np.nan)  # NA rows are left out
    expected = np.median(stats.chi2.isf(p, df)) / stats.chi2.ppf(0.5, df)
    assert lambda_gc(neg, df) == pytest.approx(expected, rel=1e-12)


def _plink_files(cohort, tmp_path):
    idps = pl.read_csv(cohort / "idps.csv", infer_schema=False)
    names = idps.columns[1:4]
    pheno = idps.select(pl.col("eid").alias("#FID"), pl.col("eid").alias("IID"), *names).with_columns(
        pl.when(pl.int_range(pl.len()) % 17 == 0).then(pl.lit("NA")).otherwise(pl.col(names[2])).alias(names[2]))
    pheno.write_csv(tmp_path / "pheno.txt", separator="\t")
    covar = pl.read_csv(cohort / "covariates.csv", infer_schema=False)
    covar.select(pl.col("eid").alias("#FID"), pl.col("eid").alias("IID"), "age", "sex", "PC1", "PC2", "PC3").write_csv(
        tmp_path / "covar.txt", separator="\t")
    dx = pl.read_csv(cohort / "diagnoses.csv", infer_schema=False)
    dx.select(pl.col("eid").alias("#FID"), pl.col("eid").alias("IID"),
              (pl.col("CBVD").cast(int) + 1).alias("CBVD")).write_csv(tmp_path / "binary.txt", separator="\t")
    return names


def _against_plink(ours: pl.DataFrame, theirs: pl.DataFrame):
    """Our columns oriented to plink2's A1 (it may count either allele), beside plink2's."""
    sign = np.where(theirs["A1"].to_numpy() == ours["effect_allele"].to_numpy(), 1.0, -1.0)
    return ours["beta"].to_numpy() * sign, ours["standard_error"].to_numpy(), ours["p_value"].to_numpy()


def _rel(a, b):
    return np.abs(a - b) / np.abs(b)


def test_linear_and_logistic_match_plink2_glm(mini_cohort, plink2, ray_session, tmp_path):
    names = _plink_files(mini_cohort, tmp_path)
    bfile = mini_cohort / "genotypes"
    plink2("--bfile", bfile, "--pheno", tmp_path / "pheno.txt", "--covar", tmp_path / "covar.txt",
           "--glm", "hide-covar", "--out", tmp_path / "plq")
    plink2("--bfile", bfile, "--pheno", tmp_path / "binary.txt", "--covar", tmp_path / "covar.txt",
           "--glm", "hide-covar", "--out", tmp_path / "plb")
    assert main(["gwas", "--bfile", str(bfile), "--pheno", str(tmp_path / "pheno.txt"), "--covar",
                 str(tmp_path / "covar.txt"), "--out", str(tmp_path / "q"), "--workers", "2", "--no-plots"]) == 0
    for name in names:
        ours = pl.read_csv(tmp_path / f"q.{name}.tsv", separator="\t", null_values="NA")
        theirs = pl.read_csv(tmp_path / f"plq.{name}.glm.linear", separator="\t", null_values="NA")
        assert ours.columns[:10] == ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta",
                                     "standard_error", "effect_allele_frequency", "p_value", "variant_id", "n"]
        assert (ours["n"] == theirs["OBS_CT"]).all() and ours["n"].min() < ours["n"].max()  # per-variant samples
        beta, se, p = _against_plink(ours, theirs)
        # plink2 prints 6 significant digits: a relative difference up to 5e-6 is its rounding
        for a, b in ((beta, theirs["BETA"]), (se, theirs["SE"]), (p, theirs["P"])):
            assert _rel(a, b.to_numpy()).max() < 6e-6

    assert main(["gwas", "--bfile", str(bfile), "--pheno", str(tmp_path / "binary.txt"), "--covar",
                 str(tmp_path / "covar.txt"), "--out", str(tmp_path / "b"), "--no-plots"]) == 0
    ours = pl.read_csv(tmp_path / "b.CBVD.tsv", separator="\t", null_values="NA")
    theirs = pl.read_csv(tmp_path / "plb.CBVD.glm.logistic.hybrid", separator="\t", null_values="NA")
    assert (ours["firth"].to_numpy() == (theirs["FIRTH?"] == "Y").to_numpy()).all()
    assert np.allclose(ours["odds_ratio"], np.exp(ours["beta"]))
    plain = (theirs["FIRTH?"] == "N").to_numpy()
    beta, se, p = _against_plink(ours, theirs)
    close = _rel(se, theirs["LOG(OR)_SE"].to_numpy()) < 1e-4
    assert close[plain].mean() > 0.97
    # beta from plink2's OR (6 digits) is only good to ~1e-5 absolute; p amplifies a 1e-5 SE difference by z^2
    assert np.abs(beta - np.log(theirs["OR"].to_numpy()))[plain & close].max() < 2e-5
    assert _rel(p, theirs["P"].to_numpy())[plain & close].max() < 1e-3
    firth = ~plain & np.isfinite(theirs["P"].to_numpy())
    assert firth.any() and _rel(p, theirs["P"].to_numpy())[firth].max() < 1e-3
    # Where plink2 2.00a3's single-precision logistic drifts, statsmodels (double precision) sides with us.
    genotypes = open_genotypes(bfile)
    covar = pl.read_csv(tmp_path / "covar.txt", separator="\t").select("age", "sex", "PC1", "PC2", "PC3").to_numpy()
    y = pl.read_csv(tmp_path / "binary.txt", separator="\t")["CBVD"].to_numpy() - 1.0
    for j in np.flatnonzero(plain & ~close)[:3]:
        x = genotypes.read(variants=[int(j)], dtype=np.float64)[:, 0]
        ok = ~np.isnan(x)
        fit = sm.Logit(y[ok], sm.add_constant(np.column_stack([covar[ok], x[ok]]))).fit(disp=0, tol=1e-12)
        assert se[j] == pytest.approx(fit.bse[-1], rel=1e-7)


def test_null_phenotypes_are_calibrated(mini_cohort, ray_session, tmp_path):
    genotypes = open_genotypes(mini_cohort / "genotypes")
    rng = np.random.default_rng(7)
    eid = genotypes.samples["iid"]
    pheno = pl.DataFrame({"eid": eid, **{f"null{i}": rng.normal(size=eid.len()) for i in range(8)}})
    covar = pl.DataFrame({"eid": eid, "age": rng.normal(60, 8, eid.len())})
    summary = run_gwas(partial(GwasTables, genotypes, pheno, covar, source="null"), tmp_path / "null", plots=False)
    pooled = np.concatenate([-np.log10(pl.read_csv(tmp_path / f"null.null{i}.tsv", separator="\t",
                                                   null_values="NA")["p_value"].to_numpy()) for i in range(8)])
    assert 0.95 <= lambda_gc(pooled) <= 1.05
    assert all(0.85 < info["lambda_gc"] < 1.15 and info["hits"] == 0 for info in summary["phenotypes"].values())
    embeddings = pl.DataFrame({"eid": eid, **{f"e{i}": rng.normal(size=eid.len()) for i in range(6)}})
    mt = run_gwas(partial(GwasTables, genotypes, embeddings, covar, source="null", multi_trait=True), tmp_path / "mt",
                  plots=False)
    assert 0.9 <= mt["phenotypes"]["multi_trait"]["lambda_gc"] <= 1.1


def test_one_local_worker_runs_in_process_and_writes_what_ray_tasks_write(mini_cohort, ray_session, tmp_path,
                                                                           monkeypatch):
    genotypes = open_genotypes(mini_cohort / "genotypes")
    ids = {"eid": pl.String}
    pheno = pl.read_csv(mini_cohort / "idps.csv", schema_overrides=ids).select(pl.nth(range(4)))  # eid + 3 IDPs
    gaps = pl.int_range(pl.len()) % 7 == 0  # the third IDP with missing values: a second group
    pheno = pheno.with_columns(pl.when(gaps).then(None).otherwise(pl.nth(3)).name.keep())
    covar = pl.read_csv(mini_cohort / "covariates.csv", schema_overrides=ids).select("eid", "age", "sex", "PC1", "PC2")
    tables = partial(GwasTables, genotypes, pheno, covar, source="mini")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_run = run_gwas(tables, tmp_path / "ray", workers=2, block_size=700, plots=False)

    def no_ray(*args, **kwargs):
        raise AssertionError("one local worker must not use Ray")

    monkeypatch.setattr("comical.pipelines.statgen.gwas.init_ray", no_ray)
    monkeypatch.setattr("comical.pipelines.statgen.gwas._ray_blocks", no_ray)
    local = run_gwas(tables, tmp_path / "local", workers=1, plots=False)
    assert local == ray_run and len(local["phenotypes"]) == 3
    for name in local["phenotypes"]:
        ours, theirs = (pl.read_csv(tmp_path / f"{run}.{name}.tsv", separator="\t", null_values="NA")
                        for run in ("local", "ray"))
        assert ours.height == genotypes.n_variants and ours.columns == theirs.columns
        for column in ours.columns:
            if ours[column].dtype == pl.Float64:  # the same arithmetic in other block sizes: last bits may differ
                np.testing.assert_allclose(ours[column].to_numpy(), theirs[column].to_numpy(), rtol=1e-10)
            else:
                assert ours[column].equals(theirs[column])


def test_cohort_gwas_finds_the_planted_snp_idp_effects_and_clumps_them(mini_cohort, ray_session, tmp_path):
    out = tmp_path / "idps"
    assert main(["gwas", "--cohort", str(mini_cohort), "--out", str(out), "--workers", "2"]) == 0
    summary = json.loads((tmp_path / "idps.summary.json").read_text())
    assert len(summary["phenotypes"]) == 154 and (tmp_path / "idps.manhattan.png").stat().st_size > 10_000
    planted = pl.read_parquet(mini_cohort / "truth" / "snp_idp_effects.parquet")
    # Effects run from barely detectable (0.03 SD) to obvious (0.3 SD): the strong ones must be found.
    strong = planted.filter(pl.col("effect_sd").abs() >= 0.15)
    found = 0
    for row in strong.iter_rows(named=True):
        table = pl.read_csv(tmp_path / f"idps.{row['idp']}.tsv", separator="\t", null_values="NA")
        found += table.filter(pl.col("variant_id") == row["variant_id"])["p_value"][0] < 5e-8
    assert strong.height >= 10 and found >= 0.8 * strong.height
    genotypes = open_genotypes(mini_cohort / "genotypes")
    for name, info in summary["phenotypes"].items():
        if info["hits"] < 2:
            continue
        clumps = pl.read_csv(tmp_path / f"idps.{name}.clumps.tsv", separator="\t")
        table = pl.read_csv(tmp_path / f"idps.{name}.tsv", separator="\t", null_values="NA")
        hits = set(table.filter(pl.col("p_value") < 5e-8)["variant_id"])
        members = set(clumps["index_variant"]) | {v for c in clumps["clumped"].drop_nulls() for v in c.split(",")}
        assert hits <= members  # every hit is an index variant or was taken by one
        index = genotypes.variants["variant_id"].to_list()
        rows = [index.index(v) for v in clumps["index_variant"]]
        g = genotypes.read(variants=rows, dtype=np.float64)
        chrom, pos = clumps["chromosome"].to_numpy(), clumps["base_pair_location"].to_numpy()
        for a in range(len(rows)):  # index variants are not in LD with each other within the 5 Mb window
            near = np.flatnonzero((chrom == chrom[a]) & (np.abs(pos - pos[a]) <= 5_000_000) & (np.arange(len(rows)) != a))
            assert (r_squared(g[:, a], g[:, near]) < 0.05).all()


@pytest.mark.parametrize("region_bytes", [256 << 20, 1], ids=["region-in-memory", "read-per-index"])
def test_r_squared_and_clump_against_a_direct_computation(mini_cohort, region_bytes, monkeypatch):
    """Clumps from r^2 computed in float32 products equal the float64 pairwise-complete reference, whether a
    region is held in memory or (dense regions) read one index variant and its window at a time."""
    from comical.pipelines.statgen import clump

    monkeypatch.setattr(clump, "REGION_BYTES", region_bytes)
    genotypes = open_genotypes(mini_cohort / "genotypes")
    g = genotypes.read(variants=slice(0, 40), dtype=np.float64)
    ok = ~np.isnan(g[:, 0]) & ~np.isnan(g[:, 1])
    assert r_squared(g[:, 0], g[:, 1:2])[0] == pytest.approx(np.corrcoef(g[ok, 0], g[ok, 1])[0, 1] ** 2, rel=1e-10)
    neg = np.zeros(genotypes.n_variants)
    neg[[0, 1, 2]] = [20.0, 15.0, 9.0]  # three hits in one LD region
    clumps = clump_hits(genotypes, np.arange(genotypes.n_samples), neg, r2=0.05)
    r2 = r_squared(g[:, 0], g[:, 1:3])
    taken = {genotypes.variants["variant_id"][int(i) + 1] for i in np.flatnonzero(r2 >= 0.05)}
    first = clumps.row(0, named=True)
    assert first["index_variant"] == genotypes.variants["variant_id"][0]
    assert set(filter(None, first["clumped"].split(","))) == taken
    assert clumps.height == 1 + (3 - 1 - len(taken))


def test_clumps_of_many_phenotypes_equal_each_phenotype_clumped_alone(mini_cohort):
    """Clumping every phenotype from one read of the shared regions gives each phenotype's clumps exactly as
    clumping it alone (and a -log10 p beyond float64's p range, even +inf, still leads its clump)."""
    from comical.pipelines.statgen.clump import clump_phenotypes

    genotypes = open_genotypes(mini_cohort / "genotypes")
    rng = np.random.default_rng(4)
    m = genotypes.n_variants
    phenotypes = {}
    for k in range(4):
        neg = -np.log10(rng.uniform(size=m))
        hits = rng.choice(m, 6, replace=False)
        neg[hits] = rng.uniform(8, 40, 6)
        neg[hits + 1] = rng.uniform(2, 9, 6).clip(max=neg[hits] - 0.1)  # neighbours, often in LD
        phenotypes[f"y{k}"] = neg
    phenotypes["y0"][int(np.flatnonzero(phenotypes["y0"] > 8)[0])] = 400.0  # p = 1e-400: 0 in float64
    phenotypes["y1"][int(np.flatnonzero(phenotypes["y1"] > 8)[0])] = np.inf
    together = clump_phenotypes(genotypes, np.arange(genotypes.n_samples), phenotypes)
    for name, neg in phenotypes.items():
        alone = clump_hits(genotypes, np.arange(genotypes.n_samples), neg)
        assert together[name].equals(alone) and alone.height >= 3
    assert together["y0"]["neg_log10_p"][0] == 400.0 and together["y1"]["neg_log10_p"][0] == np.inf


def test_written_blocks_keep_no_view_of_a_tasks_result(mini_cohort, tmp_path):
    """Ray hands a task's arrays to the driver as views of its result in the object store; a kept view pins the
    whole result (its TSV text too), so a biobank run would hold all its output in memory. The writers keep
    nothing of a block: its -log10 p goes to a scratch file, read back one phenotype at a time."""
    import weakref

    genotypes = open_genotypes(mini_cohort / "genotypes")
    pheno = pl.DataFrame({"eid": genotypes.samples["iid"], "y": np.arange(genotypes.n_samples, dtype=float)})
    inputs = build_inputs(GwasTables(genotypes, pheno, pl.DataFrame({"eid": pheno["eid"]}), source="tiny"))
    writers = _Writers(inputs, tmp_path / "w", "tsv")
    m = genotypes.n_variants
    result = np.linspace(0, 30, 2 * m)  # one buffer, as a task's result arrives
    expected = result[:m].copy()
    expected[5] = np.nan
    result[5] = np.nan
    alive = weakref.ref(result)
    writers.append(({"y": np.frombuffer(b"row\n", np.uint8)}, {"y": result[:m]}))
    del result
    assert alive() is None
    summary = writers.finish(plots=True, clump=None)
    assert (tmp_path / "w.y.tsv").read_bytes() == b"row\n"
    assert summary["phenotypes"]["y"]["hits"] == int((expected > -np.log10(5e-8)).sum())
    assert summary["phenotypes"]["y"]["min_p"] == pytest.approx(10 ** -np.nanmax(expected))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.summary.json", "w.y.png", "w.y.tsv"]  # scratch gone


def test_pooled_qq_points_match_the_exact_qq_where_they_are_kept():
    """The many-phenotype QQ keeps the tail exactly and the bulk in 0.001 bins: the tail's points are the exact
    QQ's, and each bin's point lies on the exact curve within a bin."""
    from comical.pipelines.statgen.gwas_plots import _PooledQQ

    rng = np.random.default_rng(3)
    values = [-np.log10(rng.uniform(size=5000)) for _ in range(4)]
    values[0][:20] = np.linspace(4, 30, 20)
    values[1][0] = np.nan
    pooled = _PooledQQ()
    for v in values:
        pooled.add(v)
    points = []

    class Axes:
        def scatter(self, x, y, **_):
            points.append((x, y))

        def plot(self, *_, **__):
            pass

        def set(self, **_):
            pass

    pooled.draw(Axes(), "")
    expected, observed = points[0]
    exact = np.sort(np.concatenate(values)[np.isfinite(np.concatenate(values))])[::-1]
    exact_expected = -np.log10((np.arange(1, exact.size + 1) - 0.5) / exact.size)
    tail = int((exact > _PooledQQ.TAIL).sum())
    assert np.array_equal(observed[:tail], exact[:tail]) and np.allclose(expected[:tail], exact_expected[:tail])
    curve = np.interp(expected[tail:], exact_expected[::-1], exact[::-1])  # the exact QQ at the bins' positions
    assert np.abs(curve - observed[tail:]).max() < 0.01


@pytest.mark.parametrize("dosages", [False, True], ids=["hard-calls", "dosages"])
def test_region_r2_equals_the_pairwise_complete_reference(dosages):
    """r^2 from the calls and sparse missingness corrections equals `r_squared` (float64, masks held densely)."""
    from comical.pipelines.statgen.clump import _Region

    rng = np.random.default_rng(5)
    base = rng.binomial(2, 0.3, size=(500, 1)).astype(float)
    g = np.where(rng.uniform(size=(500, 30)) < 0.7, base, rng.binomial(2, 0.3, size=(500, 30)))
    if dosages:
        g = np.round((g + rng.normal(0, 0.2, g.shape)).clip(0, 2) * 16384) / 16384
    g[rng.uniform(size=g.shape) < 0.05] = np.nan
    region = _Region.read(g.astype(np.float32), hard_calls=not dosages)
    for i in (0, 7, 29):
        near = np.delete(np.arange(30), i)
        reference = r_squared(g[:, i], g[:, near])
        assert np.allclose(region.r2(i, near), reference, rtol=1e-5 if dosages else 1e-10, atol=1e-9)


def _ray_daemons() -> set[int]:
    names = ("gcs_server", "raylet", os.path.join("autoscaler", "_private", "monitor.py"))
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(arg.endswith(names) for arg in process.info["cmdline"] or []):
            found.add(process.info["pid"])
    return found


def test_gwas_on_its_own_local_ray_stops_every_ray_process(mini_cohort, tmp_path):
    before = _ray_daemons()  # the test session's Ray, if it is up
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    run = subprocess.run([sys.executable, "-m", "comical", "gwas", "--bfile", str(mini_cohort / "genotypes"),
                          "--pheno", str(mini_cohort / "idps.csv"), "--pheno-name", "Volume_of_Left_Amygdala",
                          "--covar", str(mini_cohort / "covariates.csv"), "--covar-name", "age,sex",
                          "--workers", "2", "--no-plots", "--out", str(tmp_path / "own")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "autoscaler failed" not in run.stderr and (tmp_path / "own.Volume_of_Left_Amygdala.tsv").exists()
    deadline = time.monotonic() + 15
    while _ray_daemons() - before and time.monotonic() < deadline:  # killed processes take a moment to go
        time.sleep(0.2)
    assert not _ray_daemons() - before


def test_bad_gwas_input_fails_before_compute(cohort_copy, tmp_path, capsys):
    bfile = cohort_copy / "genotypes"
    eid = pl.read_csv(cohort_copy / "idps.csv", infer_schema=False)["eid"]
    n = eid.len()

    def write(name, **columns):
        pl.DataFrame({"eid": columns.pop("ids", eid), **columns}).write_csv(tmp_path / name)
        return str(tmp_path / name)

    good_pheno = write("pheno.csv", y=np.arange(n, dtype=float))
    cases = [
        (["--pheno", write("strangers.csv", ids=[f"x{i}" for i in range(n)], y=np.ones(n))], "no sample ID"),
        (["--pheno", good_pheno, "--covar", write("const.csv", age=np.ones(n))], "covariate age is constant"),
        (["--pheno", good_pheno, "--covar", write("coll.csv", a=np.arange(n) % 7, b=2.0 * (np.arange(n) % 7))],
         "covariate b is collinear"),
        (["--pheno", write("text.csv", y=["tall"] * n)], "'tall' is not a number"),
        (["--pheno", write("nocase.csv", y=np.zeros(n)), "--binary"], "has no cases"),
    ]
    for extra, needle in cases:
        status = main(["gwas", "--bfile", str(bfile), *extra, "--out", str(tmp_path / "out" / "r")])
        err = capsys.readouterr().err.strip()
        assert status == 2 and needle in err and len(err.splitlines()) == 1, (needle, err)
        assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    bim = (cohort_copy / "genotypes.bim").read_text().splitlines()
    (cohort_copy / "genotypes.bim").write_text("\n".join(bim[:-5]) + "\n")
    assert main(["gwas", "--bfile", str(bfile), "--pheno", good_pheno, "--out", str(tmp_path / "out" / "r")]) == 2
    assert "bytes" in capsys.readouterr().err
    assert main(["gwas", "--bfile", str(bfile), "--pheno", good_pheno, "--out", str(tmp_path / "pheno")]) == 2
    assert "would write over the input" in capsys.readouterr().err


def test_multi_trait_gwas_of_a_trained_models_embeddings(trained_run, mini_cohort, tmp_path, capsys):
    embeddings = tmp_path / "embeddings.parquet"
    assert main(["embed", "--run", str(trained_run), "--cohort", str(mini_cohort), "--out", str(embeddings)]) == 0
    assert main(["gwas", "--cohort", str(mini_cohort), "--multi-trait", str(embeddings), "--mt-pcs", "6",
                 "--rank-normalise", "--out", str(tmp_path / "mt"), "--no-plots"]) == 0
    table = pl.read_csv(tmp_path / "mt.multi_trait.tsv", separator="\t", null_values="NA")
    assert (table["df"] == 6).all() and table["lrt"].min() >= 0 and table.height == 3000
    summary = json.loads((tmp_path / "mt.summary.json").read_text())
    assert summary["phenotypes"]["multi_trait"]["test"] == "multi_trait"
    assert 0.8 < summary["phenotypes"]["multi_trait"]["lambda_gc"] < 1.3


def test_logistic_gives_na_and_a_note_for_a_monomorphic_variant_not_a_crash():
    """A monomorphic variant makes its information matrix singular; the other variants' results are unchanged."""
    from comical.pipelines.statgen.gwas_stats import MONOMORPHIC, logistic

    rng = np.random.default_rng(0)
    n = 500
    covariates = rng.normal(size=(n, 2))
    g = rng.binomial(2, 0.3, (n, 4)).astype(float)
    g[:, 1] = 1.0  # every sample heterozygous
    g[5, 2] = np.nan
    y = (rng.random(n) < 0.3).astype(float)
    result = logistic(g, covariates, y)
    assert result["note"][1] == MONOMORPHIC and np.isnan(result["p"][1]) and np.isnan(result["beta"][1])
    alone = logistic(g[:, [0, 2, 3]], covariates, y)
    np.testing.assert_allclose(result["p"][[0, 2, 3]], alone["p"], rtol=1e-10)


def _dosage_files(cohort, tmp_path, plink2, m=300):
    """plink2 writes the test's dosage files: a VCF with DS dosages (the cohort's first `m` calls plus noise, its
    missing calls kept) -> .pgen -> BGEN 1.2 (REF first, 16 bits), so the readers see files no one here wrote."""
    genotypes = open_genotypes(cohort / "genotypes")
    rng = np.random.default_rng(0)
    calls = genotypes.read(variants=slice(0, m), dtype=np.float64)
    dosage = np.clip(calls + rng.normal(0, 0.15, calls.shape), 0, 2).round(3)
    header = "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT",
                        *genotypes.samples["iid"]])
    lines = ["##fileformat=VCFv4.2", '##FORMAT=<ID=GT,Number=1,Type=String,Description="call">',
             '##FORMAT=<ID=DS,Number=1,Type=Float,Description="ALT dosage">', header]
    for j, v in enumerate(genotypes.variants.head(m).iter_rows(named=True)):
        cells = ["./.:." if np.isnan(d) else f"{('0/0', '0/1', '1/1')[int(round(d))]}:{d:g}" for d in dosage[:, j]]
        lines.append("\t".join([v["chrom"], str(v["pos"]), v["variant_id"], v["allele2"], v["allele1"], ".", ".",
                                ".", "GT:DS", *cells]))
    (tmp_path / "d.vcf").write_text("\n".join(lines) + "\n")
    plink2("--vcf", tmp_path / "d.vcf", "dosage=DS", "--make-pgen", "--out", tmp_path / "d")
    plink2("--pfile", tmp_path / "d", "--export", "bgen-1.2", "ref-first", "bits=16", "--out", tmp_path / "d")
    idps = pl.read_csv(cohort / "idps.csv", infer_schema=False)
    names = idps.columns[1:3]
    idps.select(pl.col("eid").alias("#IID"), *names).write_csv(tmp_path / "pheno.txt", separator="\t")
    covar = pl.read_csv(cohort / "covariates.csv", infer_schema=False)
    covar.select(pl.col("eid").alias("#IID"), "age", "sex", "PC1", "PC2").write_csv(tmp_path / "covar.txt",
                                                                                   separator="\t")
    dx = pl.read_csv(cohort / "diagnoses.csv", infer_schema=False)
    dx.select(pl.col("eid").alias("#IID"), (pl.col("CBVD").cast(int) + 1).alias("CBVD")).write_csv(
        tmp_path / "binary.txt", separator="\t")
    return names, int(np.isnan(calls).sum())


@pytest.mark.parametrize("source", ["pgen", "bgen"])
def test_dosage_inputs_match_plink2_glm(source, mini_cohort, plink2, ray_session, tmp_path):
    """`--pfile` and `--bgen` read fractional dosages with missing calls; linear and logistic results equal plink2
    `--glm` on the same plink2-written files (its 6 printed digits). The BGEN run uses Ray tasks, each reading its
    own variant range."""
    names, n_missing = _dosage_files(mini_cohort, tmp_path, plink2)
    assert n_missing > 0
    from comical.data_io.dosages import open_bgen, open_pgen

    genotypes = open_pgen(tmp_path / "d") if source == "pgen" else open_bgen(tmp_path / "d.bgen")
    every = genotypes.read(dtype=np.float64)
    assert (every != np.round(every))[~np.isnan(every)].any()  # dosages, not hard calls
    some = np.random.default_rng(1).permutation(genotypes.n_samples)[:500]  # unsorted subset, as a task asks
    np.testing.assert_array_equal(genotypes.read(samples=some, variants=[7, 3, 250], dtype=np.float64),
                                  every[np.ix_(some, [7, 3, 250])])
    ours_flags = ["--pfile", str(tmp_path / "d")] if source == "pgen" else ["--bgen", str(tmp_path / "d.bgen")]
    theirs_flags = ["--pfile", tmp_path / "d"] if source == "pgen" else \
        ["--bgen", tmp_path / "d.bgen", "ref-first", "--sample", tmp_path / "d.sample"]
    for kind, pheno in (("linear", "pheno.txt"), ("logistic.hybrid", "binary.txt")):
        plink2(*theirs_flags, "--pheno", tmp_path / pheno, "--covar", tmp_path / "covar.txt", "--glm", "hide-covar",
               "--out", tmp_path / "pl")
        assert main(["gwas", *ours_flags, "--pheno", str(tmp_path / pheno), "--covar", str(tmp_path / "covar.txt"),
                     "--out", str(tmp_path / "ours"), "--no-plots", "--workers", "2" if source == "bgen" else "1",
                     "--block-size", "100"]) == 0
        for name in (names if kind == "linear" else ["CBVD"]):
            ours = pl.read_csv(tmp_path / f"ours.{name}.tsv", separator="\t", null_values="NA")
            theirs = pl.read_csv(tmp_path / f"pl.{name}.glm.{kind}", separator="\t", null_values="NA")
            assert (ours["effect_allele"] == theirs["ALT"]).all() and (ours["n"] == theirs["OBS_CT"]).all()
            assert ours["n"].min() < ours["n"].max()  # missing calls drop per variant
            assert not np.allclose(ours["effect_allele_frequency"] * 2 * ours["n"] % 1, 0)  # dosages, not calls
            se = theirs["SE"] if kind == "linear" else theirs["LOG(OR)_SE"]
            beta = theirs["BETA"].to_numpy() if kind == "linear" else np.log(theirs["OR"].to_numpy())
            beta = beta * np.where(theirs["A1"] == theirs["ALT"], 1.0, -1.0)  # plink2 counts the minor allele
            if kind == "linear":  # plink2 prints 6 significant digits
                for a, b in ((ours["beta"], beta), (ours["standard_error"], se), (ours["p_value"], theirs["P"])):
                    assert _rel(np.asarray(a), np.asarray(b)).max() < 6e-6
                continue
            # logistic: as for the .bed above, plink2's single-precision fit agrees to ~1e-4 on most variants
            plain = (theirs["FIRTH?"] == "N").to_numpy()
            close = _rel(ours["standard_error"].to_numpy(), se.to_numpy()) < 1e-4
            assert close[plain].mean() > 0.97
            assert np.abs(ours["beta"].to_numpy() - beta)[plain & close].max() < 2e-5
            assert _rel(ours["p_value"].to_numpy(), theirs["P"].to_numpy())[plain & close].max() < 1e-3


def test_degenerate_variants_get_na_and_a_note_where_plink2_gives_na(plink2, tmp_path):
    """Monomorphic, all-missing, a genotype present only in cases, and a variant equal to a covariate, beside
    ordinary variants, through linear and logistic (Firth fallback) GWAS: where plink2 `--glm` reports NA we report
    NA with a note naming why; where plink2 reports a Firth estimate (quasi-separation) so do we."""
    from bed_reader import to_bed

    from comical.pipelines.statgen.gwas_stats import COLLINEAR, MONOMORPHIC, NO_CALLS

    rng = np.random.default_rng(3)
    n = 600
    y = (rng.random(n) < 0.3).astype(int)
    g = rng.binomial(2, 0.3, (n, 8)).astype(np.float32)
    g[:, 0] = 1  # monomorphic
    g[:, 1] = np.nan  # no calls
    g[:, 2] = 0
    g[np.flatnonzero(y == 1)[:8], 2] = 1  # heterozygotes only among cases
    covariate = g[:, 3].astype(float)  # the variant is a covariate
    ids = [f"s{i}" for i in range(n)]
    to_bed(tmp_path / "d.bed", g, properties={"fid": ids, "iid": ids, "sid": [f"v{j}" for j in range(8)],
                                              "chromosome": ["1"] * 8, "bp_position": list(range(1000, 9000, 1000)),
                                              "allele_1": ["A"] * 8, "allele_2": ["G"] * 8})
    pl.DataFrame({"#FID": ids, "IID": ids, "case": y + 1, "trait": rng.normal(size=n) + y}).write_csv(
        tmp_path / "pheno.txt", separator="\t")
    pl.DataFrame({"#FID": ids, "IID": ids, "age": rng.normal(size=n), "c": covariate}).write_csv(
        tmp_path / "covar.txt", separator="\t")
    plink2("--bfile", tmp_path / "d", "--pheno", tmp_path / "pheno.txt", "--covar", tmp_path / "covar.txt",
           "--glm", "hide-covar", "allow-no-covars", "--out", tmp_path / "pl")
    assert main(["gwas", "--bfile", str(tmp_path / "d"), "--pheno", str(tmp_path / "pheno.txt"), "--covar",
                 str(tmp_path / "covar.txt"), "--out", str(tmp_path / "ours"), "--no-plots"]) == 0
    expected = {0: MONOMORPHIC, 1: NO_CALLS, 3: COLLINEAR}
    for name, suffix in (("case", "glm.logistic.hybrid"), ("trait", "glm.linear")):
        ours = pl.read_csv(tmp_path / f"ours.{name}.tsv", separator="\t", null_values="NA")
        theirs = pl.read_csv(tmp_path / f"pl.{name}.{suffix}", separator="\t", null_values="NA")
        theirs = pl.DataFrame({"ID": [f"v{j}" for j in range(8)]}).join(theirs, on="ID", how="left")
        na_theirs = theirs["P"].is_null().to_numpy()
        assert (ours["p_value"].is_null().to_numpy() == na_theirs).all()
        assert set(np.flatnonzero(na_theirs)) == set(expected)
        for j, why in expected.items():
            assert ours["note"][j] == why
        assert ours["effect_allele_frequency"][1] is None  # no calls: no frequency
        finite = ~na_theirs
        assert _rel(ours["p_value"].to_numpy()[finite], theirs["P"].to_numpy()[finite]).max() < 1e-3
    assert pl.read_csv(tmp_path / "ours.case.tsv", separator="\t", null_values="NA")["firth"][2]


def test_out_formats_hold_the_same_table(mini_cohort, tmp_path):
    """`--out-format tsv.gz` (BGZF: gzip members bgzip/tabix read, one end-of-file block) and `parquet` hold the
    TSV's table, over several blocks."""
    from Bio import bgzf

    args = ["gwas", "--cohort", str(mini_cohort), "--pheno-name", "Volume_of_grey_matter_in_Left_Frontal_Pole",
            "--no-plots", "--block-size", "700"]
    tables = {}
    for fmt in ("tsv", "tsv.gz", "parquet"):
        assert main([*args, "--out", str(tmp_path / fmt.replace(".", "_")), "--out-format", fmt]) == 0
        path = tmp_path / f"{fmt.replace('.', '_')}.Volume_of_grey_matter_in_Left_Frontal_Pole.{fmt}"
        tables[fmt] = pl.read_parquet(path) if fmt == "parquet" else \
            pl.read_csv(path, separator="\t", null_values="NA")
    raw = (tmp_path / "tsv_gz.Volume_of_grey_matter_in_Left_Frontal_Pole.tsv.gz").read_bytes()
    assert raw.endswith(bgzf._bgzf_eof) and raw.count(bgzf._bgzf_eof) == 1
    with bgzf.BgzfReader(fileobj=io.BytesIO(raw)) as reader:  # block by block, as tabix would
        assert "".join(reader) == gzip.decompress(raw).decode()
    assert tables["tsv"].height == 3000
    assert tables["tsv.gz"].equals(tables["tsv"])
    typed = pl.read_csv(tmp_path / "tsv.Volume_of_grey_matter_in_Left_Frontal_Pole.tsv", separator="\t",
                        null_values="NA", schema_overrides=tables["parquet"].schema)  # the text's values, typed
    assert tables["parquet"].drop("note").equals(typed.drop("note"))
    assert tables["parquet"]["note"].fill_null("").equals(typed["note"].fill_null(""))


def test_qq_axes_fit_their_own_ranges():
    """Expected -log10 p ends near log10(n); observed reaches 40: the x axis spans the first, the y axis the
    second (a shared square frame squeezed the expected range into its left eighth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comical.pipelines.statgen.gwas_plots import _qq

    neg = -np.log10(np.random.default_rng(0).uniform(size=10_000))
    neg[:5] = [40, 35, 30, 20, 12]
    fig, ax = plt.subplots()
    _qq(ax, neg, "qq")
    expected_top = -np.log10(0.5 / neg.size)
    assert expected_top <= ax.get_xlim()[1] < 1.1 * expected_top
    assert 40 <= ax.get_ylim()[1] < 45
    plt.close(fig)


def test_variants_with_too_few_calls_get_a_note_without_covariates():
    """With an intercept only, an all-missing variant's corrected system is exactly singular: a note, not a
    LinAlgError for the whole block; a variant called in only 2 samples has no residual degree of freedom."""
    from comical.pipelines.statgen.gwas_stats import FEW_CALLS, NO_CALLS, covariate_basis, linear, logistic

    rng = np.random.default_rng(0)
    n = 200
    g = rng.binomial(2, 0.4, (n, 4)).astype(float)
    g[:, 1] = np.nan
    g[2:, 2] = np.nan
    y = rng.normal(size=n)
    q = covariate_basis(np.empty((n, 0)), [])
    result = linear(g, q, (y - y.mean())[:, None])
    assert list(result["note"]) == ["", NO_CALLS, FEW_CALLS, ""] and np.isfinite(result["p"][[0, 3]]).all()
    logit = logistic(g, np.empty((n, 0)), (y > 0).astype(float))
    assert list(logit["note"][1:3]) == [NO_CALLS, FEW_CALLS] and np.isfinite(logit["p"][[0, 3]]).all()


def test_a_rare_dosage_variant_is_tested_not_called_collinear():
    """One sample carries 1/16384 of an allele: a tiny spread, but nothing collinear about it (the collinearity
    test is relative to the variant's own sum of squares), so it gets a result like any other variant."""
    from comical.pipelines.statgen.gwas_stats import covariate_basis, linear

    rng = np.random.default_rng(0)
    n = 300
    covariates = rng.normal(size=(n, 2))
    g = rng.binomial(2, 0.3, (n, 2)).astype(float)
    g[:, 1] = 0.0
    g[7, 1] = 1 / 16384
    y = rng.normal(size=n)
    q = covariate_basis(covariates, ["a", "b"])
    result = linear(g, q, (y - q @ (q.T @ y))[:, None])
    assert list(result["note"]) == ["", ""] and np.isfinite(result["p"]).all()


def _vcf(path, chrom: str, rows: list[list[str]], samples: list[str]) -> None:
    """Plain GT calls at 5 Mb on (outside chrX's pseudo-autosomal region, where males are diploid)."""
    header = "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples])
    lines = ["##fileformat=VCFv4.2", '##FORMAT=<ID=GT,Number=1,Type=String,Description="call">', header]
    lines += ["\t".join([chrom, str(5_000_000 + j), f"v{j}", "A", "G", ".", ".", ".", "GT", *cells])
              for j, cells in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


def test_phased_bgen_dosage_is_the_haplotype_sum_and_a_haploid_call_is_refused(plink2, tmp_path):
    """plink2 writes a phased BGEN (from phased VCF calls): its dosage is the sum over the two haplotypes, equal
    to plink2's own .pgen of the same calls. A haploid call (a male's chrX) is refused with the variant and sample
    named, not read as a missing call."""
    from comical.data_io.dosages import open_bgen, open_pgen
    from comical.data_io.errors import InputError

    rng = np.random.default_rng(0)
    samples = [f"s{i}" for i in range(40)]
    haplotypes = rng.integers(0, 2, size=(30, 40, 2))
    rows = [[f"{a}|{b}" for a, b in variant] for variant in haplotypes]
    rows[3][5] = ".|."
    _vcf(tmp_path / "p.vcf", "1", rows, samples)
    plink2("--vcf", tmp_path / "p.vcf", "--make-pgen", "--out", tmp_path / "p")
    plink2("--pfile", tmp_path / "p", "--export", "bgen-1.2", "ref-first", "--out", tmp_path / "p")
    bgen = open_bgen(tmp_path / "p.bgen")
    from bgen_reader import open_bgen as bgen_reader

    with bgen_reader(tmp_path / "p.bgen", samples_filepath=tmp_path / "p.sample", verbose=False) as raw:
        assert np.asarray(raw.phased).all()  # the file is phased, so the haplotype branch is what runs
    expected = haplotypes.sum(2).T.astype(float)
    expected[5, 3] = np.nan
    np.testing.assert_array_equal(bgen.read(dtype=np.float64), expected)
    np.testing.assert_array_equal(open_pgen(tmp_path / "p").read(dtype=np.float64), expected)

    rows = [["0/1", "1", "0/0", "0"] for _ in range(3)]  # samples 2 and 4 are male: haploid on chrX
    _vcf(tmp_path / "x.vcf", "X", rows, ["f1", "m1", "f2", "m2"])
    (tmp_path / "x.sex").write_text("#IID\tSEX\nf1\t2\nm1\t1\nf2\t2\nm2\t1\n")
    plink2("--vcf", tmp_path / "x.vcf", "--update-sex", tmp_path / "x.sex", "--export", "bgen-1.2", "ref-first", "--out", tmp_path / "x")
    with pytest.raises(InputError, match=r"variant v0, sample m1: a haploid call"):
        open_bgen(tmp_path / "x.bgen").read()


def test_a_cohort_phenotypes_gaps_leave_out_only_its_own_subjects(cohort_copy, tmp_path, capsys):
    """IDP gaps in a cohort (a real showcase has them): each IDP is tested on the subjects that have it, as plink2
    does; a subject missing one of the model's covariates is left out of every test with the console saying so, and
    one missing a covariate the model does not use (height) is not."""
    first, second = "Volume_of_grey_matter_in_Left_Frontal_Pole", "Volume_of_Left_Hippocampus"
    idps = pl.read_csv(cohort_copy / "idps.csv", infer_schema=False)
    idps.with_columns(pl.when(pl.int_range(pl.len()) < 25).then(None).otherwise(pl.col(second)).alias(second)) \
        .write_csv(cohort_copy / "idps.csv")
    cov = pl.read_csv(cohort_copy / "covariates.csv", infer_schema=False)
    cov.with_columns(pl.when(pl.int_range(pl.len()) == 30).then(None).otherwise(pl.col("PC3")).alias("PC3"),
                     pl.when(pl.int_range(pl.len()) == 40).then(None).otherwise(pl.col("height")).alias("height")) \
        .write_csv(cohort_copy / "covariates.csv")
    out = tmp_path / "g"
    assert main(["gwas", "--cohort", str(cohort_copy), "--pheno-name", f"{first},{second}", "--no-plots",
                 "--out", str(out)]) == 0
    assert "gwas: 1 subjects left out: a missing value in the model's covariates (age, sex, PC1 ...)" in \
        capsys.readouterr().out
    summary = json.loads((tmp_path / "g.summary.json").read_text())
    assert summary["phenotypes"][first]["n"] == 1999 and summary["phenotypes"][second]["n"] == 1999 - 25
    table = pl.read_csv(tmp_path / f"g.{second}.tsv", separator="\t", null_values="NA")
    assert table.height == 3000 and table["p_value"].drop_nulls().len() > 2900
