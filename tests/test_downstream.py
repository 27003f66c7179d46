"""Downstream heads (paper 000 Figs. 4-6, Table 3): the statistics against scikit-learn, statsmodels and numpy, the
outcome and risk-score designs, the head bank, and both commands end to end on a trained mini-cohort run."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats
from sklearn.metrics import roc_auc_score

from comical.cli import main
from comical.pipelines.downstream import stats as st
from comical.pipelines.downstream.heads import OUTCOMES, outcome_table, riskscore_design


def test_auc_bootstrap_and_nri_match_scikit_learn_on_fixed_scores():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    a = y + rng.normal(0, 1.2, 300)
    b = np.round(y * 0.5 + rng.normal(0, 1, 300), 1)  # ties
    assert st.auc(y, a) == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert st.auc(y, b) == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    result = st.auc_interval(y, {"a": a, "b": b}, resamples=200, seed=3)
    index = st.bootstrap_indices(y, resamples=200, seed=3)
    assert (y[index].sum(1) == y.sum()).all()  # stratified: every resample keeps the case count
    auc_a = np.array([roc_auc_score(y[i], a[i]) for i in index])
    auc_b = np.array([roc_auc_score(y[i], b[i]) for i in index])
    assert result["a"] == pytest.approx((roc_auc_score(y, a), *np.percentile(auc_a, [2.5, 97.5])), abs=1e-12)
    assert result["b"] == pytest.approx((roc_auc_score(y, b), *np.percentile(auc_b, [2.5, 97.5])), abs=1e-12)
    assert result["difference"] == pytest.approx(
        (roc_auc_score(y, a) - roc_auc_score(y, b), *np.percentile(auc_a - auc_b, [2.5, 97.5])), abs=1e-12)
    assert all(np.isnan(v) for v in st.auc_interval(np.zeros(5, bool), {"a": a[:5], "b": b[:5]})["a"])


def test_auc_intervals_cover_the_population_auc_about_95_percent_of_the_time():
    """Samples of 40 cases and 160 controls from two normals (population AUC Phi(d / sqrt(2)))."""
    rng = np.random.default_rng(5)
    d = 0.8
    truth = stats.norm.cdf(d / np.sqrt(2))
    covered, widths = [], []
    for _ in range(200):
        y = np.r_[np.ones(40, bool), np.zeros(160, bool)]
        score = np.where(y, d, 0.0) + rng.normal(size=200)
        _, lo, hi = st.auc_interval(y, {"s": score}, resamples=400, seed=int(rng.integers(1 << 30)))["s"]
        covered.append(lo <= truth <= hi)
        widths.append(hi - lo)
    assert 0.89 <= np.mean(covered) <= 0.99
    assert 0.1 < np.mean(widths) < 0.25  # a resampler that did not resample would give width 0


def test_r2_and_pearson_against_scikit_learn_and_scipy_and_pearson_is_uniform_on_null_data():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(1)
    y, p = rng.normal(size=50), rng.normal(size=50)
    assert st.r2(y, p) == pytest.approx(r2_score(y, p))
    assert st.r2(y, np.full(50, y.mean())) == pytest.approx(0.0)
    r2, pvalue = st.pearson(y, p)
    assert r2 == pytest.approx(np.corrcoef(y, p)[0, 1] ** 2) and pvalue == pytest.approx(stats.pearsonr(y, p).pvalue)
    # null: independent score and target at the mini cohort's test size; the p-values are uniform
    nulls = [st.pearson(rng.normal(size=73), rng.normal(size=73))[1] for _ in range(2000)]
    assert stats.kstest(nulls, "uniform").pvalue > 0.01
    assert 0.035 < np.mean(np.array(nulls) < 0.05) < 0.065


def test_ols_matches_a_plain_least_squares_solve_and_is_uniform_on_null_data():
    rng = np.random.default_rng(2)
    n = 120
    covariates = {"age": rng.normal(60, 8, n), "sex": rng.integers(0, 2, n).astype(float), "pc1": rng.normal(size=n)}
    exposure = rng.normal(size=n)
    response = 0.3 * exposure + 0.02 * covariates["age"] + rng.normal(size=n)
    fit = st.ols_on(response, exposure, covariates, "ePRS")
    x = np.column_stack([np.ones(n), exposure, *covariates.values()])
    beta, *_ = np.linalg.lstsq(x, response, rcond=None)
    residual = response - x @ beta
    sigma2 = residual @ residual / (n - x.shape[1])
    se = np.sqrt(np.diag(np.linalg.inv(x.T @ x)) * sigma2)
    p = 2 * stats.t.sf(np.abs(beta / se), n - x.shape[1])
    assert list(fit["terms"]) == ["const", "ePRS", "age", "sex", "pc1"]
    np.testing.assert_allclose(np.array(list(fit["terms"].values())), np.column_stack([beta, se, p]), rtol=1e-8)
    assert fit["r2"] == pytest.approx(1 - residual @ residual / np.sum((response - response.mean()) ** 2))
    x0 = np.delete(x, 1, axis=1)
    r0 = response - x0 @ np.linalg.lstsq(x0, response, rcond=None)[0]
    assert fit["r2_covariates"] == pytest.approx(1 - r0 @ r0 / np.sum((response - response.mean()) ** 2))
    # the setting riskscore uses: 45 covariates on few test subjects (73, as the mini cohort), exposure independent
    many = {f"c{i}": rng.normal(size=73) for i in range(45)}
    nulls = [st.ols_on(rng.normal(size=73), rng.normal(size=73), many, "e")["terms"]["e"][2] for _ in range(1000)]
    assert stats.kstest(nulls, "uniform").pvalue > 0.01


def test_meta_outcome_is_the_and_of_the_ten_indicators():
    diagnoses, _ = _cohort_labels(400, 0.7, seed=3)
    table = outcome_table(diagnoses)
    assert table.columns == OUTCOMES
    ten = [o for o in OUTCOMES if o != "meta"]
    assert "ASD" not in ten and len(ten) == 10
    expected = diagnoses.select(ten).to_numpy().all(axis=1)
    np.testing.assert_array_equal(table["meta"].to_numpy() == 1, expected)
    assert 0 < expected.sum() < 400  # both kinds of rows occur, so the check means something


def test_riskscore_design_respects_the_paper_caps(monkeypatch):
    from comical.pipelines.downstream import heads

    monkeypatch.setattr(heads, "PAPER_TRAIN", 20)
    monkeypatch.setattr(heads, "PAPER_VAL", 8)
    monkeypatch.setattr(heads, "PAPER_TEST", 30)
    diagnoses, encoder = _cohort_labels(2000, 0.05, seed=6)
    split, masks = riskscore_design(diagnoses, encoder, seed=0)
    assert (split == "test").sum() == 30
    for d, mask in masks.items():
        assert ((mask == 1) & (split == "train")).sum() == 20 and ((mask == 1) & (split == "val")).sum() == 8
        cases = (mask == 1) & (split == "val") & (diagnoses[d].to_numpy() == 1)
        assert cases.sum() == 4  # validation: cases and as many healthy controls too


def _cohort_labels(n: int, prevalence: float, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """Random diagnoses of the 11 diseases and a 70/20/10 encoder split."""
    from comical.data_io.ukb_fields import DISEASES

    rng = np.random.default_rng(seed)
    diagnoses = pl.DataFrame({d: (rng.random(n) < prevalence).astype(np.int8) for d in DISEASES})
    return diagnoses, rng.choice(["train", "val", "test"], n, p=[0.7, 0.2, 0.1])


def test_riskscore_design_tests_only_unseen_healthy_subjects_and_balances_cases():
    diagnoses, encoder = _cohort_labels(3000, 0.04, seed=4)
    split, masks = riskscore_design(diagnoses, encoder, seed=0)
    test = split == "test"
    any_case = diagnoses.to_numpy().any(axis=1)
    assert test.any() and not any_case[test].any()  # no test subject is a case of anything
    assert (encoder[test] == "test").all()  # and none was seen by the encoder or by any head's training
    assert ((split == "train") <= (encoder == "train")).all() and ((split == "val") <= (encoder == "val")).all()
    for d, mask in masks.items():
        chosen = (mask == 1) & (split == "train")
        cases = diagnoses[d].to_numpy() == 1
        assert chosen.any() and (chosen & cases).sum() == (chosen & ~cases).sum()  # cases and as many controls
        assert not any_case[chosen & ~cases].any()  # controls are healthy
        assert ((mask == 1) & test).sum() == test.sum()  # every head is scored on the same test subjects


def test_head_bank_is_g_times_k_separate_networks():
    """Two feature sets (columns 0-3 and 4-5) x 3 targets: each head is the plain MLP made of its own slices and
    reads only its own set's columns; a head's loss moves only its own parameters."""
    from comical.distributed.tasks.heads import HeadBank, HeadsConfig, head_losses

    torch.manual_seed(0)
    bank = HeadBank([4, 2], 3, HeadsConfig(hidden=4, dropout=0.0))
    x = torch.randn(10, 6)
    out = bank({"x": x})
    assert out.shape == (10, 6)
    for g, columns in enumerate((slice(0, 4), slice(4, 6))):
        for k in range(3):
            head = g * 3 + k
            w1, b1 = bank.hidden.weight[head * 4:(head + 1) * 4], bank.hidden.bias[head * 4:(head + 1) * 4]
            bound = 1 / np.sqrt(columns.stop - columns.start)  # initialised as nn.Linear on the set's fan-in
            assert w1[:, columns].abs().max() <= bound and w1[:, columns].abs().max() > bound / 2
            plain = torch.relu(x[:, columns] @ w1[:, columns].T + b1) @ bank.out_weight[head] + bank.out_bias[head]
            torch.testing.assert_close(out[:, head], plain)
    y = torch.randint(0, 2, (10, 6)).float()
    mask = torch.ones(10, 6, dtype=torch.int8)
    mask[:, 2] = 0
    losses = head_losses(out, y, mask, "classify", torch.tensor([1.0, 3.0, 1.0] * 2))
    assert losses[2] == 0  # a head with no rows of its design in the batch adds nothing
    direct = torch.nn.functional.binary_cross_entropy_with_logits(out[:, 1], y[:, 1], pos_weight=torch.tensor(3.0))
    torch.testing.assert_close(losses[1], direct)
    losses[4].backward()  # the second set's second head
    grad = bank.hidden.weight.grad
    assert bank.out_weight.grad[[0, 1, 2, 3, 5]].abs().sum() == 0 and grad[:16].abs().sum() == 0
    assert grad[16:20, :4].abs().sum() == 0 and grad[16:20, 4:].abs().sum() > 0 and grad[20:].abs().sum() == 0


def test_each_head_keeps_its_own_best_validation_weights():
    from comical.distributed.tasks.heads import HeadBank, HeadsConfig, HeadsTask

    torch.manual_seed(1)
    bank = HeadBank([5], 3, HeadsConfig(hidden=2, dropout=0.0))
    task = HeadsTask().bind({"kind": "regress", "targets": ["a", "b", "c"], "features": ["x"], "n_features": [5],
                             "pos_weight": None})
    snapshots = []
    # epochs' validation losses per head (sum / rows as the engine reports them); head c never has rows
    for losses in ([1.0, 2.0, np.nan], [0.5, 3.0, np.nan], [0.7, 1.5, np.nan]):
        with torch.no_grad():
            for p in bank.parameters():
                p.add_(torch.randn_like(p))
        snapshots.append({k: v.detach().clone() for k, v in bank.state_dict().items() if not k.startswith("best")})
        metrics = {**{f"head_loss_{i}": 0.0 if np.isnan(v) else v * 0.1 for i, v in enumerate(losses)},
                   **{f"head_rows_{i}": 0.0 if np.isnan(v) else 0.1 for i, v in enumerate(losses)}}
        added = task.after_validation(bank, metrics)
    assert added["best_heads_loss"] == pytest.approx((0.5 + 1.5) / 2)  # heads with rows: best so far
    last = {k: v.detach().clone() for k, v in bank.state_dict().items() if not k.startswith("best")}
    bank.use_best()
    state = bank.state_dict()
    best_epoch = {0: 1, 1: 2}  # head a improved last at epoch 1, head b at epoch 2
    for head, epoch in best_epoch.items():
        torch.testing.assert_close(state["hidden.weight"][head * 2:(head + 1) * 2],
                                   snapshots[epoch]["hidden.weight"][head * 2:(head + 1) * 2])
        torch.testing.assert_close(state["out_bias"][head], snapshots[epoch]["out_bias"][head])
    torch.testing.assert_close(state["out_weight"][2], last["out_weight"][2])  # never validated: as trained


def test_predict_and_riskscore_end_to_end(trained_run, mini_cohort, tmp_path, capsys, in_process):
    """Both commands on the mini cohort from a trained run: every output, heads trained through the engine, and
    subjects used as stated (test subjects are the encoder's test split)."""
    common = ["--run", str(trained_run), "--cohort", str(mini_cohort), "--epochs", "2"]
    out = tmp_path / "predict"
    assert main(["predict", *common, "--out", str(out)]) == 0
    assert "predict: " in capsys.readouterr().out
    table = pl.read_csv(out / "auc.csv")
    assert table["outcome"].to_list() == OUTCOMES
    fitted = table.filter(pl.col("note").is_null() | (pl.col("note") == ""))
    assert fitted.height >= 8 and fitted["auc_embedding"].is_between(0, 1).all()
    # trained heads, not constants: well above chance (0.5) on the mini cohort, where IDPs carry disease status
    assert fitted["auc_embedding"].median() > 0.6 and fitted["auc_baseline"].median() > 0.6
    assert (fitted["auc_embedding_lo"] <= fitted["auc_embedding"]).all()
    assert (fitted["nri"] - (fitted["auc_embedding"] - fitted["auc_baseline"])).abs().max() < 1e-12
    meta = table.row(OUTCOMES.index("meta"), named=True)
    if meta["train_cases"] < 10:
        assert "too few cases" in meta["note"] and np.isnan(meta["auc_embedding"])
    for name in ("auc.md", "roc.png", "nri.png", "predictions.parquet", "subjects.parquet", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    roles = pl.read_parquet(out / "subjects.parquet")
    predictions = pl.read_parquet(out / "predictions.parquet")
    tested = set(roles.filter(pl.col("heads") == "test")["eid"])
    assert set(predictions["eid"]) == tested and set(roles.filter(pl.col("encoder_split") == "test")["eid"]) == tested
    assert json.loads((out / "run" / "run.json").read_text())["state"] == "done"  # one heads job: both sets
    assert json.loads((out / "run" / "test_metrics.json").read_text())["heads"] == 2 * fitted.height

    out = tmp_path / "riskscore"
    assert main(["riskscore", *common, "--out", str(out)]) == 0
    assert "riskscore: R^2 of the ePRS" in capsys.readouterr().out
    r2 = pl.read_csv(out / "r2.csv")
    assert r2["disease"].to_list() == ["AD", "BD", "MS", "PD", "SZ"] and r2["r2_embedding"].is_not_null().all()
    cross = pl.read_csv(out / "cross_disorder.csv")
    assert cross.height == 2 * 25 and cross["p"].is_between(0, 1).all()
    ols = pl.read_csv(out / "ols.csv")
    assert set(ols["term"]) >= {"const", "ePRS", "age", "sex", "smoking", "bmi", "height", "PC40"}
    roles = pl.read_parquet(out / "subjects.parquet").join(
        pl.read_csv(mini_cohort / "diagnoses.csv").with_columns(pl.col("eid").cast(pl.String)), on="eid")
    tested = roles.filter(pl.col("heads") == "test")
    assert tested.height and (tested["encoder_split"] == "test").all()
    assert tested.select(pl.sum_horizontal(pl.exclude("eid", "encoder_split", "heads"))).to_series().max() == 0


def test_a_store_the_run_did_not_train_on_is_refused(trained_run, mini_pairs, mini_cohort, tmp_path, capsys):
    assert main(["riskscore", "--run", str(trained_run), "--cohort", str(mini_cohort), "--pairs", str(mini_pairs),
                 "--out", str(tmp_path / "x")]) == 2
    assert "not the store run" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_predict_refuses_unknown_outcomes(trained_run, mini_cohort, tmp_path, capsys):
    assert main(["predict", "--run", str(trained_run), "--cohort", str(mini_cohort), "--outcomes", "AD,XYZ",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--outcomes AD,XYZ: ['XYZ'] unknown" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
