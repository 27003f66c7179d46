"""COMICAL's ceiling and floor models (pipelines/comical/ceiling.py), checked against a plain scipy computation of
the planted critic and by what they must and must not reach on the mini cohort's test split."""

import json

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from comical.data_io.pair_store import expand_pairs, read_manifest
from comical.data_io.simulate import LOG_VOLUME_SCALE
from comical.distributed.config import TrainConfig
from comical.distributed.tasks.comical import ComicalTask, load_split
from comical.distributed.train import evaluate
from comical.pipelines.comical.ceiling import BUCKET_GAP, planted_truth_model


@pytest.fixture(scope="module")
def test_split(small_pairs):
    return load_split(small_pairs, "test")


def test_planted_truth_logits_are_the_gaussian_likelihood_ratio_of_each_planted_pair(small_pairs, mini_cohort,
                                                                                      test_split):
    """logit(SNP input a, IDP input b) = ln N(z_b; b g~_a, 1 - b^2) - ln N(z_b; 0, 1) (+ the bucket term), with z
    and g~ recomputed here from the cohort's files and the truth tables, not from the store's encoding."""
    manifest = read_manifest(small_pairs)
    model = planted_truth_model(small_pairs, mini_cohort)
    subjects = pl.read_parquet(small_pairs / "subjects.parquet")
    idps = pl.read_csv(mini_cohort / "idps.csv", schema_overrides={"eid": pl.String})
    train = idps.join(subjects.filter(pl.col("split") == "train").select("eid"), on="eid")
    planted = pl.read_parquet(mini_cohort / "truth" / "snp_idp_effects.parquet")
    freq = dict(pl.read_parquet(mini_cohort / "truth" / "variants.parquet").select("variant_id", "ancestral_freq")
                .iter_rows())
    effects = {(s, i): e for s, i, e in planted.select("variant_id", "idp", "effect_sd").iter_rows()}
    snps, names = manifest["snps"], manifest["idps"]
    planted_rows = np.flatnonzero([(snps[s], names[i]) in effects for s, i in
                                   zip(test_split["snp"].tolist(), test_split["idp"].tolist())])
    assert planted_rows.size > 50
    rows = np.concatenate([planted_rows[:40], np.arange(40)])  # planted pairs and others
    batch = expand_pairs({k: v[rows] for k, v in test_split.items()}, manifest["n_bins"])
    snp, idp, scale = model(batch)
    logits = (scale * snp @ idp.T).double().numpy()
    eid_of = dict(subjects.select("subject", "eid").iter_rows())
    expected = np.zeros_like(logits)
    z, sd = [], []
    for b in range(len(rows)):
        i = names[int(batch["idp"][b])]
        log_train = np.log(train[i].to_numpy())
        value = idps.filter(pl.col("eid") == eid_of[int(batch["subject"][b])])[i][0]
        z.append((np.log(value) - log_train.mean()) / log_train.std())
        sd.append(log_train.std())
    for a in range(len(rows)):
        s, token = snps[int(batch["snp"][a])], int(batch["genotype_token"][a])
        g = [k for k, t in enumerate(manifest["snp_token_table"][int(batch["snp"][a])]) if t == token]
        for b in range(len(rows)):
            i = names[int(batch["idp"][b])]
            same = manifest["diseases"][int(batch["disease"][a])] == manifest["diseases"][int(batch["disease"][b])]
            expected[a, b] = BUCKET_GAP * same
            if (s, i) in effects and g:
                f = freq[s]
                beta = LOG_VOLUME_SCALE * effects[(s, i)] / sd[b]
                mu = beta * (g[0] - 2 * f) / np.sqrt(2 * f * (1 - f))
                expected[a, b] += stats.norm.logpdf(z[b], mu, np.sqrt(1 - beta ** 2)) - stats.norm.logpdf(z[b])
    np.testing.assert_allclose(logits, expected, atol=2e-3)  # float32 embeddings; PLE keeps values to ~1e-7


def test_the_ceiling_lifts_above_its_null_the_floor_does_not_and_reversed_effects_fall_below(small_pairs,
                                                                                             mini_cohort, test_split):
    manifest = read_manifest(small_pairs)
    task = ComicalTask().bind({k: manifest[k] for k in ("n_bins", "snps", "idps", "vocabulary", "snp_token_table",
                                                       "ple_bin_edges", "diseases", "buckets")})
    config = TrainConfig.from_dict({"task": "comical", "data": str(small_pairs)})
    ceiling = planted_truth_model(small_pairs, mini_cohort)
    reversed_ = planted_truth_model(small_pairs, mini_cohort)
    n_idps = len(manifest["idps"])
    with torch.no_grad():
        reversed_.snp_table[:, :, :n_idps] *= -1  # every planted effect's sign flipped
    score = {name: evaluate(model, task, test_split, config, seed=0) for name, model in
             (("ceiling", ceiling), ("floor", planted_truth_model(small_pairs, mini_cohort, effects=False)),
              ("reversed", reversed_))}
    key, null = "within_bucket_accuracy", "within_bucket_accuracy_null"
    assert score["ceiling"][key] > score["ceiling"][null] + 0.001
    assert abs(score["floor"][key] - score["floor"][null]) < 0.001  # identities alone: no lift
    assert score["reversed"][key] < score["reversed"][null] - 0.001
    assert score["ceiling"]["loss"] < score["floor"]["loss"] < score["reversed"]["loss"]
    assert score["floor"]["bucket_accuracy"] == 1.0  # the bucket term settles membership


def test_positive_control_bench_resumes_its_cells_and_summarises_over_seeds(tmp_path, monkeypatch, capsys):
    """The bench's bookkeeping with a stand-in cell: cells already done are not run again, the summary is the
    mean over seeds with a bootstrap interval around it, and cells of other training settings are refused."""
    from comical.cli import main
    from comical.pipelines.comical import positive_control

    ran = []

    def cell(work, signal, seed, settings):
        ran.append((signal, seed))
        share = 0.1 * signal + 0.05 * seed
        return {"signal": signal, "seed": seed, "n_candidates": 100, "n_planted": 10 + seed, "n_test_pairs": 1000,
                "within_bucket_share": share, "loss_share": share, "auprc_share": share, "auprc_gwas_share": 1.0,
                "auprc": 0.5, "auprc_chance": 0.1, "auprc_ceiling": 0.9, "auprc_gwas_test_subjects": 0.9,
                "recall_fdr05": 0.5, "recall_fdr05_ceiling": 0.6, "recall_fdr05_gwas_test_subjects": 0.6,
                "null_store_calls_fdr05": 0, "null_store_pairs": 100}

    monkeypatch.setattr(positive_control, "_cell", cell)
    monkeypatch.setattr("comical.distributed.ray_session.init_ray", lambda **_: False)
    out = tmp_path / "control"
    args = ["bench", "positive-control", "--signal", "1,3", "--seeds", "2", "--out", str(out)]
    assert main(args[:4] + ["--seeds", "1", "--out", str(out)]) == 0
    assert ran == [(1.0, 0), (3.0, 0)]
    assert main(args) == 0
    assert ran[2:] == [(1.0, 1), (3.0, 1)]  # seed 0's cells were kept
    table = pl.read_csv(out / "results.csv")
    assert table.height == 4 and (out / "results.png").stat().st_size > 0
    summary = positive_control._summary(table, 2000)
    row = summary.filter(pl.col("signal") == 3.0).row(0, named=True)
    assert row["within_bucket_share"] == pytest.approx(0.325)  # (0.3 + 0.35) / 2
    assert row["within_bucket_share_low"] <= 0.325 <= row["within_bucket_share_high"]
    assert row["within_bucket_share_high"] - row["within_bucket_share_low"] > 0
    assert "0.325" in (out / "results.md").read_text() and "0.325" in capsys.readouterr().out
    assert main(args + ["--epochs", "2"]) == 2  # other training settings: refused, the cells untouched
    assert "cells were made with" in capsys.readouterr().err and len(list((out / "cells").iterdir())) == 4
