"""Haseman-Elston heritability and genetic correlation (pipelines/statgen/heritability.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from comical.pipelines.statgen.heritability import genetic_correlation, he_regression, relationship_matrix


def _cohort(n: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.05, 0.5, m)
    genotypes = rng.binomial(2, freq, (n, m)).astype(np.int8)
    z = (genotypes - 2 * freq) / np.sqrt(2 * freq * (1 - freq))
    return rng, genotypes, z, rng.normal(size=(n, 2))


def _traits(rng, z, covariates, h2: float, count: int) -> np.ndarray:
    """`count` phenotypes with SNP heritability h2 over all variants, plus covariate effects."""
    n, m = z.shape
    g = z @ rng.normal(0, np.sqrt(h2 / m), (m, count))
    return g + rng.normal(0, np.sqrt(1 - h2), (n, count)) + covariates @ rng.normal(0, 1, (2, count))


def test_he_regression_equals_the_direct_pair_regression():
    # reference: the regression of y_j y_k on A_jk over every distinct pair, through the origin (numpy lstsq
    # on the explicit pair list; statsmodels OLS(products, A_jk) gives the same slope)
    rng, genotypes, z, covariates = _cohort(150, 400, seed=0)
    y = _traits(rng, z, covariates, 0.6, 3)
    a = relationship_matrix(genotypes)
    p = genotypes.mean(0) / 2  # the GRM standardises with the sample's frequencies (Yang et al. 2011)
    zs = (genotypes - 2 * p) / np.sqrt(2 * p * (1 - p))
    np.testing.assert_allclose(a, zs @ zs.T / zs.shape[1], rtol=1e-5, atol=1e-6)
    h2, _ = he_regression(a, y, covariates)
    x = np.column_stack([np.ones(len(y)), covariates])
    r = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    r /= r.std(0)
    j, k = np.triu_indices(len(a), 1)
    for t in range(3):
        slope = np.linalg.lstsq(a[j, k][:, None], r[j, t] * r[k, t], rcond=None)[0][0]
        assert h2[t] == pytest.approx(slope, rel=1e-10)


def test_he_regression_recovers_planted_heritability_with_calibrated_standard_errors():
    # 30 replicate cohorts (new genotypes and phenotypes each): the jackknife se describes this spread
    estimates, errors, nulls = [], [], []
    for seed in range(30):
        rng, genotypes, z, covariates = _cohort(800, 1000, seed=100 + seed)
        a = relationship_matrix(genotypes)
        h2, se = he_regression(a, _traits(rng, z, covariates, 0.5, 1), covariates)
        estimates.append(h2[0])
        errors.append(se[0])
        nulls.append(he_regression(a, rng.normal(size=(800, 1)), covariates)[0][0])
    estimates, errors = np.array(estimates), np.array(errors)
    spread = estimates.std(ddof=1)
    assert abs(estimates.mean() - 0.5) < 3 * spread / np.sqrt(30)  # unbiased
    assert errors.mean() == pytest.approx(spread, rel=0.35)  # the se is the estimates' spread
    assert np.mean(np.abs(estimates - 0.5) < 2 * errors) >= 0.85  # each within 2 of its se of the truth
    assert abs(np.mean(nulls)) < 3 * np.std(nulls, ddof=1) / np.sqrt(30)  # no heritability: centred on 0


def test_genetic_correlation_of_a_trait_with_itself_is_one_and_planted_correlation_is_recovered():
    rng, genotypes, z, covariates = _cohort(1000, 1200, seed=2)
    a = relationship_matrix(genotypes)
    y = _traits(rng, z, covariates, 0.6, 4)
    rg, se = genetic_correlation(a, y, y, covariates)
    np.testing.assert_allclose(rg, 1.0, atol=1e-12)
    # two traits sharing their genetic part (rg = 1) but with independent noise; and two unrelated ones (rg = 0)
    n, m = z.shape
    g = z @ rng.normal(0, np.sqrt(0.6 / m), (m, 8))
    first = g + rng.normal(0, np.sqrt(0.4), (n, 8))
    second = g + rng.normal(0, np.sqrt(0.4), (n, 8))
    shared, shared_se = genetic_correlation(a, first, second, covariates)
    assert abs(np.nanmean(shared) - 1.0) < 3 * np.nanmean(shared_se) / np.sqrt(8)
    unrelated, _ = genetic_correlation(a, first, np.roll(second, 1, axis=1), covariates)
    assert abs(np.nanmean(unrelated)) < 0.3


def test_heritability_command_on_the_mini_cohort(mini_cohort, tmp_path, capsys):
    import polars as pl

    from comical.cli import main

    truth = pl.read_parquet(mini_cohort / "truth" / "samples.parquet")
    rng = np.random.default_rng(0)
    liability = truth["liability_AD"].to_numpy()
    noise = rng.normal(size=(truth.height, 2))
    emb = pl.DataFrame({"eid": truth["eid"], "t1_0": liability + noise[:, 0] * liability.std(),
                        "t2_0": liability + noise[:, 1] * liability.std(), "t1_1": noise[:, 0], "t2_1": noise[:, 1]})
    path = tmp_path / "emb.parquet"
    emb.write_parquet(path)
    out = tmp_path / "h2"
    assert main(["heritability", "--embeddings", str(path), "--cohort", str(mini_cohort), "--out", str(out),
                 "--rg", "t1_,t2_"]) == 0
    table = pl.read_csv(out / "h2.csv")
    assert table.columns == ["dimension", "h2", "se", "n_subjects", "n_variants"]
    h2 = dict(zip(table["dimension"], table["h2"]))
    se = dict(zip(table["dimension"], table["se"]))
    # half the variance is the planted AD liability (its causal variants are among the pruned ones only in part):
    # clearly heritable; pure noise is not
    assert h2["t1_0"] - 3 * se["t1_0"] > 0 and abs(h2["t1_1"]) < 3 * se["t1_1"]
    rg = pl.read_csv(out / "rg.csv")
    assert rg["dimension_1"].to_list() == ["t1_0", "t1_1"]
    assert rg["rg"][0] > 0.5  # the same liability on both sides
    assert main(["heritability", "--embeddings", str(tmp_path / "none.parquet"), "--cohort", str(mini_cohort),
                 "--out", str(tmp_path / "x")]) == 2
    # randomized HE on a reused QC folder: within the exact estimate's se; the QC is not rerun
    from comical.data_io.cohort import load_cohort
    from comical.pipelines.statgen.qc import run_qc

    (tmp_path / "qc").mkdir()
    run_qc(load_cohort(mini_cohort)).write(tmp_path / "qc")
    assert main(["heritability", "--embeddings", str(path), "--cohort", str(mini_cohort), "--out",
                 str(tmp_path / "rhe"), "--method", "randomized", "--qc", str(tmp_path / "qc")]) == 0
    fast = pl.read_csv(tmp_path / "rhe" / "h2.csv")
    for name, value in zip(fast["dimension"], fast["h2"]):
        assert abs(value - h2[name]) < se[name], name
    assert "variant blocks" in json.loads((tmp_path / "rhe" / "summary.json").read_text())["method"]
    # RHE-mc on two components (odd and even chromosomes; chromosome 1 left out of the file): the total is the sum of
    # the parts, the left-out variants are named in a note, and a file without the columns is one line, exit 2
    bim = pl.read_csv(mini_cohort / "genotypes.bim", separator="\t", has_header=False,
                      new_columns=["chrom", "variant_id", "cm", "pos", "a1", "a2"])
    annotation = bim.filter(pl.col("chrom") != 1).select(
        "variant_id", component=pl.when(pl.col("chrom") % 2 == 1).then(pl.lit("odd")).otherwise(pl.lit("even")))
    annotation.write_csv(tmp_path / "components.tsv", separator="\t")
    assert main(["heritability", "--embeddings", str(path), "--cohort", str(mini_cohort), "--out",
                 str(tmp_path / "mc"), "--components", str(tmp_path / "components.tsv"), "--qc",
                 str(tmp_path / "qc")]) == 0
    assert "pruned variants are not in --components: left out" in capsys.readouterr().out
    parts = pl.read_csv(tmp_path / "mc" / "h2.csv")
    assert {"h2_odd", "se_odd", "h2_even", "se_even"} <= set(parts.columns)
    np.testing.assert_allclose(parts["h2"], parts["h2_odd"] + parts["h2_even"])
    assert parts["n_variants"][0] < fast["n_variants"][0]
    assert "RHE-mc, 2 components" in json.loads((tmp_path / "mc" / "summary.json").read_text())["method"]
    annotation.rename({"component": "bin"}).write_csv(tmp_path / "bad.tsv", separator="\t")
    assert main(["heritability", "--embeddings", str(path), "--cohort", str(mini_cohort), "--out",
                 str(tmp_path / "mc_bad"), "--components", str(tmp_path / "bad.tsv")]) == 2
    err = capsys.readouterr().err
    assert "bad.tsv: expected columns variant_id and component" in err and not (tmp_path / "mc_bad").exists()
    # a QC folder of another cohort, and --rg without the GRM: one line each, before any compute
    other = tmp_path / "qc_other"
    shutil.copytree(tmp_path / "qc", other)
    sample_qc = pl.read_csv(other / "sample_qc.tsv", separator="\t")
    sample_qc.head(100).write_csv(other / "sample_qc.tsv", separator="\t")
    assert main(["heritability", "--embeddings", str(path), "--cohort", str(mini_cohort), "--out",
                 str(tmp_path / "y"), "--qc", str(other)]) == 2
    err = capsys.readouterr().err
    assert "made from another cohort" in err and not (tmp_path / "y").exists()
    # rg without the GRM (randomized bivariate HE: its estimate is the exact one's, test below). Its h2 se comes from
    # variant blocks, and the planted liability sits on a few variants, so here no h2 clears 2 se: NA with the note
    assert main(["heritability", "--embeddings", str(path), "--cohort", str(mini_cohort), "--out",
                 str(tmp_path / "z"), "--method", "randomized", "--rg", "t1_,t2_", "--qc", str(tmp_path / "qc")]) == 0
    fast_rg = pl.read_csv(tmp_path / "z" / "rg.csv")
    assert fast_rg["dimension_1"].to_list() == ["t1_0", "t1_1"] and fast_rg["rg"].is_nan().all()
    assert (fast_rg["note"] == "h2 of a side not above 2 se: rg not estimable").all()


def test_randomized_he_agrees_with_exact_he_within_its_standard_error():
    """RHE-reg (rhe.py) against the exact HE on 12 replicate cohorts (800 subjects, 1,000 variants, h2 0.5): every
    estimate within the exact one's jackknife se (their mean gap is a small part of it: the randomisation's error),
    and its own variant-block jackknife se within 40% of the replicates' spread."""
    from comical.pipelines.statgen.rhe import randomized_he

    exact, exact_se, fast, fast_se = [], [], [], []
    for seed in range(12):
        rng, genotypes, z, covariates = _cohort(800, 1000, seed=100 + seed)
        y = _traits(rng, z, covariates, 0.5, 1)
        h2, se = he_regression(relationship_matrix(genotypes), y, covariates)
        h2_fast, se_fast = randomized_he(lambda start, stop: genotypes[:, start:stop], 1000, y, covariates,
                                         seed=seed)
        exact.append(h2[0]), exact_se.append(se[0]), fast.append(h2_fast[0]), fast_se.append(se_fast[0])
    exact, fast, exact_se = np.array(exact), np.array(fast), np.array(exact_se)
    assert (np.abs(fast - exact) < exact_se).all()
    assert np.abs(fast - exact).mean() < 0.25 * exact_se.mean()
    assert np.mean(fast_se) == pytest.approx(fast.std(ddof=1), rel=0.4)


def test_multi_component_randomized_he_matches_the_pair_regression_and_finds_the_planted_component():
    """RHE-mc (rhe.py randomized_he_components) on 12 replicate cohorts of 800 subjects and 1,000 variants in runs of
    five: three of component 0, then noisy copies (10% of calls redrawn) of the first two, component 1. So the
    components are in local LD and of unequal sizes (600 / 400); h2 0.5, all on component 0. Reference: the
    regression of y_i y_j on (A_0,ij, A_1,ij) over every distinct pair through the origin (numpy lstsq on the two
    exact GRMs). Each component's estimate lies within its se of the reference; the replicates find 0.5 on component
    0 and 0 on component 1 (fitted one at a time, component 1 would take about 0.25 through the LD); the se, the
    total's too, follows the replicates' spread within 40%."""
    from comical.pipelines.statgen.heritability import _residualised
    from comical.pipelines.statgen.rhe import randomized_he_components

    components = np.tile([0, 0, 0, 1, 1], 200)
    source = np.flatnonzero(np.tile([1, 1, 0, 0, 0], 200))
    reference, fast, fast_se, total, total_se = [], [], [], [], []
    for seed in range(12):
        rng, genotypes, _, covariates = _cohort(800, 1000, seed=300 + seed)
        copy = genotypes[:, source].copy()
        redraw = rng.random(copy.shape) < 0.1
        copy[redraw] = genotypes[:, components == 1][redraw]
        genotypes[:, components == 1] = copy
        x = genotypes.astype(float)
        z = (x - x.mean(0)) / x.std(0)
        g = z[:, components == 0] @ rng.normal(0, np.sqrt(0.5 / 600), 600)
        y = (g + rng.normal(0, np.sqrt(0.5), 800) + covariates @ rng.normal(0, 1, 2)).reshape(-1, 1)
        r = _residualised(y, covariates)[:, 0]
        i, j = np.triu_indices(800, 1)
        pairs = np.column_stack([relationship_matrix(genotypes[:, components == k])[i, j] for k in (0, 1)])
        reference.append(np.linalg.lstsq(pairs, r[i] * r[j], rcond=None)[0])
        h2, se_total, parts, se = randomized_he_components(lambda start, stop: genotypes[:, start:stop], components,
                                                           y, covariates, seed=seed)
        fast.append(parts[:, 0]), fast_se.append(se[:, 0]), total.append(h2[0]), total_se.append(se_total[0])
        np.testing.assert_allclose(h2, parts.sum(0))
    reference, fast, fast_se = np.array(reference), np.array(fast), np.array(fast_se)
    assert (np.abs(fast - reference) < fast_se).all()
    assert (np.abs(fast - reference).mean(0) < 0.25 * fast_se.mean(0)).all()
    spread = fast.std(0, ddof=1)
    assert abs(fast[:, 0].mean() - 0.5) < 3 * spread[0] / np.sqrt(12)
    assert abs(fast[:, 1].mean()) < 3 * spread[1] / np.sqrt(12)
    np.testing.assert_allclose(fast_se.mean(0), spread, rtol=0.4)
    assert np.mean(total_se) == pytest.approx(np.std(total, ddof=1), rel=0.4)


def test_randomized_rg_equals_the_exact_estimate_and_its_se_follows_the_replicates():
    """Bivariate randomized HE (rhe.py randomized_rg) on 12 replicate cohorts (800 subjects, 1,000 variants; two
    traits of h2 0.6 whose genetic parts correlate 0.5): the same rg as the exact GRM's (the random vectors cancel
    in it), and a variant-block jackknife se within 40% of the replicates' spread."""
    from comical.pipelines.statgen.rhe import randomized_rg

    exact, fast, fast_se = [], [], []
    for seed in range(12):
        rng, genotypes, z, covariates = _cohort(800, 1000, seed=200 + seed)
        n, m = z.shape
        shared, own = (z @ rng.normal(0, np.sqrt(0.6 / m), (m, 1)) for _ in range(2))
        y1 = shared + rng.normal(0, np.sqrt(0.4), (n, 1))
        y2 = 0.5 * shared + np.sqrt(0.75) * own + rng.normal(0, np.sqrt(0.4), (n, 1))
        rg, _ = genetic_correlation(relationship_matrix(genotypes), y1, y2, covariates)
        rg_fast, se_fast = randomized_rg(lambda start, stop: genotypes[:, start:stop], 1000, y1, y2, covariates,
                                         seed=seed)
        exact.append(rg[0]), fast.append(rg_fast[0]), fast_se.append(se_fast[0])
    np.testing.assert_allclose(fast, exact, rtol=1e-8)
    assert np.mean(fast_se) == pytest.approx(np.std(fast, ddof=1), rel=0.4)
    assert abs(np.mean(fast) - 0.5) < 3 * np.std(fast, ddof=1) / np.sqrt(12)


def test_he_estimator_is_exact_up_to_its_size_and_randomized_above(monkeypatch):
    """`HeEstimator` (what `heritability` and `evaluate momentum` use): exact HE on the GRM up to
    EXACT_MAX_SUBJECTS, no GRM above it, with h2 within the exact se and the same rg."""
    from comical.pipelines.statgen import heritability

    class Genotypes:  # the cohort reader's interface over an array
        def __init__(self, g):
            self.g = g

        def read(self, rows, columns, dtype):
            return self.g[np.ix_(rows, columns)].astype(dtype)

    rng, genotypes, z, covariates = _cohort(600, 800, seed=7)
    y = _traits(rng, z, covariates, 0.6, 2)
    rows, variants = np.arange(600), np.arange(800)
    exact = heritability.HeEstimator(Genotypes(genotypes), rows, variants, covariates)
    monkeypatch.setattr(heritability, "EXACT_MAX_SUBJECTS", 500)
    fast = heritability.HeEstimator(Genotypes(genotypes), rows, variants, covariates)
    assert exact.method == "exact" and exact.grm is not None and fast.method == "randomized" and fast.grm is None
    (h2, se), (h2_fast, _) = exact.h2(y), fast.h2(y)
    np.testing.assert_allclose(h2, he_regression(relationship_matrix(genotypes), y, covariates)[0])
    assert (np.abs(h2_fast - h2) < se).all()
    np.testing.assert_allclose(fast.rg(y[:, :1], y[:, 1:])[0], exact.rg(y[:, :1], y[:, 1:])[0], rtol=1e-8)


def test_grm_bin_equals_plink2_make_grm_bin(mini_cohort, plink2, tmp_path, capsys):
    """`comical grm` against `plink2 --make-grm-bin` on the same subjects and variants (QC's keep and prune.in
    files; the mini cohort has missing calls, so the pairwise counts matter): the same IDs, relationships equal to
    float32 precision, the same pair counts. An existing PREFIX is never overwritten."""
    from comical.cli import main
    from comical.data_io.cohort import load_cohort
    from comical.pipelines.statgen.grm import read_grm_bin
    from comical.pipelines.statgen.qc import run_qc

    qc_dir = tmp_path / "qc"
    qc_dir.mkdir()
    run_qc(load_cohort(mini_cohort)).write(qc_dir)
    assert main(["grm", "--cohort", str(mini_cohort), "--out", str(tmp_path / "ours"), "--qc", str(qc_dir)]) == 0
    plink2("--bfile", mini_cohort / "genotypes", "--keep", qc_dir / "kept_samples.id", "--extract",
           qc_dir / "pruned.prune.in", "--make-grm-bin", "--out", tmp_path / "plink2")
    ours, ours_n, ours_ids = read_grm_bin(tmp_path / "ours")
    theirs, theirs_n, theirs_ids = read_grm_bin(tmp_path / "plink2")
    assert sorted(ours_ids) == sorted(theirs_ids) and len(ours_ids) > 1900
    order = np.argsort(ours_ids)
    other = np.argsort(theirs_ids)
    np.testing.assert_allclose(ours[np.ix_(order, order)], theirs[np.ix_(other, other)], atol=2e-6)
    np.testing.assert_array_equal(ours_n[np.ix_(order, order)], theirs_n[np.ix_(other, other)])
    assert (ours_n < ours_n.max()).any()  # some pairs miss calls: the counts were exercised
    capsys.readouterr()
    assert main(["grm", "--cohort", str(mini_cohort), "--out", str(tmp_path / "ours")]) == 2
    assert "nothing is overwritten" in capsys.readouterr().err
