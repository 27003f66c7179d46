"""Bad input: one clear line naming the file and the place, exit status 2, nothing left in --out."""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest

from comical.cli import main


def _run_qc(cohort, out, capsys, *extra):
    status = main(["qc", "--cohort", str(cohort), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    return status, err


def _expect_refusal(cohort, tmp_path, capsys, *needles):
    out = tmp_path / "qc_out"
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in cohort.rglob("*") if p.is_file()}
    status, err = _run_qc(cohort, out, capsys)
    assert status == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists() and not list(tmp_path.glob(".qc_out*")), "partial outputs left behind"
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in cohort.rglob("*") if p.is_file()}
    assert after == before, "the user's input was modified"
    return err


def test_bed_with_wrong_magic_bytes(cohort_copy, tmp_path, capsys):
    bed = cohort_copy / "genotypes.bed"
    data = bytearray(bed.read_bytes())
    data[:3] = b"\x00\x00\x00"
    bed.write_bytes(bytes(data))
    _expect_refusal(cohort_copy, tmp_path, capsys, "genotypes.bed", "6c1b01")


def test_truncated_bed(cohort_copy, tmp_path, capsys):
    bed = cohort_copy / "genotypes.bed"
    bed.write_bytes(bed.read_bytes()[:-1000])
    _expect_refusal(cohort_copy, tmp_path, capsys, "genotypes.bed", "truncated")


@pytest.mark.parametrize("suffix,drop,expected", [(".bim", 1, "2999 variants"), (".fam", 4, "1996 samples"),
                                                 (".fam", 1, "beyond the 1999 samples")])
def test_bim_or_fam_rows_disagree_with_bed(cohort_copy, tmp_path, capsys, suffix, drop, expected):
    path = (cohort_copy / "genotypes").with_suffix(suffix)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-drop]))
    _expect_refusal(cohort_copy, tmp_path, capsys, "genotypes.bed", expected)


def test_non_numeric_value_names_line_and_column(cohort_copy, tmp_path, capsys):
    idps = pl.read_csv(cohort_copy / "idps.csv", infer_schema=False)
    column = "Volume_of_grey_matter_in_Left_Amygdala"
    idps = idps.with_columns(pl.when(pl.int_range(pl.len()) == 15).then(pl.lit("abc")).otherwise(pl.col(column))
                             .alias(column))
    idps.write_csv(cohort_copy / "idps.csv")
    err = _expect_refusal(cohort_copy, tmp_path, capsys, "idps.csv line 17", column, "'abc' is not a number")
    assert err.startswith("comical qc: error:")


def test_missing_values_drop_the_subjects_a_step_cannot_use_and_say_so(cohort_copy, tmp_path, capsys):
    """Real tables have gaps: a subject missing a value a step needs is left out, counted by reason on the console
    and in the report; a table the step does not need may have gaps without costing a subject."""
    from comical.data_io.cohort import load_cohort

    cov = pl.read_csv(cohort_copy / "covariates.csv", infer_schema=False)
    cov = cov.with_columns(pl.when(pl.int_range(pl.len()).is_in([4, 9])).then(None).otherwise(pl.col("bmi"))
                           .alias("bmi"))
    cov.write_csv(cohort_copy / "covariates.csv")
    idps = pl.read_csv(cohort_copy / "idps.csv", infer_schema=False)
    column = idps.columns[7]
    idps.with_columns(pl.when(pl.int_range(pl.len()).is_in([4, 20, 30])).then(pl.lit("NA")).otherwise(pl.col(column))
                      .alias(column)).write_csv(cohort_copy / "idps.csv")
    missing = {cov["eid"][i] for i in (4, 9, 20, 30)}
    out = tmp_path / "qc"
    assert main(["qc", "--cohort", str(cohort_copy), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("cohort: 1,996 subjects used; dropped 3 with a missing IDP (idps.csv); 1 with a missing covariate "
            "(covariates.csv)") in printed
    report = json.loads((out / "qc_report.json").read_text())["samples"]
    assert report["input"] == 1996 and sum(report["left_out_before_qc"].values()) == 4
    kept = pl.read_csv(out / "sample_qc.tsv", separator="\t", infer_schema=False)["eid"]
    assert kept.len() == 1996 and not set(kept) & missing
    # a step that needs only the IDPs keeps the subjects whose gaps are in the covariates, with nulls there
    cohort = load_cohort(cohort_copy, needs=("idps",))
    assert cohort.eids.len() == 1997 and cohort.covariates["bmi"].null_count() == 1
    assert cohort.dropped == {"with a missing IDP (idps.csv)": 3}


def test_duplicate_eids(cohort_copy, tmp_path, capsys):
    path = cohort_copy / "diagnoses.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + [lines[3]]))
    _expect_refusal(cohort_copy, tmp_path, capsys, "diagnoses.csv", "appears more than once", "lines 4 and 2002")


def test_diagnosis_that_is_not_zero_or_one(cohort_copy, tmp_path, capsys):
    diag = pl.read_csv(cohort_copy / "diagnoses.csv")
    diag.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(2).otherwise(pl.col("MS")).alias("MS")).write_csv(
        cohort_copy / "diagnoses.csv")
    _expect_refusal(cohort_copy, tmp_path, capsys, "diagnoses.csv line 2, column MS", "expected 0 or 1")


def test_missing_file(cohort_copy, tmp_path, capsys):
    (cohort_copy / "covariates.csv").unlink()
    _expect_refusal(cohort_copy, tmp_path, capsys, "missing file(s) ['covariates.csv']")


def test_eprs_is_needed_by_riskscore_only(cohort_copy, trained_run, tmp_path, capsys):
    """Without eprs.csv every command reads the cohort (QC here); riskscore refuses in one line before computing,
    and with eprs.csv lacking a subject it names that subject."""
    eprs = pl.read_csv(cohort_copy / "eprs.csv")
    (cohort_copy / "eprs.csv").unlink()
    status, _ = _run_qc(cohort_copy, tmp_path / "qc", capsys)
    assert status == 0
    args = ["riskscore", "--run", str(trained_run), "--cohort", str(cohort_copy), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no eprs.csv; riskscore regresses" in err
    eprs.head(10).write_csv(cohort_copy / "eprs.csv")  # rows for ten subjects only
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "eprs.csv: no ePRS for" in err and "(first: eid " in err and not (tmp_path / "r").exists()


def test_no_samples_shared_between_genotypes_and_tables(cohort_copy, tmp_path, capsys):
    idps = pl.read_csv(cohort_copy / "idps.csv")
    idps.with_columns(pl.col("eid") + 9_000_000).write_csv(cohort_copy / "idps.csv")
    _expect_refusal(cohort_copy, tmp_path, capsys, "no samples shared between genotypes.fam and idps.csv")


def test_catalog_without_required_columns(cohort_copy, tmp_path, capsys):
    path = cohort_copy / "gwas_catalog.tsv"
    catalog = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    catalog.drop("SNPS", "P-VALUE").write_csv(path, separator="\t", quote_style="never")
    _expect_refusal(cohort_copy, tmp_path, capsys, "gwas_catalog.tsv", "['SNPS', 'P-VALUE']")


def test_catalog_with_a_bad_p_value(cohort_copy, tmp_path, capsys):
    path = cohort_copy / "gwas_catalog.tsv"
    lines = path.read_text().splitlines(keepends=True)
    fields = lines[5].split("\t")
    fields[27] = "NR"
    lines[5] = "\t".join(fields)
    path.write_text("".join(lines))
    _expect_refusal(cohort_copy, tmp_path, capsys, "gwas_catalog.tsv line 6, column P-VALUE", "'NR'")


def test_out_holding_a_different_run_needs_force(mini_cohort, tmp_path, capsys):
    out = tmp_path / "qc"
    assert main(["qc", "--cohort", str(mini_cohort), "--out", str(out), "--maf", "0.05"]) == 0
    first = (out / "variant_qc.tsv").read_bytes()
    status, err = _run_qc(mini_cohort, out, capsys, "--maf", "0.2")
    assert status == 2 and "holds a different run" in err and "--force" in err
    assert (out / "variant_qc.tsv").read_bytes() == first  # untouched
    assert main(["qc", "--cohort", str(mini_cohort), "--out", str(out), "--maf", "0.2", "--force"]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["maf"] == 0.2
    assert not list(tmp_path.glob(".qc.*")), "staging folders left behind"


def test_out_that_we_did_not_write_is_never_touched(mini_cohort, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    status, err = _run_qc(mini_cohort, out, capsys, "--force")
    assert status == 2 and "not written by comical" in err
    assert (out / "notes.txt").read_text() == "precious"


def test_out_inside_the_cohort_is_refused(cohort_copy, capsys):
    status, err = _run_qc(cohort_copy, cohort_copy / "qc", capsys)
    assert status == 2 and "overlaps the input" in err
    assert not (cohort_copy / "qc").exists()


def test_config_with_unknown_key_or_bad_yaml(mini_cohort, tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("maf: 0.05\nmax_af: 0.4\n")
    status, err = _run_qc(mini_cohort, tmp_path / "o", capsys, "--config", str(tmp_path / "bad.yaml"))
    assert status == 2 and "unknown key(s) ['max_af']" in err
    (tmp_path / "broken.yaml").write_text("maf: [0.05\n")
    status, err = _run_qc(mini_cohort, tmp_path / "o", capsys, "--config", str(tmp_path / "broken.yaml"))
    assert status == 2 and "not valid YAML" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("value", ["0", "-1", "101"])
def test_pairs_top_n_perc_out_of_range(mini_cohort, tmp_path, capsys, value):
    out = tmp_path / "pairs"
    assert main(["pairs", "--cohort", str(mini_cohort), "--top-n-perc", value, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"comical pairs: error: --top-n-perc {float(value)}: expected a percentage in (0, 100]"
    assert not out.exists()


def test_pairs_warns_about_a_disease_left_without_snps(mini_cohort, mini_pairs, tmp_path, capsys):
    from comical.data_io.traits import load_trait_map

    load_trait_map().filter(pl.col("disease") != "MD").write_csv(tmp_path / "traits.csv")
    out = tmp_path / "pairs"
    assert main(["pairs", "--cohort", str(mini_cohort), "--top-n-perc", "5", "--out", str(out), "--trait-map",
                 str(tmp_path / "traits.csv"), "--qc", str(mini_pairs / "qc"), "--phewas",
                 str(mini_pairs / "phewas")]) == 0
    err = capsys.readouterr().err
    assert "warning: no catalog SNP of MD" in err
    report = json.loads((out / "pairs_report.json").read_text())
    assert report["diseases_without_snps"] == ["MD"] and report["rows_by_status"]["trait_not_mapped"] > 0
    assert "MD" not in json.loads((out / "manifest.json").read_text())["buckets"]


def test_pairs_with_no_significant_idp_is_an_error(mini_cohort, mini_pairs, tmp_path, capsys):
    phewas = tmp_path / "phewas"
    phewas.mkdir()
    (phewas / "idp_disease_map.tsv").write_text("idp\tdisease\tbeta\tp\tp_adjusted\tsignificant\n")
    out = tmp_path / "pairs"
    status = main(["pairs", "--cohort", str(mini_cohort), "--out", str(out), "--qc", str(mini_pairs / "qc"),
                   "--phewas", str(phewas)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "no IDP is significant for any disease" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".pairs*"))


def test_pairs_refuses_a_non_store_qc_folder(mini_cohort, tmp_path, capsys):
    (tmp_path / "notqc").mkdir()
    status = main(["pairs", "--cohort", str(mini_cohort), "--out", str(tmp_path / "p"), "--qc",
                   str(tmp_path / "notqc")])
    assert status == 2 and "not a QC output folder" in capsys.readouterr().err


def test_train_config_with_a_mistyped_value_fails_before_ray(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("epochs: five\n")
    status = main(["train", "--pairs", str(tmp_path), "--out", str(tmp_path / "o"), "--config",
                   str(tmp_path / "run.yaml")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.endswith("run.yaml: key epochs: expected an integer, got 'five'"), err
    assert not (tmp_path / "o").exists()


def test_config_values_are_checked_against_their_types(tmp_path):
    from comical.data_io.errors import InputError
    from comical.distributed.config import TrainConfig

    (tmp_path / "lr.yaml").write_text("optim:\n  learning_rate: 1e-4\n  betas: [0.9, 0.99]\n  grad_clip: 1\n")
    optim = TrainConfig.from_yaml(tmp_path / "lr.yaml").optim  # YAML 1.1 reads 1e-4 as a string
    assert optim.learning_rate == 1e-4 and isinstance(optim.learning_rate, float)
    assert optim.betas == (0.9, 0.99) and isinstance(optim.grad_clip, float)
    (tmp_path / "fast.yaml").write_text("optim:\n  learning_rate: fast\n")
    with pytest.raises(InputError, match=r"fast.yaml: key optim.learning_rate: expected a number, got 'fast'$"):
        TrainConfig.from_yaml(tmp_path / "fast.yaml")
    for bad, needle in [({"epochs": True}, "key epochs: expected an integer, got True"),
                        ({"engine": {"use_gpu": "yes"}}, "key engine.use_gpu: expected true or false, got 'yes'"),
                        ({"optim": {"betas": [0.9]}}, "key optim.betas: expected a list of 2 numbers, got [0.9]"),
                        ({"model": 64}, "key model: expected a mapping of model keys, got 64"),
                        ({"model": {"targets": 1}}, "key model.targets: expected a string, got 1")]:
        with pytest.raises(InputError) as err:
            TrainConfig.from_dict(bad, source="run.yaml")
        assert str(err.value) == f"run.yaml: {needle}"


def test_qc_config_with_a_mistyped_value(mini_cohort, tmp_path, capsys):
    (tmp_path / "qc.yaml").write_text("maf: high\n")
    status, err = _run_qc(mini_cohort, tmp_path / "o", capsys, "--config", str(tmp_path / "qc.yaml"))
    assert status == 2 and len(err.splitlines()) == 1, err
    assert "qc.yaml: key maf: expected a number, got 'high'" in err
    assert not (tmp_path / "o").exists()
