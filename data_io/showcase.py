"""UK Biobank showcase tables into the cohort's tables (`comical cohort build`, docs/own-data.md).

A showcase export has one row per participant (`eid`) and one column per FIELD-INSTANCE.ARRAY (`25782-2.0`). A map
(resources/showcase_map.yaml by default) says which column fills which cohort column. Only the mapped columns are
read, lazily: a real showcase is gigabytes wide. Values below 0 are UK Biobank's "do not know"/"prefer not to
answer" codes and become missing, except in fields the map calls signed (genetic PCs).
"""

from __future__ import annotations

import dataclasses
import gzip
import re
from importlib import resources
from pathlib import Path

import polars as pl
import yaml

from comical.data_io.errors import InputError
from comical.data_io.ukb_fields import COVARIATES, DISEASES, IDPS

_COLUMN = re.compile(r"^\d+-\d+\.\d+$")  # FIELD-INSTANCE.ARRAY
_ICD10 = re.compile(r"^[A-Z]\d{2}(\.?[0-9A-Z]{1,2})?$")  # a chapter letter, a 2-digit category, an optional subcode
SECTIONS = ("instance", "idps", "covariates", "signed", "diagnoses")


@dataclasses.dataclass(frozen=True)
class ShowcaseMap:
    """Checked map: cohort column -> showcase column, per table; the diagnosis field's array prefix and code lists."""

    source: str
    instance: int
    idps: dict[str, str]
    covariates: dict[str, str]
    signed: frozenset[str]  # field numbers whose negative values are values
    diagnosis_prefix: str  # e.g. "41270-0.": every array column of the field at that instance
    codes: dict[str, tuple[str, ...]]  # disease -> ICD-10 prefixes without dots


def default_map_path() -> Path:
    return Path(str(resources.files("comical.data_io.resources").joinpath("showcase_map.yaml")))


def load_map(path: Path | None = None, *, instance: int | None = None) -> ShowcaseMap:
    """The default map, with each section the user's file names replacing the default's; every entry checked."""
    raw = yaml.safe_load(default_map_path().read_text())
    source = "the default map"
    if path is not None:
        if not Path(path).is_file():
            raise InputError(f"--map {path}: file not found")
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise InputError(f"--map {path}: not YAML ({str(err).splitlines()[0]})") from None
        unknown = set(user) - set(SECTIONS) if isinstance(user, dict) else {"(not a mapping)"}
        if unknown:
            raise InputError(f"--map {path}: unknown section(s) {sorted(unknown)}; expected some of {list(SECTIONS)}")
        signed = set(raw.get("signed") or []) | set(user.get("signed") or [])  # a user's map never unsigns the PCs
        raw |= user | {"signed": sorted(signed)}
        source = str(path)
    visit = int(raw["instance"] if instance is None else instance)

    def columns(section: str, expected: list[str]) -> dict[str, str]:
        entries = raw.get(section) or {}
        absent = [c for c in expected if c not in entries]
        extra = [c for c in entries if c not in expected]
        if absent or extra:
            raise InputError(f"{source}: section {section}: " + (f"no entry for {absent[:3]}" if absent else
                             f"unknown column(s) {extra[:3]}") + f"; it maps each of the cohort's {len(expected)} "
                             f"{section} columns (docs/cohort.md)")
        out = {}
        for column in expected:
            spec = str(entries[column]).strip()
            if spec.isdigit():
                spec = f"{spec}-{visit}.0"
            if not _COLUMN.match(spec):
                raise InputError(f"{source}: {section}.{column}: {entries[column]!r}; expected a field number (21003) "
                                 "or a showcase column (21003-2.0)")
            out[column] = spec
        return out

    diagnoses = raw.get("diagnoses") or {}
    field = str(diagnoses.get("field", "")).strip()
    if not re.match(r"^\d+-\d+$", field):
        raise InputError(f"{source}: diagnoses.field: {field!r}; expected FIELD-INSTANCE such as 41270-0")
    codes = diagnoses.get("codes") or {}
    absent = [d for d in DISEASES if d not in codes]
    if absent:
        raise InputError(f"{source}: diagnoses.codes: no code list for {absent}; every disease of the cohort needs one")
    checked = {}
    for disease in DISEASES:
        for code in codes[disease] or []:
            if not _ICD10.match(str(code).strip().upper()):
                raise InputError(f"{source}: diagnoses.codes.{disease}: {code!r} is not an ICD-10 code (expected a "
                                 "letter and two digits, optionally a subcode: G30, G30.1, G301)")
        checked[disease] = tuple(str(c).strip().upper().replace(".", "") for c in codes[disease] or [])
        if not checked[disease]:
            raise InputError(f"{source}: diagnoses.codes.{disease}: an empty code list")
    return ShowcaseMap(source, visit, columns("idps", IDPS), columns("covariates", COVARIATES),
                       frozenset(str(f) for f in raw.get("signed") or []), f"{field}.", checked)


def read_showcase(path: Path, mapping: ShowcaseMap) -> tuple[dict[str, pl.DataFrame], dict]:
    """The cohort's idps, covariates and diagnoses tables (eid + columns, nulls where missing), and a report of
    what became missing and why. Fails with one line, before reading the body, on a column the map names that the
    file lacks."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--showcase {path}: file not found")
    zipped = path.suffix == ".gz"
    try:
        with (gzip.open(path, "rt") if zipped else path.open()) as f:
            header = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--showcase {path}: not a readable text table ({err})") from None
    separator = "\t" if "\t" in header else ","
    names = [n.strip().strip('"') for n in header.split(separator)]
    if "eid" not in names:
        raise InputError(f"--showcase {path}: no `eid` column; header starts {names[:4]}")
    for table, columns in (("idps", mapping.idps), ("covariates", mapping.covariates)):
        for column, spec in columns.items():
            if spec not in names:
                raise InputError(f"--showcase {path}: no column {spec} ({table}.{column} in {mapping.source}); "
                                 f"choose another instance with --instance or map the field with --map")
    diagnosis_columns = [n for n in names if n.startswith(mapping.diagnosis_prefix)]
    if not diagnosis_columns:
        raise InputError(f"--showcase {path}: no {mapping.diagnosis_prefix}* column (diagnoses.field in "
                         f"{mapping.source}); a showcase export names its array columns FIELD-INSTANCE.ARRAY")
    wanted = ["eid", *dict.fromkeys([*mapping.idps.values(), *mapping.covariates.values()]), *diagnosis_columns]
    try:
        raw = (pl.read_csv(path, separator=separator, infer_schema=False, columns=wanted) if zipped  # not lazily
               else pl.scan_csv(path, separator=separator, infer_schema=False).select(wanted).collect())
    except pl.exceptions.PolarsError as err:
        raise InputError(f"--showcase {path}: not a readable table ({str(err).splitlines()[0]})") from None
    eid = raw["eid"].str.strip_chars()
    if (eid.is_null() | (eid == "")).any() or eid.is_duplicated().any():
        row = int((eid.is_null() | (eid == "") | eid.is_duplicated()).arg_true()[0])
        raise InputError(f"--showcase {path} line {row + 2}: eid {eid[row]!r} is empty or appears twice")
    report = {"subjects": raw.height, "negative_codes_to_missing": {}, "missing": {}}
    tables = {}
    for table, columns in (("idps", mapping.idps), ("covariates", mapping.covariates)):
        values = {}
        for column, spec in columns.items():
            text = raw[spec].str.strip_chars()
            number = text.cast(pl.Float64, strict=False)
            blank = text.is_null() | text.is_in(["", "NA", "nan", "NaN"])
            bad = number.is_null() & ~blank
            if bad.any():
                row = int(bad.arg_true()[0])
                raise InputError(f"--showcase {path} line {row + 2}, column {spec} ({table}.{column}): "
                                 f"{text[row]!r} is not a number")
            if spec.split("-")[0] not in mapping.signed:
                negative = (number < 0).fill_null(False)
                if negative.any():
                    report["negative_codes_to_missing"][spec] = int(negative.sum())
                number = pl.select(pl.when(~negative).then(number)).to_series()
            values[column] = number.fill_nan(None)
            if values[column].null_count():
                report["missing"][f"{table}.{column}"] = values[column].null_count()
        tables[table] = pl.DataFrame({"eid": eid, **values})
    codes = raw.select(pl.col(diagnosis_columns).str.strip_chars().str.to_uppercase().str.replace_all(r"\.", ""))
    tables["diagnoses"] = pl.DataFrame({"eid": eid, **{
        disease: codes.select(pl.any_horizontal(pl.col(c).str.starts_with(p) for c in diagnosis_columns
                                                for p in prefixes).fill_null(False)).to_series().cast(pl.Float64)
        for disease, prefixes in mapping.codes.items()}})
    report["cases"] = {d: int(tables["diagnoses"][d].sum()) for d in DISEASES}
    return tables, report
