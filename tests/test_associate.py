"""Association tests: the permutation test's exact moments, its uniformity on null data and on a trained null
store, the paper's test beside it; the null (`--permute-idps`) store; a strong planted store that a trained COMICAL
must find (its positive control); buckets from training subjects."""

from __future__ import annotations

import itertools
import json

import numpy as np
import polars as pl
import pytest
from scipy import stats

from comical.cli import main
from comical.pipelines.comical.associations import pair_associations, permutation_p, permutation_z


def test_permutation_moments_equal_every_permutation_enumerated():
    rng = np.random.default_rng(0)
    log_p = np.log(rng.dirichlet(np.ones(3), size=7))
    dosage = np.array([0, 1, 1, 2, 2, 2, 0])
    observed, mean, sd = permutation_z(log_p, dosage)
    every = np.array([log_p[np.arange(7), dosage[list(order)]].sum() for order in itertools.permutations(range(7))])
    assert observed == pytest.approx(log_p[np.arange(7), dosage].sum())
    assert mean == pytest.approx(every.mean(), rel=1e-12) and sd == pytest.approx(every.std(), rel=1e-10)


def test_permutation_test_is_uniform_when_genotype_and_prediction_are_independent():
    """2,000 null pairs: model predictions that depend on an IDP value unrelated to the genotype."""
    rng = np.random.default_rng(1)
    p = []
    for _ in range(2000):
        n = 150
        value = rng.normal(size=n)
        logits = np.outer(value, [-1.0, 0.0, 1.0]) + rng.normal(0, 0.3, (n, 3))
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        dosage = rng.binomial(2, rng.uniform(0.1, 0.5), n)
        t, e, s = permutation_z(log_p, dosage)
        p.append(stats.norm.sf((t - e) / s))
    p = np.array(p)
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert 0.035 < (p < 0.05).mean() < 0.065
    # ... and it has power when the prediction follows the genotype
    value = rng.normal(size=150)
    dosage = rng.binomial(2, 0.3, 150)
    logits = np.outer(value + 0.5 * dosage, [-1.0, 0.0, 1.0])
    t, e, s = permutation_z(logits - np.log(np.exp(logits).sum(1, keepdims=True)), dosage)
    assert stats.norm.sf((t - e) / s) < 1e-4


def test_monte_carlo_tail_holds_its_level_for_rare_genotypes_and_heavy_tailed_values():
    """Where the normal tail is too light (a rare genotype, t(3) values), the Monte Carlo p keeps its level."""
    rng = np.random.default_rng(2)
    normal, final = [], []
    for _ in range(4000):
        n = 150
        value = rng.standard_t(3, size=n)
        logits = np.outer(value, [-1.0, 0.0, 1.0])
        log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        dosage = rng.binomial(2, 0.05, n)
        if dosage.max() == dosage.min():
            continue
        t, e, s = permutation_z(log_p, dosage)
        p = stats.norm.sf((t - e) / s)
        normal.append(p)
        final.append(permutation_p(log_p, dosage, t, 2000, rng) if p < 0.05 else p)
    final = np.array(final)
    print(f"rare genotype, t(3): normal {np.mean(np.array(normal) < 0.01):.4f}, monte carlo {(final < 0.01).mean():.4f} at 0.01")
    assert (final < 0.01).mean() < 0.0115 and (final < 0.05).mean() < 0.055  # the normal tail gives 0.0118 here
    # sanity: an observed statistic above every permutation gets the smallest p the draws allow
    log_p = np.log(np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]] * 20))
    dosage = np.tile([0, 1, 2], 20)
    assert permutation_p(log_p, dosage, log_p[np.arange(60), dosage].sum(), 999, rng) == pytest.approx(1e-3)


def test_degenerate_pairs_get_na_and_a_note():
    rows = pl.DataFrame({"snp": [0] * 4 + [1] * 4 + [2] * 4, "idp": [0] * 12, "disease": [0] * 12,
                         "dosage": [1, 1, 1, 1, 0, 1, 2, 1, -1, -1, -1, -1], "top1_correct": [0.0] * 12,
                         **{f"log_p{g}": [-1.1] * 12 for g in range(3)}})
    info = {"snps": ["rsA", "rsB", "rsC"], "idps": ["I"], "diseases": ["D"]}
    table = pair_associations(rows, info).sort("snp")
    assert table["p"].to_list() == [None, 1.0, None]  # monomorphic; prediction ignores the IDP; no calls
    assert table["note"][0].startswith("monomorphic") and table["note"][2].startswith("fewer than two")


@pytest.fixture(scope="module")
def null_store(small_pairs, mini_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("null") / "store"
    assert main(["pairs", "--cohort", str(json.loads((mini_pairs / "run.json").read_text())["cohort"]),
                 "--top-n-perc", "1", "--out", str(out), "--qc", str(mini_pairs / "qc"),
                 "--phewas", str(mini_pairs / "phewas"), "--permute-idps", "3"]) == 0
    return out


def test_null_store_keeps_buckets_tokens_and_edges_and_permutes_idp_values(small_pairs, null_store):
    real, null = (json.loads((s / "manifest.json").read_text()) for s in (small_pairs, null_store))
    for key in ("buckets", "snps", "vocabulary", "ple_bin_edges", "splits"):
        assert null[key] == real[key], key
    assert real["null_store"] is None and "permuted" in null["null_store"]
    for split in ("train", "test"):
        a, b = (pl.read_parquet(s / split).sort("subject", "snp", "idp", "disease") for s in (small_pairs, null_store))
        assert a.select("subject", "snp", "idp", "genotype_token").equals(b.select("subject", "snp", "idp", "genotype_token"))
        # each IDP's values are the same multiset within the split, but no longer the same subjects'
        for column in ("idp_bin", "idp_frac"):
            assert sorted(a[column].to_list()) == sorted(b[column].to_list())
        assert (a["idp_frac"] == b["idp_frac"]).mean() < 0.05


@pytest.mark.slow
def test_calibrated_test_is_uniform_on_a_trained_null_store_and_the_papers_is_not(null_store, tmp_path, capsys,
                                                                                  in_process):
    run = tmp_path / "run"
    assert main(["train", "--pairs", str(null_store), "--out", str(run), "--zero-stage", "2", "--epochs", "3",
                 "--batch-size", "1024"]) == 0
    test = json.loads((run / "test_metrics.json").read_text())
    # no association is left: within-bucket accuracy stays at its null level
    assert abs(test["within_bucket_accuracy"] - test["within_bucket_accuracy_null"]) < 0.01
    assert main(["associate", "--run", str(run)]) == 0
    assert main(["associate", "--run", str(run), "--test", "paper"]) == 0
    calibrated = pl.read_csv(run / "associations.tsv", separator="\t")["p"].drop_nulls().to_numpy()
    paper = pl.read_csv(run / "associations_paper.tsv", separator="\t")
    print(f"null store: calibrated {np.mean(calibrated < 0.05):.3f} at p < 0.05, paper "
          f"{np.mean(paper['p'].to_numpy() < 0.05):.3f} at p < 0.05 and {(paper['p_adjusted'] < 0.05).sum()} of "
          f"{paper.height} at FDR 5%")
    assert len(calibrated) >= 30
    assert np.mean(calibrated < 0.05) <= 0.12 and (stats.false_discovery_control(calibrated) < 0.05).sum() == 0
    assert stats.kstest(calibrated, "uniform").pvalue > 0.001


@pytest.fixture(scope="module")
def planted_store(small_pairs, mini_pairs, mini_cohort, tmp_path_factory):
    """small_pairs' buckets over a copy of the mini cohort whose IDPs are rewritten: every other IDP of a bucket
    is driven by one of the bucket's SNPs (R^2 about 0.5, or 0.25 each for an IDP two buckets drive), the rest
    keep their simulated values. Returns the store and its planted (SNP, IDP) pairs."""
    from comical.data_io.cohort import load_cohort

    buckets = json.loads((small_pairs / "manifest.json").read_text())["buckets"]
    drivers: dict[str, set] = {}
    for bucket in buckets.values():
        for k, idp in enumerate(bucket["idps"]):
            if k % 2 == 0:
                drivers.setdefault(idp, set()).add(bucket["snps"][k // 2 % len(bucket["snps"])])
    cohort = load_cohort(mini_cohort)
    variants = cohort.genotypes.variants["variant_id"].to_list()
    rng = np.random.default_rng(0)
    planted = {}
    for idp, snps in drivers.items():
        g = cohort.genotypes.read(cohort.sample_index, [variants.index(s) for s in sorted(snps)], dtype=np.float64)
        g = np.where(g < 0, np.nan, g)
        score = np.nan_to_num((g - np.nanmean(g, 0)) / np.nanstd(g, 0)).sum(1)
        values = cohort.idps[idp].to_numpy()
        log_volume = np.log(np.nanmean(values)) + 0.1 * (score + rng.normal(size=len(score)) * np.sqrt(len(snps)))
        planted[idp] = np.where(np.isnan(values), np.nan, np.exp(log_volume))
    copy = tmp_path_factory.mktemp("planted") / "cohort"
    copy.mkdir()
    for path in mini_cohort.iterdir():
        if path.name != "idps.csv":
            (copy / path.name).symlink_to(path)
    cohort.idps.with_columns([pl.Series(k, v) for k, v in planted.items()]).write_csv(copy / "idps.csv")
    out = copy.parent / "store"
    assert main(["pairs", "--cohort", str(copy), "--top-n-perc", "1", "--out", str(out), "--qc",
                 str(mini_pairs / "qc"), "--phewas", str(mini_pairs / "phewas")]) == 0
    return out, {(s, idp) for idp, snps in drivers.items() for s in snps}


@pytest.mark.slow
def test_comical_finds_strong_planted_pairs_and_calls_few_others(planted_store, small_pairs, tmp_path, in_process):
    """COMICAL's positive control in the suite: the paper's settings (one token a pair, 3 epochs, as the null store's
    test) on a store with strong planted pairs. A model that learned no association gives uniform p-values (the null
    store's test), so it calls almost none of them at FDR 5%; trained at learning rate 1e-9 it fails the first
    assertion (within-bucket accuracy 0.122 against its null 0.121)."""
    from sklearn.metrics import average_precision_score

    store, planted = planted_store
    assert json.loads((store / "manifest.json").read_text())["buckets"] == json.loads(
        (small_pairs / "manifest.json").read_text())["buckets"]  # the same candidate pairs, other IDP values
    run = tmp_path / "run"
    assert main(["train", "--pairs", str(store), "--out", str(run), "--zero-stage", "2", "--epochs", "3",
                 "--batch-size", "1024"]) == 0
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["within_bucket_accuracy"] > test["within_bucket_accuracy_null"] + 0.02
    assert main(["associate", "--run", str(run)]) == 0
    table = pl.read_csv(run / "associations.tsv", separator="\t")
    truth = np.array([(s, i) in planted for s, i in zip(table["snp"], table["idp"])])
    called = (table["p_adjusted"] < 0.05).to_numpy()
    auprc = average_precision_score(truth, -np.log(table["p"].to_numpy()))
    print(f"planted store: {truth.sum()} of {len(truth)} pairs planted; called at FDR 5%: {called[truth].sum()} "
          f"planted, {called[~truth].sum()} others; AUPRC {auprc:.3f}; within-bucket accuracy "
          f"{test['within_bucket_accuracy']:.4f} (null {test['within_bucket_accuracy_null']:.4f})")
    assert 0.3 < truth.mean() < 0.7  # about half the candidate pairs are planted
    assert called[truth].mean() >= 0.9 and called[~truth].sum() <= 2
    assert auprc > 0.95


def test_buckets_come_from_training_subjects_by_default(mini_pairs):
    subjects = pl.read_parquet(mini_pairs / "subjects.parquet")
    phewas = pl.read_csv(mini_pairs / "phewas" / "phewas.tsv", separator="\t")
    assert phewas["n"].max() == (subjects["split"] == "train").sum()
    assert json.loads((mini_pairs / "pairs_report.json").read_text())["buckets_from"] == "train"


def test_batch_larger_than_a_workers_share_fails_before_training(small_pairs, tmp_path, capsys):
    assert main(["train", "--pairs", str(small_pairs), "--out", str(tmp_path / "o"), "--workers", "2",
                 "--batch-size", "4000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "lower --batch-size" in err and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_failed_training_run_says_so_in_run_json(small_pairs, ray_session, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("worker group lost")

    monkeypatch.setattr("comical.distributed.run.run_training", broken)
    with pytest.raises(RuntimeError):
        main(["train", "--pairs", str(small_pairs), "--out", str(tmp_path / "o"), "--epochs", "1"])
    record = json.loads((tmp_path / "o" / "run.json").read_text())
    assert record["state"] == "failed" and "worker group lost" in record["error"]
    assert not (tmp_path / "o" / "test_metrics.json").exists()
    assert main(["associate", "--run", str(tmp_path / "o")]) == 2
