"""The pair store: counts, subject-disjoint splits, PLE fitted on training subjects, tokens, Ray Data input."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from comical.data_io.cohort import load_cohort
from comical.data_io.pair_store import PAIR_SCHEMA, expand_pairs, pair_dataset, read_manifest
from comical.data_io.tokenizers import (
    MISSING_TOKEN, decode_tokens, encode_genotypes, fit_ple_edges, ple_encode, snp_vocabulary,
)
from comical.pipelines.comical.pairs import PairsConfig, make_pairs


@pytest.fixture(scope="module")
def store(mini_pairs):
    manifest = read_manifest(mini_pairs)
    splits = {s: pl.read_parquet(mini_pairs / s) for s in ("train", "val", "test")}
    return manifest, splits, pl.read_parquet(mini_pairs / "subjects.parquet")


def test_pair_count_is_subjects_times_sum_of_bucket_products(store):
    manifest, splits, subjects = store
    per_subject = sum(len(b["snps"]) * len(b["idps"]) for b in manifest["buckets"].values())
    assert manifest["pairs_per_subject"] == per_subject
    for name, table in splits.items():
        n_subjects = (subjects["split"] == name).sum()
        assert table.height == n_subjects * per_subject == manifest["splits"][name]["pairs"]
        assert table.group_by("subject").len()["len"].unique().to_list() == [per_subject]
    assert len(manifest["buckets"]) >= 4  # diseases with both SNPs and IDPs at --top-n-perc 5


def test_splits_are_subject_disjoint_70_20_10(store):
    _, splits, subjects = store
    seen = [set(t["subject"].unique()) for t in splits.values()]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    shares = subjects["split"].value_counts(normalize=True)
    share = dict(zip(shares["split"], shares["proportion"]))
    assert share["train"] == pytest.approx(0.7, abs=0.01) and share["test"] == pytest.approx(0.1, abs=0.01)


def test_columns_have_the_store_types_and_train_rows_are_shuffled(mini_pairs, store):
    _, splits, _ = store
    schema = pq.read_schema(next((mini_pairs / "train").glob("*.parquet")))
    assert schema.remove_metadata() == PAIR_SCHEMA
    subject = splits["train"]["subject"].to_numpy()
    assert (np.diff(subject) != 0).mean() > 0.9  # not subject-major
    on_disk = sum(f.stat().st_size for s in ("train", "val", "test") for f in (mini_pairs / s).glob("*.parquet"))
    assert on_disk / sum(t.height for t in splits.values()) <= 20


def test_rows_carry_the_subjects_genotype_token_and_ple(mini_cohort, store):
    manifest, splits, subjects = store
    cohort = load_cohort(mini_cohort)
    rows = splits["val"].sample(200, seed=1)
    eid = subjects["eid"].gather(rows["subject"].to_numpy())
    bed_row = np.array([cohort.genotypes.samples["iid"].to_list().index(e) for e in eid])
    bim = {v: i for i, v in enumerate(cohort.genotypes.variants["variant_id"])}
    snp_ids = np.array(manifest["snps"])[rows["snp"].to_numpy()]
    g = cohort.genotypes.read(dtype=np.int8)[bed_row, [bim[s] for s in snp_ids]]
    table = np.array(manifest["snp_token_table"])
    expected = np.where(g == -127, 0, table[rows["snp"].to_numpy(), np.clip(g, 0, 2)])
    np.testing.assert_array_equal(rows["genotype_token"].to_numpy(), expected)
    idps = cohort.idps.join(pl.DataFrame({"eid": eid}), on="eid", how="right")
    for (b, f, i), value in zip(rows.select("idp_bin", "idp_frac", "idp").iter_rows(),
                                [idps[manifest["idps"][i]][k] for k, i in enumerate(rows["idp"])]):
        e = manifest["ple_bin_edges"][manifest["idps"][i]]
        assert e[b] <= value <= e[b + 1] or b in (0, len(e) - 2)
        if e[b] <= value <= e[b + 1]:
            assert f == pytest.approx((value - e[b]) / (e[b + 1] - e[b]), abs=1e-5)


def test_ple_edges_come_from_training_subjects_only(mini_cohort, mini_pairs, tmp_path, store):
    manifest, _, subjects = store
    cohort = load_cohort(mini_cohort)
    test_eid = subjects.filter(pl.col("split") == "test")["eid"][0]
    row = cohort.eids.to_list().index(test_eid)
    idp = manifest["idps"][0]
    cohort.idps = cohort.idps.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(1e9).otherwise(pl.col(idp)).alias(idp))
    buckets = manifest["buckets"]
    snp_sets = pl.DataFrame([(d, s) for d, b in buckets.items() for s in b["snps"]], schema=["disease", "variant_id"],
                            orient="row")
    idp_map = pl.DataFrame([(i, d) for d, b in buckets.items() for i in b["idps"]], schema=["idp", "disease"],
                           orient="row")
    again = make_pairs(cohort, subjects["eid"], idp_map, snp_sets, PairsConfig(top_n_perc=5), tmp_path,
                       diseases=manifest["diseases"])
    assert again["ple_bin_edges"] == manifest["ple_bin_edges"]
    assert json.loads((tmp_path / "manifest.json").read_text())["splits"] == manifest["splits"]


def test_snp_vocabulary_round_trips_with_indels_and_missing():
    tokens, table = snp_vocabulary(["A", "AT", "G"], ["G", "A", "C"])
    assert tokens[0] == MISSING_TOKEN
    genotypes = np.array([[0, 1, 2], [2, -127, 1]], dtype=np.int8)
    ids = encode_genotypes(genotypes, table)
    assert decode_tokens(tokens, ids).tolist() == [["G/G", "A/AT", "G/G"], ["A/A", MISSING_TOKEN, "C/G"]]
    # a heterozygote is one token whichever allele the bim counts
    assert tokens[table[0, 1]] == "A/G" and snp_vocabulary(["G"], ["A"])[0][snp_vocabulary(["G"], ["A"])[1][0, 1]] == "A/G"


def test_ple_encoding_and_torch_expansion():
    train = np.arange(1, 101, dtype=float)[:, None]
    edges = fit_ple_edges(train, 4)  # quartile edges 1, 25.75, 50.5, 75.25, 100
    bins, frac = ple_encode(np.array([[1.0], [38.125], [100.0], [500.0], [-3.0]]), edges)
    assert bins[:, 0].tolist() == [0, 1, 3, 3, 0]
    np.testing.assert_allclose(frac[:, 0], [0, 0.5, 1, 1, 0], atol=1e-6)
    assert frac.max() < 1
    out = expand_pairs({k: torch.tensor(v) for k, v in {
        "snp": [0], "genotype_token": [1], "idp": [2], "disease": [0], "subject": [7],
        "idp_bin": np.array([2], np.int16), "idp_frac": np.array([0.25], np.float32)}.items()}, n_bins=4)
    assert out["ple"].tolist() == [[1.0, 1.0, 0.25, 0.0]]


def test_ray_data_yields_the_stored_pairs_as_tensors(mini_pairs, store, ray_session):
    manifest, splits, _ = store
    dataset = pair_dataset(mini_pairs, "test")
    assert dataset.count() == splits["test"].height
    batch = next(iter(dataset.iter_torch_batches(batch_size=512)))
    tensors = expand_pairs(batch, manifest["n_bins"])
    assert tensors["snp"].dtype == torch.int64 and tensors["ple"].shape == (512, manifest["n_bins"])
    keys = ["subject", "snp", "idp"]
    got = pl.DataFrame({k: tensors[k].numpy() for k in keys})
    stored = got.join(splits["test"].with_columns(pl.col(keys).cast(pl.Int64)), on=keys, how="left")
    assert stored["idp_bin"].null_count() == 0  # every streamed pair is a stored pair
    np.testing.assert_array_equal(tensors["genotype_token"].numpy(), stored["genotype_token"].to_numpy())
    ple = tensors["ple"].numpy()
    bins, frac = stored["idp_bin"].to_numpy(), stored["idp_frac"].to_numpy()
    assert (ple[np.arange(512), bins] == frac).all()
    assert ple.sum(axis=1) == pytest.approx(bins + frac)
