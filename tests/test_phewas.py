"""PheWAS: numbers pinned to statsmodels, the mapping rules, and the planted disease -> IDP links recovered."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import statsmodels.api as sm

from comical.pipelines.statgen.phewas import (
    PhewasConfig, linear_regression_columns, logistic_regression_columns, map_idps_to_diseases,
)


@pytest.fixture(scope="module")
def phewas_table(mini_pairs):
    return pl.read_csv(mini_pairs / "phewas" / "phewas.tsv", separator="\t")


def test_logistic_columns_equal_statsmodels():
    rng = np.random.default_rng(0)
    n = 800
    c = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    x = rng.normal(size=(n, 5))
    y = (rng.random(n) < 1 / (1 + np.exp(-(c @ [-1.5, 0.3, 0, -0.2] + 0.5 * x[:, 2])))).astype(float)
    beta, se = logistic_regression_columns(y, x, c)
    for k in range(5):
        # statsmodels: Logit(y, [c, x_k]).fit()
        fit = sm.Logit(y, np.column_stack([c, x[:, k]])).fit(disp=0, tol=1e-12, maxiter=100)
        assert beta[k] == pytest.approx(fit.params[-1], rel=1e-6, abs=1e-9)
        assert se[k] == pytest.approx(fit.bse[-1], rel=1e-6)


def test_linear_columns_equal_statsmodels():
    rng = np.random.default_rng(1)
    n = 300
    c = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    x = rng.normal(size=(n, 4))
    y = c @ [1.0, 0.5, -0.2] + 0.3 * x[:, 1] + rng.normal(size=n)
    beta, se = linear_regression_columns(y, x, c)
    for k in range(4):
        fit = sm.OLS(y, np.column_stack([c, x[:, k]])).fit()  # statsmodels OLS
        assert beta[k] == pytest.approx(fit.params[-1], rel=1e-9)
        assert se[k] == pytest.approx(fit.bse[-1], rel=1e-9)


def test_cohort_phewas_equals_statsmodels_on_the_same_design(mini_pairs, phewas_table, mini_cohort):
    from comical.data_io.cohort import load_cohort
    from comical.pipelines.statgen.qc import QCResult

    cohort = load_cohort(mini_cohort)
    qc = QCResult.read(mini_pairs / "qc")
    subjects = pl.read_parquet(mini_pairs / "subjects.parquet")
    train = subjects.filter(pl.col("split") == "train")["eid"]  # the buckets come from training subjects only
    keep = cohort.eids.is_in(qc.pcs["eid"].implode()) & cohort.eids.is_in(train.implode())
    config = PhewasConfig()
    covariates = cohort.covariates.filter(keep).drop([f"PC{i}" for i in range(1, 41)]).join(
        qc.pcs, on="eid", maintain_order="left").select(config.covariates).to_numpy()
    for idp, disease in [("Volume_of_Left_Hippocampus", "AD"), ("Volume_of_grey_matter_in_Left_Insular_Cortex", "BD"),
                         ("Volume_of_Right_Thalamus", "UD")]:
        z = cohort.idps.filter(keep)[idp].to_numpy()
        z = (z - z.mean()) / z.std()
        y = cohort.diagnoses.filter(keep)[disease].to_numpy()
        fit = sm.Logit(y, sm.add_constant(np.column_stack([covariates, z]))).fit(disp=0, tol=1e-12, maxiter=100)
        row = phewas_table.filter((pl.col("idp") == idp) & (pl.col("disease") == disease))
        assert row["beta"][0] == pytest.approx(fit.params[-1], rel=1e-6)
        assert row["se"][0] == pytest.approx(fit.bse[-1], rel=1e-6)
        assert row["p"][0] == pytest.approx(fit.pvalues[-1], rel=1e-6)
        assert row["n"][0] == len(y) and row["n_cases"][0] == y.sum()


def test_planted_disease_idp_links_are_recovered(mini_cohort, phewas_table):
    planted = pl.read_parquet(mini_cohort / "truth" / "idp_disease_effects.parquet")
    planted = planted.filter(pl.col("disease").is_in(list(PhewasConfig().diseases)))
    truth = set(zip(planted["idp"], planted["disease"]))
    found = phewas_table.filter(pl.col("p_adjusted") < 0.05)
    hits = set(zip(found["idp"], found["disease"]))
    assert len(truth & hits) / len(truth) > 0.7  # recall
    assert len(truth & hits) / len(hits) > 0.9  # precision


def test_mapping_prefers_smallest_p_then_larger_effect_and_drops_nonsignificant():
    table = pl.DataFrame({
        "idp": ["a", "a", "b", "b", "c"], "disease": ["AD", "BD", "AD", "BD", "AD"],
        "beta": [0.1, -0.5, 0.2, 0.4, 0.1], "se": [1.0] * 5, "p": [1e-5, 1e-8, 1e-4, 1e-4, 0.5],
        "n": [10] * 5, "n_cases": [2] * 5, "p_adjusted": [1e-4, 1e-7, 1e-3, 1e-3, 0.5],
    })
    mapping = map_idps_to_diseases(table, PhewasConfig())
    assert dict(zip(mapping["idp"], mapping["disease"])) == {"a": "BD", "b": "BD"}  # b: tie on p, |0.4| wins
    everything = map_idps_to_diseases(table, PhewasConfig(map_nonsignificant=True))
    assert dict(zip(everything["idp"], everything["disease"]))["c"] == "AD"
