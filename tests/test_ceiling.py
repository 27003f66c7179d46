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
    """logit(SNP input a, IDP input b) = ln N(z_b; mu, v) - ln N(z_b; 0, 1) (+ the bucket term), mu = b (g - mean g),
    v = 1 - b^2 var g, with z, g and the per-allele effect b recomputed here from the cohort's files (bed-reader,
    polars) and the truth tables, not from the store's encoding; a missing call carries no information."""
    from bed_reader import open_bed

    manifest = read_manifest(small_pairs)
    model = planted_truth_model(small_pairs, mini_cohort)
    subjects = pl.read_parquet(small_pairs / "subjects.parquet")
    idps = pl.read_csv(mini_cohort / "idps.csv", schema_overrides={"eid": pl.String})
    train_eids = subjects.filter(pl.col("split") == "train")["eid"]
    train = idps.filter(pl.col("eid").is_in(train_eids.implode()))
    with open_bed(mini_cohort / "genotypes.bed") as bed:
        in_train = np.isin(bed.iid, train_eids.to_numpy())
        counts = bed.read(index=np.s_[in_train, :], dtype="float32")
        bim = {v: i for i, v in enumerate(bed.sid)}
    planted = pl.read_parquet(mini_cohort / "truth" / "snp_idp_effects.parquet")
    freq = dict(pl.read_parquet(mini_cohort / "truth" / "variants.parquet").select("variant_id", "ancestral_freq")
                .iter_rows())
    effects = {(s, i): e for s, i, e in planted.select("variant_id", "idp", "effect_sd").iter_rows()}
    snps, names = manifest["snps"], manifest["idps"]
    planted_rows = np.flatnonzero([(snps[s], names[i]) in effects for s, i in
                                   zip(test_split["snp"].tolist(), test_split["idp"].tolist())])
    missing = np.flatnonzero(test_split["genotype_token"].numpy() == 0)
    assert planted_rows.size > 50 and missing.size > 0
    rows = np.concatenate([planted_rows[:40], np.arange(40), missing[:3]])  # planted pairs, others, missing calls
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
        column = counts[:, bim[s]]
        column = column[~np.isnan(column)]
        for b in range(len(rows)):
            i = names[int(batch["idp"][b])]
            same = manifest["diseases"][int(batch["disease"][a])] == manifest["diseases"][int(batch["disease"][b])]
            expected[a, b] = BUCKET_GAP * same
            if (s, i) in effects and g:
                f = freq[s]
                beta = LOG_VOLUME_SCALE * effects[(s, i)] / np.sqrt(2 * f * (1 - f)) / sd[b]  # per allele
                mu, v = beta * (g[0] - column.mean()), 1 - beta ** 2 * column.var()
                expected[a, b] += stats.norm.logpdf(z[b], mu, np.sqrt(v)) - stats.norm.logpdf(z[b])
    np.testing.assert_allclose(logits, expected, atol=2e-3)  # float32 embeddings; PLE keeps values to ~1e-7
    assert np.all(np.isin(logits[-3:], [0.0, BUCKET_GAP]))  # missing calls: the bucket term alone


def test_the_planted_effects_are_what_a_regression_finds_in_the_training_subjects(small_pairs, mini_cohort):
    """The model's per-allele effects (truth converted to SDs of the log IDP) against an OLS slope of the
    standardised log IDP on the allele count over the training subjects, per planted pair: the conversion's scale
    and sign (twice or half the effect, or the other allele, would fail)."""
    from bed_reader import open_bed

    manifest = read_manifest(small_pairs)
    model = planted_truth_model(small_pairs, mini_cohort)
    train_eids = pl.read_parquet(small_pairs / "subjects.parquet").filter(pl.col("split") == "train")["eid"]
    idps = pl.read_csv(mini_cohort / "idps.csv", schema_overrides={"eid": pl.String})
    n_idps = len(manifest["idps"])
    with open_bed(mini_cohort / "genotypes.bed") as bed:
        order = {e: k for k, e in enumerate(bed.iid)}
        counts = bed.read(dtype="float32")
        bim = {v: i for i, v in enumerate(bed.sid)}
    train = idps.filter(pl.col("eid").is_in(train_eids.implode()))
    rows = np.array([order[e] for e in train["eid"]])
    ratios = []
    for s, snp in enumerate(manifest["snps"]):
        for j in np.flatnonzero(model.snp_table[s, 0, :n_idps].numpy()):  # planted pairs: mu / v is non-zero
            g = counts[rows, bim[snp]]
            y = np.log(train[manifest["idps"][j]].to_numpy())
            keep = ~np.isnan(g)
            slope = stats.linregress(g[keep], (y[keep] - y.mean()) / y.std()).slope
            ratios.append(slope / model_effect(model, s, j, n_idps))
    assert len(ratios) >= 5
    assert 0.6 < np.median(ratios) < 1.6  # twice or half the planted effect would not land here


def model_effect(model, s: int, j: int, n_idps: int) -> float:
    """The per-allele effect the model holds for (snp s, idp j): mu / v differs by b / v between genotypes 1 and 0,
    and v = 1 - b^2 var g is recovered from the z^2 block, (1 - 1 / v) / 2."""
    table = model.snp_table.double().numpy()
    v = 1 / (1 - 2 * table[s, 0, 2 * n_idps + j])
    return (table[s, 1, j] - table[s, 0, j]) * v


def test_the_ceiling_lifts_above_its_null_the_floor_does_not_and_reversed_effects_fall_below(small_pairs,
                                                                                             mini_cohort, test_split):
    from comical.pipelines.comical.ceiling import ceiling_metrics

    manifest = read_manifest(small_pairs)
    task = ComicalTask().bind({k: manifest[k] for k in ("n_bins", "snps", "idps", "vocabulary", "snp_token_table",
                                                       "ple_bin_edges", "diseases", "buckets")})
    config = TrainConfig.from_dict({"task": "comical", "data": str(small_pairs)})
    ceiling = planted_truth_model(small_pairs, mini_cohort)
    reversed_ = planted_truth_model(small_pairs, mini_cohort)
    n_idps = len(manifest["idps"])
    with torch.no_grad():
        reversed_.snp_table[:, :, :n_idps] *= -1  # every planted effect's sign flipped
    score = {name: evaluate(model, task, test_split, config, seed=0, row_outputs=True) for name, model in
             (("ceiling", ceiling), ("floor", planted_truth_model(small_pairs, mini_cohort, effects=False)),
              ("reversed", reversed_))}
    key, null = "within_bucket_accuracy", "within_bucket_accuracy_null"
    lift = {name: (m[key] - m[null], rows["within_bucket_lift"].numpy()) for name, (m, rows) in score.items()}
    for name, (value, per_row) in lift.items():
        assert per_row.mean() == pytest.approx(value, abs=1e-6)  # the per-row lifts average to the metric
    assert lift["ceiling"][0] > 0 and lift["reversed"][0] < 0 and lift["floor"][0] == pytest.approx(0, abs=1e-6)
    paired = lift["ceiling"][1] - lift["reversed"][1]  # the same rows and batches: most noise cancels
    assert paired.mean() > 3 * paired.std() / np.sqrt(len(paired))
    loss = {name: m["loss"] for name, (m, _) in score.items()}
    assert loss["ceiling"] < loss["floor"] < loss["reversed"]
    from comical.pipelines.comical.ceiling import identity_floor_loss

    assert identity_floor_loss(test_split, config) == pytest.approx(loss["floor"], rel=1e-6)  # associate's shortcut
    assert score["floor"][0]["bucket_accuracy"] == 1.0  # the bucket term settles membership


def test_positive_control_bench_resumes_its_cells_and_summarises_over_seeds(tmp_path, monkeypatch, capsys):
    """The bench's bookkeeping with a stand-in cell: cells already done are not run again, the summary is the
    mean over seeds with a bootstrap interval around it, and cells of other training settings are refused."""
    import dataclasses

    from comical.cli import main
    from comical.pipelines import positive_control
    from comical.pipelines.comical import positive_control as comical_control

    ran = []

    def cell(work, signal, seed, settings, epochs):
        ran.append((signal, seed))
        share = 0.1 * signal + 0.05 * seed
        return {"n_candidates": 100, "n_planted": 10 + seed, "n_test_pairs": 1000,
                "within_bucket_share": share, "loss_share": share, "auprc_share": share,
                "within_bucket_lift": 0.001, "within_bucket_lift_ceiling": 0.002, "loss_floor": 6.2,
                "loss_ceiling": 6.1, "auprc": 0.5, "auprc_chance": 0.1, "auprc_gwas_test_subjects": 0.9,
                "recall_fdr05": 0.5, "recall_fdr05_ceiling": 0.6, "recall_fdr05_gwas_test_subjects": 0.6,
                "null_store_calls_fdr05": 0, "null_store_pairs": 100}

    monkeypatch.setattr(comical_control, "CONTROL", dataclasses.replace(comical_control.CONTROL, cell=cell))
    monkeypatch.setattr("comical.distributed.ray_session.init_ray", lambda **_: False)
    out = tmp_path / "control"
    args = ["bench", "positive-control", "--signal", "1,3", "--seeds", "2", "--out", str(out)]
    assert main(args[:4] + ["--seeds", "1", "--out", str(out)]) == 0
    assert ran == [(1.0, 0), (3.0, 0)]
    assert main(args) == 0
    assert ran[2:] == [(1.0, 1), (3.0, 1)]  # seed 0's cells were kept
    table = pl.read_csv(out / "results.csv")
    assert table.height == 4 and (out / "results.png").stat().st_size > 0
    summary = positive_control.summarise(table, comical_control.SHARES)
    row = summary.filter(pl.col("signal") == 3.0).row(0, named=True)
    assert row["within_bucket_share"] == pytest.approx(0.325)  # (0.3 + 0.35) / 2
    half = stats.t.ppf(0.975, 1) * np.std([0.3, 0.35], ddof=1) / np.sqrt(2)  # a t interval over the 2 seeds
    assert (row["within_bucket_share_low"], row["within_bucket_share_high"]) == pytest.approx((0.325 - half,
                                                                                              0.325 + half))
    assert row["within_bucket_share_n"] == 2
    assert "0.33 (" in (out / "results.md").read_text() and "[2/2]" in capsys.readouterr().out
    assert main(args + ["--epochs", "2"]) == 2  # other training settings: refused, the cells untouched
    assert "cells were made with" in capsys.readouterr().err and len(list((out / "cells").iterdir())) == 4


def test_positive_control_methods_share_the_bench_and_refuse_what_does_not_fit(tmp_path, capsys):
    """Every --method resolves to its paper's control; the rotation benchmark's signal is an h_g, so a K above 1 is
    refused in one line before anything runs; an --out holding another method's cells is refused."""
    from comical.cli import main
    from comical.pipelines.positive_control import control
    from comical.pipelines.registry import CONTROLS

    assert {control(m).name for m in CONTROLS} == {"COMICAL", "GEMCONT (brain volumes)",
                                                   "GEMCONT (rotation benchmark)", "CGNI", "T1/T2 momentum"}
    out = tmp_path / "rotation"
    assert main(["bench", "positive-control", "--method", "rotation", "--signal", "0.5,3", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "h_g" in err[0] and "(0, 1]" in err[0] and not out.exists()
    out.mkdir()
    (out / "settings.json").write_text('{"method": "cgni", "epochs": 8, "workers": 1, "voxel_mm": 8.0}\n')
    assert main(["bench", "positive-control", "--method", "momentum", "--out", str(out)]) == 2
    assert "cells were made with" in capsys.readouterr().err
