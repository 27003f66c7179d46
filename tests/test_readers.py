"""Readers: genotypes equal plink2's own export; eid-keyed tables in every accepted layout; catalog parsing."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from comical.data_io.catalog import read_gwas_catalog
from comical.data_io.cohort import load_cohort
from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.plink import open_genotypes
from comical.data_io.tables import read_table
from comical.data_io.traits import load_trait_map
from comical.pipelines.statgen.qc import QCConfig


def test_genotypes_equal_plink2_export(mini_cohort, plink2, tmp_path):
    # plink2 --bfile genotypes --extract first20 --export A --export-allele a1.txt: counts of the bim's allele 1
    g = open_genotypes(mini_cohort / "genotypes")
    ids, a1 = g.variants["variant_id"][:20], g.variants["allele1"][:20]
    (tmp_path / "ids.txt").write_text("\n".join(ids) + "\n")
    (tmp_path / "a1.txt").write_text("".join(f"{v}\t{a}\n" for v, a in zip(ids, a1)))
    plink2("--bfile", mini_cohort / "genotypes", "--extract", tmp_path / "ids.txt", "--export", "A",
           "--export-allele", tmp_path / "a1.txt", "--out", tmp_path / "raw")
    raw = pl.read_csv(tmp_path / "raw.raw", separator="\t", null_values="NA")
    assert [c.rsplit("_", 1)[1] for c in raw.columns[6:]] == g.variants["allele1"][:20].to_list()
    theirs = raw.select(raw.columns[6:]).to_numpy().astype(float)
    np.testing.assert_array_equal(g.read(variants=slice(0, 20)), theirs)


def test_plink2_style_pheno_file_with_missing_values(tmp_path):
    path = tmp_path / "pheno.txt"
    path.write_text("#FID IID height score\n1 101 170.5 1\n2 102 NA 0\n3 103 165 -9\n")
    table = read_table(path, allow_missing=True)
    assert table["eid"].to_list() == ["101", "102", "103"]
    assert table["height"].to_list() == [170.5, None, 165.0]
    assert table["score"].to_list() == [1.0, 0.0, None]
    with pytest.raises(InputError, match=r"pheno.txt line 3, column height: missing value"):
        read_table(path)


def test_tab_separated_plink2_files_read_like_whitespace_ones(tmp_path):
    rows = ["#FID\tIID\theight\tscore", "1\t101\t170.5\t1", "2\t102\tNA\t0", "3\t103\t165\t-9"]
    (tmp_path / "tabs.txt").write_text("\n".join(rows) + "\n")
    (tmp_path / "spaces.txt").write_text("\n".join(r.replace("\t", "  ") for r in rows) + "\n")
    tabs, spaces = (read_table(tmp_path / n, allow_missing=True) for n in ("tabs.txt", "spaces.txt"))
    assert tabs.equals(spaces) and tabs["height"].to_list() == [170.5, None, 165.0]
    score = read_table(tmp_path / "tabs.txt", columns=["score"], allow_missing=True)
    assert score.columns == ["eid", "score"] and score["score"].to_list() == [1.0, 0.0, None]
    (tmp_path / "short.txt").write_text("\n".join(rows[:2] + ["2\t102\t160"] + rows[3:]) + "\n")
    with pytest.raises(InputError, match=r"short.txt line 3: 3 fields; expected 4"):
        read_table(tmp_path / "short.txt", allow_missing=True)
    (tmp_path / "bad.txt").write_text("\n".join(rows[:3] + ["3\t103\t16x5\t1"]) + "\n")
    with pytest.raises(InputError, match=r"bad.txt line 4, column height: '16x5' is not a number"):
        read_table(tmp_path / "bad.txt", allow_missing=True)


def test_parquet_and_tsv_tables(tmp_path):
    frame = pl.DataFrame({"eid": [5, 6], "x": [1.5, 2.5]})
    frame.write_parquet(tmp_path / "t.parquet")
    frame.write_csv(tmp_path / "t.tsv", separator="\t")
    for name in ("t.parquet", "t.tsv"):
        table = read_table(tmp_path / name)
        assert table["eid"].to_list() == ["5", "6"] and table["x"].to_list() == [1.5, 2.5]
    pl.DataFrame({"eid": [5, 6], "x": [1.5, None]}).write_parquet(tmp_path / "n.parquet")
    with pytest.raises(InputError, match=r"n.parquet row 2, column x: missing value"):
        read_table(tmp_path / "n.parquet")


def test_cohort_aligns_tables_to_the_fam_order(cohort_copy):
    idps = pl.read_csv(cohort_copy / "idps.csv")
    idps.reverse().slice(0, 1500).write_csv(cohort_copy / "idps.csv")  # other order, fewer subjects
    cohort = load_cohort(cohort_copy)
    iid = cohort.genotypes.samples["iid"].gather(cohort.sample_index)
    assert cohort.sample_index.size == 1500
    for table in (cohort.idps, cohort.covariates, cohort.diagnoses, cohort.eprs):
        assert table["eid"].to_list() == iid.to_list()
    original = idps.with_columns(pl.col("eid").cast(pl.String))
    joined = cohort.idps.join(original, on="eid", suffix="_orig")
    col = "Volume_of_Left_Hippocampus"
    np.testing.assert_allclose(joined[col].to_numpy(), joined[f"{col}_orig"].to_numpy())


def test_catalog_p_values_parse_as_written(mini_cohort):
    catalog = read_gwas_catalog(mini_cohort / "gwas_catalog.tsv")
    row = catalog.row(0, named=True)
    mantissa, exponent = row["P-VALUE"].split("E")
    assert row["p_value"] == pytest.approx(float(mantissa) * 10 ** int(exponent))
    assert catalog["p_value"].max() <= 1e-5  # the Catalog lists p < 1e-5 only


def test_trait_map_covers_every_diagnosis():
    mapped = set(load_trait_map()["disease"])
    assert mapped == {"AD", "ADHD", "ASD", "BD", "CBVD", "MD", "MS", "PD", "Stroke", "SZ", "UD"}


def test_config_round_trips_through_yaml(tmp_path):
    config = QCConfig(maf=0.01, n_pcs=10)
    (tmp_path / "qc.yaml").write_text(config.to_yaml())
    assert QCConfig.from_yaml(tmp_path / "qc.yaml") == config
    with pytest.raises(InputError, match="unknown key"):
        QCConfig.from_dict({"mad": 0.1})
    assert issubclass(QCConfig, Config)


@pytest.mark.parametrize("fileset", ["pgen", "bgen"])
def test_a_cohort_with_plink2_or_bgen_genotypes_gives_the_qc_and_pair_store_of_its_bed(fileset, mini_cohort,
                                                                                      mini_pairs, plink2, tmp_path):
    """The mini cohort's .bed exported by plink2 as .pgen, or as a BGEN 1.2 (ref-first) with its .sample, in place
    of the .bed: QC and PheWAS (inside `comical pairs`) and the pair store come out as from the .bed. The BGEN
    cohort is made the UK Biobank user's way (issue 33): its tables from a showcase export through `comical cohort
    build`, with a map whose CBVD codes leave out stroke's, as the simulator's diagnoses do."""
    import pyarrow.parquet as pq
    import yaml
    from conftest import write_showcase

    from comical.cli import main
    from comical.data_io.showcase import default_map_path

    cohort = tmp_path / "cohort"
    export = ["--make-pgen"] if fileset == "pgen" else ["--export", "bgen-1.2", "ref-first", "bits=8"]
    if fileset == "pgen":
        cohort.mkdir()
        for item in mini_cohort.iterdir():
            if not item.name.startswith("genotypes."):
                (cohort / item.name).symlink_to(item)
        plink2("--bfile", mini_cohort / "genotypes", *export, "--out", cohort / "genotypes")
    else:
        plink2("--bfile", mini_cohort / "genotypes", *export, "--out", tmp_path / "ukb_imp")
        write_showcase(mini_cohort, tmp_path / "showcase.csv", gaps=False)
        diagnoses = yaml.safe_load(default_map_path().read_text())["diagnoses"]
        diagnoses["codes"]["CBVD"] = [c for c in diagnoses["codes"]["CBVD"] if c not in diagnoses["codes"]["Stroke"]]
        (tmp_path / "map.yaml").write_text(yaml.safe_dump({"diagnoses": diagnoses}))
        assert main(["cohort", "build", "--showcase", str(tmp_path / "showcase.csv"), "--genotypes",
                     str(tmp_path / "ukb_imp.bgen"), "--catalog", str(mini_cohort / "gwas_catalog.tsv"),
                     "--map", str(tmp_path / "map.yaml"), "--out", str(cohort)]) == 0
        for name in ("idps.csv", "covariates.csv", "diagnoses.csv"):  # the simulated tables, to the last digit
            assert read_table(cohort / name).equals(read_table(mini_cohort / name)), name
    assert not (cohort / "genotypes.bed").exists()
    genotypes = load_cohort(cohort).genotypes
    np.testing.assert_array_equal(genotypes.read(slice(0, 50), slice(0, 40), dtype=np.int8),
                                  open_genotypes(mini_cohort / "genotypes").read(slice(0, 50), slice(0, 40),
                                                                                 dtype=np.int8))
    out = tmp_path / "pairs"
    assert main(["pairs", "--cohort", str(cohort), "--top-n-perc", "5", "--out", str(out)]) == 0
    from polars.testing import assert_frame_equal

    for table in ("qc/sample_qc.tsv", "qc/variant_qc.tsv", "phewas/idp_disease_map.tsv"):
        read = lambda folder: pl.read_csv(folder / table, separator="\t", infer_schema_length=None)  # noqa: E731
        assert_frame_equal(read(out), read(mini_pairs), rel_tol=1e-9)  # sums in another order: last digits differ
    for split in ("train", "val", "test"):
        assert pq.read_table(out / split).equals(pq.read_table(mini_pairs / split)), split
