"""`comical cohort build`: a showcase-style export written from the mini cohort's tables (field-ID headers, UK
Biobank's negative codes, blanks, ICD-10 codes in 41270), and its genotypes exported by plink2 as BGEN, give back
the cohort's tables where values were present; bad input gets one line and leaves nothing."""

from __future__ import annotations

import gzip
import json

import numpy as np
import polars as pl
import pytest
import yaml
from conftest import write_showcase

from comical.cli import main
from comical.data_io.cohort import load_cohort
from comical.data_io.showcase import load_map
from comical.data_io.tables import read_table
from comical.data_io.ukb_fields import COVARIATES, DISEASES, IDPS


def test_a_showcase_and_a_bgen_build_the_cohort_they_came_from(mini_cohort, plink2, tmp_path, capsys):
    showcase = tmp_path / "ukb_showcase.csv"
    gaps = write_showcase(mini_cohort, showcase)
    plink2("--bfile", mini_cohort / "genotypes", "--export", "bgen-1.2", "ref-first", "bits=8",
           "--out", tmp_path / "ukb_imp")
    out = tmp_path / "cohort"
    assert main(["cohort", "build", "--showcase", str(showcase), "--genotypes", str(tmp_path / "ukb_imp.bgen"),
                 "--catalog", str(mini_cohort / "gwas_catalog.tsv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2,000 showcase subjects, 2,000 with genotypes" in printed
    assert "negative codes made missing: 3 values" in printed
    assert (out / "genotypes.bgen").resolve() == (tmp_path / "ukb_imp.bgen").resolve()  # linked, not copied
    zipped = tmp_path / "ukb_showcase.csv.gz"  # as downloads often come
    zipped.write_bytes(gzip.compress(showcase.read_bytes()))
    assert main(["cohort", "build", "--showcase", str(zipped), "--genotypes", str(tmp_path / "ukb_imp.bgen"),
                 "--catalog", str(mini_cohort / "gwas_catalog.tsv"), "--out", str(tmp_path / "from_gz")]) == 0
    for name in ("idps.csv", "covariates.csv", "diagnoses.csv"):
        assert (tmp_path / "from_gz" / name).read_bytes() == (out / name).read_bytes(), name

    for name, columns in (("idps", IDPS), ("covariates", COVARIATES)):
        built = read_table(out / f"{name}.csv", columns=columns, allow_missing=True)
        simulated = read_table(mini_cohort / f"{name}.csv", columns=columns)
        assert built["eid"].to_list() == simulated["eid"].to_list()
        for column in columns:
            rows = gaps.get(column, [])
            assert built[column].is_null().arg_true().to_list() == rows, column
            present = ~built[column].is_null()
            np.testing.assert_allclose(built[column].filter(present).to_numpy(),
                                       simulated[column].filter(present).to_numpy(), rtol=1e-12, err_msg=column)
    built = read_table(out / "diagnoses.csv", columns=DISEASES)
    simulated = read_table(mini_cohort / "diagnoses.csv", columns=DISEASES)
    for disease in DISEASES:  # stroke's codes are cerebrovascular codes: a stroke is also a CBVD case
        expected = simulated[disease] if disease != "CBVD" else (simulated["CBVD"] + simulated["Stroke"]).clip(0, 1)
        assert built[disease].to_list() == expected.to_list(), disease
    report = json.loads((out / "build_report.json").read_text())
    assert report["negative_codes_to_missing"] == {"50-2.0": 1, "20116-2.0": 2}
    assert report["subjects_complete"]["covariates"] == 2000 - 4 and report["cases"]["AD"] == simulated["AD"].sum()

    # every command reads the built cohort: subjects with a gap are left out, and the console says why
    cohort = load_cohort(out)
    assert cohort.eids.len() == 2000 - 5 and "dropped 2 with a missing IDP (idps.csv); 3 with a missing covariate" in \
        capsys.readouterr().out
    np.testing.assert_array_equal(cohort.genotypes.read(slice(0, 40), slice(0, 30), dtype=np.int8),
                                  load_cohort(mini_cohort).genotypes.read(slice(0, 40), slice(0, 30), dtype=np.int8))


def _refused(capsys, tmp_path, args, *needles):
    out = tmp_path / "refused"
    assert main(["cohort", "build", *map(str, args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    assert not out.exists() and not list(tmp_path.glob(".refused*"))


def test_bad_showcase_map_or_genotypes_get_one_line(mini_cohort, tmp_path, capsys):
    showcase = tmp_path / "showcase.csv"
    write_showcase(mini_cohort, showcase)
    base = ["--genotypes", mini_cohort / "genotypes", "--catalog", mini_cohort / "gwas_catalog.tsv"]
    _refused(capsys, tmp_path, ["--showcase", showcase, *base, "--instance", "3"], "no column 25782-3.0",
             "idps.Volume_of_grey_matter_in_Left_Frontal_Pole")
    wide = pl.read_csv(showcase, infer_schema=False)
    wide.drop("21001-2.0").write_csv(tmp_path / "no_bmi.csv")
    _refused(capsys, tmp_path, ["--showcase", tmp_path / "no_bmi.csv", *base], "no column 21001-2.0", "covariates.bmi")
    (tmp_path / "map.yaml").write_text(yaml.safe_dump({"diagnoses": {"field": "41270-0", "codes": {
        **{d: ["F20"] for d in DISEASES}, "AD": ["G30", "Alzheimer"]}}}))
    _refused(capsys, tmp_path, ["--showcase", showcase, *base, "--map", tmp_path / "map.yaml"],
             "diagnoses.codes.AD", "'Alzheimer' is not an ICD-10 code")
    fam = (mini_cohort / "genotypes.fam").read_text().splitlines()
    for suffix in ("bed", "bim"):
        (tmp_path / f"other.{suffix}").symlink_to(mini_cohort / f"genotypes.{suffix}")
    (tmp_path / "other.fam").write_text("".join(f"x{i} x{i} 0 0 0 -9\n" for i in range(len(fam))))
    _refused(capsys, tmp_path, ["--showcase", showcase, "--genotypes", tmp_path / "other",
                                "--catalog", mini_cohort / "gwas_catalog.tsv"],
             "none of its 2,000 samples", "'x0'", "must be the showcase's eids")
    wide.with_columns(pl.when(pl.int_range(pl.len()) == 6).then(pl.lit("tall")).otherwise(pl.col("50-2.0"))
                      .alias("50-2.0")).write_csv(tmp_path / "text.csv")
    _refused(capsys, tmp_path, ["--showcase", tmp_path / "text.csv", *base], "line 8, column 50-2.0",
             "'tall' is not a number")


def test_the_default_map_names_every_cohort_column_once():
    mapping = load_map()
    assert list(mapping.idps) == IDPS and list(mapping.covariates) == COVARIATES
    fields = [int(c.split("-")[0]) for c in mapping.idps.values()]
    assert sorted(fields) == list(range(25011, 25026)) + list(range(25782, 25921))  # FIRST 15, FAST 139, each once
    assert fields[:96] == list(range(25782, 25878))  # cortical pairs in the showcase's order
    cerebellum = {"Left_I_IV": 25893, "Right_V": 25896, "Left_VI": 25897, "Vermis_VI": 25898, "Right_VI": 25899,
                  "Vermis_X": 25919, "Right_X": 25920}  # the atlas's label order: vermis between left and right
    for region, field in cerebellum.items():
        assert mapping.idps[f"Volume_of_grey_matter_in_{region}_Cerebellum"] == f"{field}-2.0", region
    assert mapping.covariates["PC40"] == "22009-0.40" and mapping.covariates["age"] == "21003-2.0"
    assert load_map(instance=3).covariates["age"] == "21003-3.0" and set(mapping.codes) == set(DISEASES)
