"""Sample tables keyed by eid: CSV, TSV, Parquet, and plink2-style `#FID IID` phenotype/covariate files.

Every table comes back as a polars DataFrame whose first column is `eid` (String: the IID of the
genotypes) followed by Float64 value columns, checked cell by cell: a problem is reported with the file,
the line (or Parquet row) and the column.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from comical.data_io.errors import InputError

MISSING_TOKENS = ("", "NA", "nan", "NaN")
_PLINK_MISSING = "-9"  # plink2's default missing phenotype/covariate value


def read_table(path: str | Path, *, columns: list[str] | None = None, allow_missing: bool = False,
               binary: bool = False) -> pl.DataFrame:
    """Read an eid-keyed table; return `eid` + the numeric `columns` (all non-eid columns if None).

    plink2-style files (header starting `#FID IID`, `FID IID` or `#IID`, whitespace-separated) take their
    eid from IID and treat `NA` and `-9` as missing. With `allow_missing=False` a missing value is an
    error; otherwise it becomes null. `binary=True` requires every value to be 0 or 1.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    raw, plink_style = _read_raw(path)
    if "eid" not in raw.columns:
        raise InputError(f"{path}: no `eid` column (nor a plink2 `#FID IID` header); header is {raw.columns[:6]}")
    wanted = [c for c in raw.columns if c != "eid"] if columns is None else columns
    absent = [c for c in wanted if c not in raw.columns]
    if absent:
        raise InputError(f"{path}: missing column(s) {absent[:5]}{' ...' if len(absent) > 5 else ''}")
    table = raw.select("eid", *wanted)
    eid = table["eid"].cast(pl.String).str.strip_chars()
    first_line = 1 if path.suffix != ".parquet" else 0  # text lines count the header; Parquet rows count from 1
    where = "line" if first_line else "row"
    if (eid.is_null() | (eid == "")).any():
        row = int((eid.is_null() | (eid == "")).arg_true()[0])
        raise InputError(f"{path} {where} {row + 1 + first_line}: empty eid")
    dup = eid.is_duplicated()
    if dup.any():
        rows = dup.arg_true()
        raise InputError(f"{path}: eid {eid[int(rows[0])]} appears more than once ({where}s "
                         f"{int(rows[0]) + 1 + first_line} and {int(rows[1]) + 1 + first_line})")
    values = {"eid": eid}
    missing_tokens = MISSING_TOKENS + ((_PLINK_MISSING,) if plink_style else ())
    for column in wanted:
        text = table[column].cast(pl.String).str.strip_chars()
        missing = text.is_null() | text.is_in(missing_tokens)
        number = text.cast(pl.Float64, strict=False)
        bad = number.is_null() & ~missing
        if bad.any():
            row = int(bad.arg_true()[0])
            raise InputError(f"{path} {where} {row + 1 + first_line}, column {column}: {text[row]!r} is not a number")
        if missing.any() and not allow_missing:
            row = int(missing.arg_true()[0])
            raise InputError(f"{path} {where} {row + 1 + first_line}, column {column}: missing value; expected a number")
        number = pl.when(missing).then(None).otherwise(number)
        number = pl.select(number).to_series()
        if binary:
            off = ~number.is_in([0.0, 1.0]) & number.is_not_null()
            if off.any():
                row = int(off.arg_true()[0])
                raise InputError(f"{path} {where} {row + 1 + first_line}, column {column}: {text[row]!r}; "
                                 "expected 0 or 1")
        values[column] = number
    return pl.DataFrame(values)


def _read_raw(path: Path) -> tuple[pl.DataFrame, bool]:
    """All cells as text (so bad cells can be reported, not silently nulled); whether it is plink2-style."""
    if path.suffix == ".parquet":
        try:
            return pl.read_parquet(path), False
        except Exception as err:  # pyarrow/polars raise several types for a corrupt file
            raise InputError(f"{path}: not a readable Parquet file ({err})".replace("\n", " ")) from None
    with path.open() as f:
        header = f.readline()
    first = header.split()[0] if header.split() else ""
    if first in ("#FID", "FID", "#IID"):
        lines = pl.read_csv(path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None,
                            infer_schema=False)
        fields = lines["line"].str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ")
        names = fields[0].to_list()
        counts = fields.list.len()
        bad = (counts != len(names)).arg_true()
        if bad.len():
            row = int(bad[0])
            raise InputError(f"{path} line {row + 1}: {counts[row]} fields; expected {len(names)} like the header")
        body = pl.DataFrame({n.lstrip("#"): fields.slice(1).list.get(i) for i, n in enumerate(names)})
        return body.rename({"IID": "eid"}).drop("FID", strict=False), True
    separator = "\t" if path.suffix in (".tsv", ".txt", ".tab") or "\t" in header else ","
    try:
        return pl.read_csv(path, separator=separator, infer_schema=False), False
    except pl.exceptions.ComputeError as err:
        raise InputError(f"{path}: not a readable {separator!r}-separated table ({err})".replace("\n", " ")) from None
