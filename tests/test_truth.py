"""Scoring against planted truth: the GWAS baseline per pair pinned to statsmodels, the ranking metrics pinned to
sklearn and brute force, planted pairs found on the mini cohort, and the written files."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm
from bed_reader import open_bed
from sklearn.metrics import average_precision_score, roc_auc_score

from comical.data_io.cohort import load_cohort
from comical.pipelines.statgen.gwas import DEFAULT_COHORT_COVARIATES
from comical.pipelines.comical.truth import candidate_pairs, gwas_pair_pvalues, score_ranking, truth_comparison


@pytest.fixture(scope="module")
def cohort(mini_cohort):
    return load_cohort(mini_cohort)


@pytest.fixture(scope="module")
def planted(mini_cohort):
    return pl.read_parquet(mini_cohort / "truth" / "snp_idp_effects.parquet")


@pytest.fixture(scope="module")
def train_eids(cohort):
    eids = cohort.eids.to_numpy()
    return pl.Series("eid", np.random.default_rng(0).choice(eids, round(0.7 * eids.size), replace=False))


@pytest.fixture(scope="module")
def candidates(mini_cohort, cohort, planted):
    """The planted pairs and 30 random non-planted (catalog SNP, IDP) pairs."""
    rng = np.random.default_rng(1)
    catalog = pl.read_parquet(mini_cohort / "truth" / "variants.parquet").filter("is_catalog")["variant_id"]
    idps = [c for c in cohort.idps.columns if c != "eid"]
    truth = set(zip(planted["variant_id"], planted["idp"]))
    random = set()
    while len(random) < 30:
        pair = (catalog[int(rng.integers(catalog.len()))], idps[int(rng.integers(len(idps)))])
        if pair not in truth:
            random.add(pair)
    rows = [(s, i, "planted") for s, i in zip(planted["variant_id"], planted["idp"])]
    rows += [(s, i, "random") for s, i in sorted(random)]
    return pl.DataFrame(rows, schema=["snp", "idp", "disease"], orient="row")


@pytest.fixture(scope="module")
def gwas(cohort, candidates, train_eids):
    return gwas_pair_pvalues(cohort, candidates, train_eids)


def test_candidate_pairs_is_every_bucket_grid_cell_and_keeps_cross_bucket_duplicates():
    manifest = {"buckets": {"AD": {"snps": ["rs1", "rs2"], "idps": ["a", "b", "c"]},
                            "PD": {"snps": ["rs2"], "idps": ["a"]}}}
    table = candidate_pairs(manifest)
    assert table.columns == ["snp", "idp", "disease"]
    assert table.rows() == [(s, i, "AD") for s in ("rs1", "rs2") for i in "abc"] + [("rs2", "a", "PD")]


def test_gwas_pair_pvalues_equal_statsmodels_ols(mini_cohort, cohort, candidates, train_eids, gwas):
    """Independent path: bed-reader by .fam IID, the CSV tables joined by eid, statsmodels OLS.
    Reference: sm.OLS(idp, [1, g, age, sex, PC1..PC10]) on the training subjects with a call for the SNP."""
    assert gwas.select("snp", "idp", "disease").equals(candidates)
    bed = open_bed(mini_cohort / "genotypes.bed")
    bim = list(bed.sid)
    table = (pl.DataFrame({"eid": train_eids}).join(cohort.idps, on="eid")
             .join(cohort.covariates.select("eid", *DEFAULT_COHORT_COVARIATES), on="eid"))
    rows = [list(bed.iid).index(e) for e in table["eid"]]
    covar = table.select(DEFAULT_COHORT_COVARIATES).to_numpy().astype(float)
    for r in (0, 5, candidates.height - 1):  # two planted pairs and a random one
        snp, idp = candidates["snp"][r], candidates["idp"][r]
        g = bed.read(index=(rows, bim.index(snp)), dtype="float64")[:, 0]
        ok = ~np.isnan(g)
        assert (~ok).any()  # the comparison covers a SNP with missing calls
        fit = sm.OLS(table[idp].to_numpy()[ok], sm.add_constant(np.column_stack([g[ok], covar[ok]]))).fit()
        assert gwas["beta"][r] == pytest.approx(fit.params[1], rel=1e-6)
        assert gwas["p"][r] == pytest.approx(fit.pvalues[1], rel=1e-6)
        assert gwas["n"][r] == ok.sum()


def test_gwas_pair_pvalues_names_an_unknown_snp_or_foreign_eid(cohort, candidates, train_eids):
    bad = candidates.head(2).with_columns(snp=pl.Series(["rs1", "rs_nowhere"]))
    with pytest.raises(ValueError, match="rs1.*not in .*genotypes.bim"):
        gwas_pair_pvalues(cohort, bad, train_eids)
    with pytest.raises(ValueError, match="1 of .* not subjects of the cohort"):
        gwas_pair_pvalues(cohort, candidates, train_eids.append(pl.Series(["no-such-eid"])))


def _brute_precision_at_k(labels, score, k):
    """Mean over every order of the pairs that sorts the scores descending (ties in every order)."""
    orders = [o for o in itertools.permutations(range(len(score))) if all(np.diff(score[list(o)]) <= 0)]
    return np.mean([labels[list(o[:k])].mean() for o in orders])


def test_score_ranking_equals_sklearn_brute_force_and_hand_bh():
    labels = np.array([1, 0, 1, 0, 0, 1, 0, 0], bool)
    score = np.array([3.0, 5.0, 2.0, 2.0, 2.0, 4.0, 1.0, 0.5])  # a three-way tie straddles k = 4
    p = np.array([0.004, 0.001, 0.02, 0.3, 0.5, 0.002, 0.9, 0.05])
    result = score_ranking(labels, score, p, k=4)
    assert result["auroc"] == pytest.approx(roc_auc_score(labels, score), rel=1e-12)
    assert result["auprc"] == pytest.approx(average_precision_score(labels, score), rel=1e-12)
    # chance: a random order's expected average precision, over all C(8, 3) equally likely placements of the 3
    every = [average_precision_score(np.isin(np.arange(8), list(c)), -np.arange(8.0))
             for c in itertools.combinations(range(8), 3)]
    assert result["auprc_chance"] == pytest.approx(np.mean(every), rel=1e-12) and result["auprc_chance"] > 3 / 8
    assert result["precision_at_k"] == pytest.approx(_brute_precision_at_k(labels, score, 4))
    assert result["precision_at_k"] == pytest.approx((2 + 1 / 3) / 4)  # 5, 4, 3, then one of the three 2s
    # BH by hand: sorted p 0.001 0.002 0.004 0.02 0.05 0.3 0.5 0.9; p_(i) * 8 / i = 0.008 0.008 0.0107 0.04 0.08 ...
    # so the first four (rows 1, 5, 0, 2) are discoveries: 3 of the 3 planted, 3 of the 4 discoveries
    assert result["n_discoveries_fdr05"] == 4
    assert result["recall_at_fdr05"] == pytest.approx(1.0)
    assert result["precision_at_fdr05"] == pytest.approx(0.75)
    assert score_ranking(labels, score, None)["recall_at_fdr05"] is None
    nan = score_ranking(labels, np.where(score == 0.5, np.nan, score), p)  # NaN ranks below every number
    assert nan["auroc"] == result["auroc"] and nan["auprc"] == result["auprc"]


def test_score_ranking_without_planted_or_only_planted_gives_none_and_a_note():
    none = score_ranking(np.zeros(5, bool), np.arange(5.0), np.full(5, 0.5))
    assert none["auroc"] is None and none["auprc"] is None and "no planted" in none["note"]
    assert none["recall_at_fdr05"] is None and none["precision_at_k"] == 0.0
    every = score_ranking(np.ones(3, bool), np.arange(3.0), None)
    assert every["auroc"] is None and "every candidate" in every["note"] and every["precision_at_k"] == 1.0
    empty = score_ranking(np.zeros(0, bool), np.zeros(0), None)
    assert empty["auroc"] is None and empty["n_pairs"] == 0 and "note" in empty
    json.dumps([none, every, empty])  # JSON-ready: no NaN, no numpy scalars


def test_gwas_ranks_planted_pairs_above_random_pairs(gwas, planted):
    """Fails if genotypes and IDPs were misaligned (every pair would then be null)."""
    labels = (gwas["disease"] == "planted").to_numpy()
    result = score_ranking(labels, gwas["neg_log10_p"].to_numpy(), gwas["p"].to_numpy())
    assert result["n_planted"] == planted.height
    assert result["auroc"] > 0.7
    assert result["recall_at_fdr05"] > 0.2


def test_truth_comparison_writes_score_pairs_and_pr_plot(gwas, planted, tmp_path):
    rankings = {"gwas": gwas.select("snp", "idp", "disease", pl.col("neg_log10_p").alias("score"), "p"),
                "shuffled": gwas.select("snp", "idp", "disease",
                                        score=np.random.default_rng(2).permutation(gwas.height).astype(float))}
    summary = truth_comparison(rankings, planted, tmp_path / "truth")
    assert json.loads((tmp_path / "truth" / "truth_score.json").read_text()) == summary
    assert summary["n_candidates"] == gwas.height and summary["n_planted_not_in_candidates"] == 0
    assert summary["methods"]["gwas"]["auroc"] > summary["methods"]["shuffled"]["auroc"]
    assert summary["methods"]["shuffled"]["recall_at_fdr05"] is None  # no p-values given
    pairs = pl.read_csv(tmp_path / "truth" / "truth_pairs.tsv", separator="\t", null_values="NA")
    assert pairs.columns == ["snp", "idp", "disease", "planted", "effect_sd", "gwas_score", "gwas_p",
                             "shuffled_score", "shuffled_p"]
    assert pairs.height == gwas.height and pairs["planted"].sum() == planted.height
    assert (pairs["effect_sd"].is_null() == ~pairs["planted"]).all()
    assert (tmp_path / "truth" / "truth_pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "truth").glob(".*"))  # no temp files left behind
    with pytest.raises(ValueError, match="other candidates"):
        truth_comparison({"a": rankings["gwas"], "b": rankings["shuffled"].head(5)}, planted, tmp_path / "x")
