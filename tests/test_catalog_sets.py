"""Catalog SNP sets: every row's fate against the simulator's truth, harmonisation, and the top-n% rule."""

from __future__ import annotations

import math

import polars as pl
import pytest

from comical.data_io.errors import InputError
from comical.data_io.traits import load_trait_map
from comical.data_io.ukb_fields import PAIR_DISEASES
from comical.pipelines.comical.catalog_sets import catalog_snp_sets, snp_set_report


@pytest.fixture(scope="module")
def rows_and_truth(mini_pairs, mini_cohort):
    rows = pl.read_csv(mini_pairs / "catalog_rows.tsv", separator="\t")
    truth = pl.read_parquet(mini_cohort / "truth" / "catalog_rows.parquet")
    return rows.join(truth, on="row", suffix="_truth")


def test_rows_naming_no_single_variant_are_skipped_and_ungenotyped_ones_reported(rows_and_truth):
    kinds = rows_and_truth.group_by("kind").agg(pl.col("status").unique())
    fate = dict(zip(kinds["kind"], kinds["status"].to_list()))
    assert fate["interaction"] == ["not_single_variant"] and fate["haplotype"] == ["not_single_variant"]
    assert fate["not_genotyped"] == ["not_in_genotypes"]


def test_single_rows_match_their_variant_by_rsid_or_position(rows_and_truth):
    single = rows_and_truth.filter(pl.col("kind") == "single")
    assert (single["variant_id"] == single["variant_id_truth"]).all()
    assert single["snps"].str.starts_with("chr").any()  # some rows name chr:pos only, and still match


def test_the_report_counts_each_match_key_and_a_shifted_build_is_caught(rows_and_truth, mini_pairs, mini_cohort):
    """pairs_report.json counts rows matched by rsID and by position (catalog_rows.tsv's matched_by, which the
    truth's chr:pos-only rows confirm); the build check passes on the cohort's own positions and fails when every
    genotype position moves, as between GRCh37 and GRCh38."""
    import json

    from comical.data_io.cohort import load_cohort
    from comical.pipelines.comical.catalog_sets import build_check

    report = json.loads((mini_pairs / "pairs_report.json").read_text())
    by_key = rows_and_truth.filter(pl.col("matched_by").is_not_null())["matched_by"].value_counts()
    assert report["rows_matched_by"] == dict(zip(by_key["matched_by"], by_key["count"]))
    assert report["rows_matched_by"]["position"] > 0 and report["rows_matched_by"]["rsid"] > 0
    assert rows_and_truth.filter(pl.col("matched_by") == "position")["snps"].str.starts_with("chr").all()
    assert report["genome_build"]["other_build"] is False
    cohort = load_cohort(mini_cohort)
    moved = cohort.genotypes.variants.with_columns(pl.col("pos") + 1234)
    check = build_check(cohort.catalog, moved)
    assert check["other_build"] is True and check["same_position"] == 0 and check["rsid_matches_compared"] >= 20


def test_strand_flips_and_unknown_risk_alleles_are_found(rows_and_truth):
    single = rows_and_truth.filter(pl.col("kind") == "single")
    assert (single.filter(pl.col("strand_flipped"))["risk_allele_status"] == "strand_flip").all()
    assert (single.filter(pl.col("risk_allele_unknown"))["risk_allele_status"] == "unknown").all()
    clean = single.filter(~pl.col("strand_flipped") & ~pl.col("risk_allele_unknown"))
    assert (clean["risk_allele_status"] == "match").all()


def test_top_n_percent_counts_each_snp_once_at_its_best_p(mini_pairs):
    rows = pl.read_csv(mini_pairs / "catalog_rows.tsv", separator="\t")
    selected = pl.read_csv(mini_pairs / "snp_sets.tsv", separator="\t")
    for disease in PAIR_DISEASES:
        eligible = rows.filter((pl.col("disease") == disease) & pl.col("status").is_in(["selected", "below_top_n"]))
        best = eligible.group_by("variant_id").agg(pl.col("p_value").min()).sort("p_value")
        chosen = selected.filter(pl.col("disease") == disease)
        assert chosen.height == max(1, math.ceil(best.height * 5 / 100))
        assert chosen["variant_id"].to_list() == best["variant_id"].head(chosen.height).to_list()


def _tiny_catalog(**overrides):
    row = {"DISEASE/TRAIT": "Some other phrasing", "SNPS": "rs1", "CHR_ID": "1", "CHR_POS": "100",
           "STRONGEST SNP-RISK ALLELE": "rs1-T", "P-VALUE": "2E-8", "OR or BETA": "1.1",
           "MAPPED_TRAIT_URI": "http://purl.obolibrary.org/obo/MONDO_0005301", "p_value": 2e-8}
    return pl.DataFrame([{**row, **overrides}])


def test_trait_matched_by_efo_uri_and_strand_flip_harmonised():
    variants = pl.DataFrame({"variant_id": ["rs1"], "chrom": ["1"], "pos": [100], "allele1": ["A"],
                             "allele2": ["G"], "passed_qc": [True]})
    selected, rows = catalog_snp_sets(_tiny_catalog(), variants, load_trait_map(), top_n_perc=1, diseases=["MS"])
    assert rows["disease"].to_list() == ["MS"] and rows["risk_allele_status"].to_list() == ["strand_flip"]
    assert selected["risk_allele"].to_list() == ["A"]
    with pytest.raises(InputError, match="expected a percentage"):
        catalog_snp_sets(_tiny_catalog(), variants, load_trait_map(), top_n_perc=150, diseases=["MS"])


def test_risk_allele_fitting_neither_strand_drops_the_row_and_is_counted():
    variants = pl.DataFrame({"variant_id": ["rs1", "rs2", "rs3"], "chrom": ["1"] * 3, "pos": [100, 200, 300],
                             "allele1": ["A", "A", "A"], "allele2": ["T", "G", "G"], "passed_qc": [True] * 3})
    catalog = pl.concat([_tiny_catalog(SNPS="rs1", **{"STRONGEST SNP-RISK ALLELE": "rs1-C", "p_value": 1e-20}),
                         _tiny_catalog(SNPS="rs2", **{"STRONGEST SNP-RISK ALLELE": "rs2-?", "p_value": 1e-10}),
                         _tiny_catalog(SNPS="rs3", **{"STRONGEST SNP-RISK ALLELE": "rs3-A", "p_value": 1e-9})])
    # rs1's risk allele C fits neither strand of its A/T alleles (say, a position match on another build), and it
    # has the best p; rs2's unknown allele is kept.
    selected, rows = catalog_snp_sets(catalog, variants, load_trait_map(), top_n_perc=50, diseases=["MS"])
    assert rows["status"].to_list() == ["allele_mismatch", "selected", "below_top_n"]
    assert selected["variant_id"].to_list() == ["rs2"]  # the top 50% of the two kept rows, not of three
    report = snp_set_report(rows, selected, ["MS"])
    assert report["rows_by_status"]["allele_mismatch"] == 1 and report["risk_allele_status"]["mismatch"] == 1
