"""QC against plink2 on the same filters, and its parts against independent computations."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from scipy.stats import chi2

from comical.data_io.cohort import load_cohort
from comical.pipelines.statgen.qc import QCConfig, heterozygosity_f, hwe_exact_p, ld_prune, run_qc


@pytest.fixture(scope="module")
def qc(mini_cohort):
    return run_qc(load_cohort(mini_cohort), QCConfig())


def test_kept_variants_and_samples_equal_plink2(mini_cohort, qc, plink2, tmp_path):
    # plink2 --bfile genotypes --mind 0.1 --geno 0.1 --hwe 1e-16 --maf 0.05 --write-snplist --write-samples
    plink2("--bfile", mini_cohort / "genotypes", "--mind", 0.1, "--geno", 0.1, "--hwe", 1e-16, "--maf", 0.05,
           "--write-snplist", "--write-samples", "--out", tmp_path / "qc")
    snplist = (tmp_path / "qc.snplist").read_text().split()
    kept = qc.variants.filter(pl.col("filter") == "PASS")["variant_id"].to_list()
    assert kept == snplist
    plink_samples = pl.read_csv(tmp_path / "qc.id", separator="\t")["IID"].cast(pl.String).to_list()
    assert qc.samples.filter(pl.col("filter") != "mind")["eid"].to_list() == plink_samples
    r = qc.report
    assert r["variants"]["removed_geno"] > 0 and r["variants"]["removed_hwe"] > 0 and r["samples"]["removed_mind"] > 0


def test_hwe_p_matches_plink2_hardy(mini_cohort, qc, plink2, tmp_path):
    # plink2 --bfile genotypes --remove <mind failures> --hardy
    removed = qc.samples.filter(pl.col("filter") == "mind")["eid"]
    pl.DataFrame({"#FID": removed, "IID": removed}).write_csv(tmp_path / "rm.id", separator="\t")
    plink2("--bfile", mini_cohort / "genotypes", "--remove", tmp_path / "rm.id", "--hardy", "--out", tmp_path / "h")
    theirs = pl.read_csv(tmp_path / "h.hardy", separator="\t")["P"].to_numpy()
    ours = qc.variants["hwe_p"].to_numpy()
    # plink2 prints 6 significant digits
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-300)
    assert ours.min() < 1e-16


def test_hwe_exact_agrees_with_chi_square_for_large_counts():
    p_exact = hwe_exact_p(3000, 4400, 2600)
    n, het = 10000, 4400
    f = (2 * 3000 + het) / (2 * n)
    expected = np.array([n * f**2, 2 * n * f * (1 - f), n * (1 - f) ** 2])
    stat = (((np.array([3000, het, 2600]) - expected) ** 2) / expected).sum()
    assert p_exact == pytest.approx(chi2.sf(stat, 1), rel=0.2)
    assert hwe_exact_p(25, 50, 25) == pytest.approx(1.0)


def test_heterozygosity_f_matches_plink2_het(mini_cohort, qc, plink2, tmp_path):
    pruned = qc.variants.filter(pl.col("pruned_in"))["variant_id"]
    (tmp_path / "pruned.txt").write_text("\n".join(pruned) + "\n")
    keep = qc.samples.filter(pl.col("filter") != "mind")["eid"]
    pl.DataFrame({"#FID": keep, "IID": keep}).write_csv(tmp_path / "keep.id", separator="\t")
    plink2("--bfile", mini_cohort / "genotypes", "--keep", tmp_path / "keep.id", "--extract", tmp_path / "pruned.txt",
           "--het", "--out", tmp_path / "het")
    theirs = pl.read_csv(tmp_path / "het.het", separator="\t")["F"].to_numpy()
    ours = qc.samples.filter(pl.col("filter") != "mind")["het_f"].to_numpy()
    np.testing.assert_allclose(ours, theirs, atol=5e-6)


def test_het_outliers_are_the_planted_contaminated_samples(mini_cohort, qc):
    truth = pl.read_parquet(mini_cohort / "truth" / "samples.parquet")
    planted = set(truth.filter(pl.col("planted_failure") == "het")["eid"].cast(pl.String))
    assert set(qc.samples.filter(pl.col("filter") == "het")["eid"]) == planted


def test_ld_pruning_leaves_no_correlated_pair_and_agrees_with_plink2(mini_cohort, qc, plink2, tmp_path):
    kept = qc.variants.filter(pl.col("filter") == "PASS")
    (tmp_path / "kept.txt").write_text("\n".join(kept["variant_id"]) + "\n")
    removed = qc.samples.filter(pl.col("filter") == "mind")["eid"]
    pl.DataFrame({"#FID": removed, "IID": removed}).write_csv(tmp_path / "rm.id", separator="\t")
    plink2("--bfile", mini_cohort / "genotypes", "--remove", tmp_path / "rm.id", "--extract", tmp_path / "kept.txt",
           "--indep-pairwise", 50, 5, 0.2, "--out", tmp_path / "prune")
    theirs = set((tmp_path / "prune.prune.in").read_text().split())
    ours = set(kept.filter(pl.col("pruned_in"))["variant_id"])
    assert len(ours & theirs) / len(ours | theirs) > 0.95


def test_ld_prune_against_pairwise_correlations():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 3, (500, 30)).astype(np.int8)
    g = np.repeat(base, 2, axis=1)  # every variant duplicated next to itself
    g[rng.random(g.shape) < 0.02] = -127
    maf = np.full(60, 0.3)
    maf[1::2] = 0.2  # the copies are rarer: they are the ones to go
    kept = ld_prune(g, np.ones(60, int), maf, window=10, step=2, r2=0.5)
    assert kept.tolist() == list(range(0, 60, 2))


def test_heterozygosity_f_by_hand():
    g = np.array([[0, 1, 2, 1], [1, 1, 1, 1], [2, 0, -127, 2]], dtype=np.int8)
    p = np.array([3 / 6, 2 / 6, 3 / 4, 4 / 6])
    called = g != -127
    e_hom = (called * (1 - 2 * p * (1 - p))).sum(axis=1)
    o_hom = (called & (g != 1)).sum(axis=1)
    np.testing.assert_allclose(heterozygosity_f(g), (o_hom - e_hom) / (called.sum(axis=1) - e_hom))


def test_pcs_separate_the_planted_subpopulations(mini_cohort, qc):
    truth = pl.read_parquet(mini_cohort / "truth" / "samples.parquet").with_columns(pl.col("eid").cast(pl.String))
    table = qc.pcs.join(truth, on="eid")
    pcs = table.select("PC1", "PC2", "PC3").to_numpy()
    pop = table["population"].to_numpy()
    centroids = np.stack([pcs[pop == k].mean(axis=0) for k in range(4)])
    nearest = np.argmin(((pcs[:, None, :] - centroids[None]) ** 2).sum(axis=2), axis=1)
    assert (nearest == pop).mean() > 0.95
    assert qc.pcs.width == 41 and qc.pcs.height == qc.report["samples"]["kept"]
    assert min(qc.report["planted_structure"]["population_eta2_by_pc"][:3]) > 0.8


def test_keep_and_extract_equal_the_fileset_plink2_subsets(mini_cohort, plink2, tmp_path, capsys):
    """`qc` and `gwas` with plink2's --keep (FID IID lines) and --extract (IDs, some unknown): the same tables as
    the same commands on the fileset `plink2 --keep --extract --make-bed` writes."""
    import json

    from comical.cli import main

    fam = [line.split()[:2] for line in (mini_cohort / "genotypes.fam").read_text().splitlines()]
    (tmp_path / "keep.txt").write_text("".join(f"{fid} {iid}\n" for fid, iid in fam[:1500]))
    ids = [line.split()[1] for line in (mini_cohort / "genotypes.bim").read_text().splitlines()]
    (tmp_path / "extract.txt").write_text("\n".join(ids[200:2600:2] + ["rs_not_there"]) + "\n")
    subset = tmp_path / "subset"
    subset.mkdir()
    for item in mini_cohort.iterdir():
        if not item.name.startswith("genotypes."):
            (subset / item.name).symlink_to(item)
    plink2("--bfile", mini_cohort / "genotypes", "--keep", tmp_path / "keep.txt", "--extract",
           tmp_path / "extract.txt", "--make-bed", "--out", subset / "genotypes")

    flags = ["--keep", str(tmp_path / "keep.txt"), "--extract", str(tmp_path / "extract.txt")]
    assert main(["qc", "--cohort", str(mini_cohort), "--out", str(tmp_path / "flags"), *flags]) == 0
    assert "dropped 500 not in --keep" in capsys.readouterr().out
    assert main(["qc", "--cohort", str(subset), "--out", str(tmp_path / "plink2")]) == 0
    read = lambda folder, name: pl.read_csv(tmp_path / folder / name, separator="\t", infer_schema=False)  # noqa: E731
    assert read("flags", "sample_qc.tsv").equals(read("plink2", "sample_qc.tsv"))
    variants = read("flags", "variant_qc.tsv")
    assert variants.height == 3000 and (variants["filter"] == "extract").sum() == 3000 - 1200
    assert variants.filter(pl.col("filter") != "extract").equals(read("plink2", "variant_qc.tsv"))
    np.testing.assert_allclose(read("flags", "pcs.eigenvec").drop("#FID", "IID").cast(pl.Float64).to_numpy(),
                               read("plink2", "pcs.eigenvec").drop("#FID", "IID").cast(pl.Float64).to_numpy(),
                               rtol=1e-6, atol=1e-9)
    report = json.loads((tmp_path / "flags" / "qc_report.json").read_text())
    assert report["variants"]["removed_extract"] == 1800 and report["samples"]["input"] == 1500

    phenotype = ["--pheno-name", "Volume_of_Left_Hippocampus", "--no-plots", "--no-clump"]
    assert main(["gwas", "--cohort", str(mini_cohort), *phenotype, *flags, "--out", str(tmp_path / "g_flags")]) == 0
    assert main(["gwas", "--cohort", str(subset), *phenotype, "--out", str(tmp_path / "g_plink2")]) == 0
    name = "Volume_of_Left_Hippocampus.tsv"
    assert pl.read_csv(tmp_path / f"g_flags.{name}", separator="\t", infer_schema=False).equals(
        pl.read_csv(tmp_path / f"g_plink2.{name}", separator="\t", infer_schema=False))
    assert json.loads((tmp_path / "g_flags.summary.json").read_text())["n_variants"] == 1200


def test_keep_and_extract_files_in_plink2s_forms(tmp_path):
    from comical.data_io.errors import InputError
    from comical.data_io.plink import read_id_list

    forms = {"#FID\tIID\nf1\ta\nf2\tb\n": ["a", "b"], "#IID SEX\na 1\n\nb 2\n": ["a", "b"], "a\nb\n": ["a", "b"],
             "f1 a\nf2 b\n": ["a", "b"]}
    for text, ids in forms.items():
        (tmp_path / "keep.txt").write_text(text)
        assert read_id_list(tmp_path / "keep.txt", "--keep") == ids, text
    (tmp_path / "extract.txt").write_text("rs1 rs2\nrs3\n\n")
    assert read_id_list(tmp_path / "extract.txt", "--extract") == ["rs1", "rs2", "rs3"]
    (tmp_path / "keep.txt").write_text("#FID IID\nf1 a\n\nf2\n")  # the short line is the file's line 4
    with pytest.raises(InputError, match=r"keep.txt line 4: 1 field\(s\); expected FID IID"):
        read_id_list(tmp_path / "keep.txt", "--keep")
    (tmp_path / "keep.txt").write_text("#FID SAMPLE\nf1 a\n")
    with pytest.raises(InputError, match="a header without IID"):
        read_id_list(tmp_path / "keep.txt", "--keep")
