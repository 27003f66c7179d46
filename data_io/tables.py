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
    raw, plink_style = _read_raw(path, columns)
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
    missing_tokens = MISSING_TOKENS + ((_PLINK_MISSING,) if plink_style else ())
    # All columns checked in one parallel polars pass; the cell-by-cell search runs only to name a bad cell.
    text = table.select(pl.col(wanted).cast(pl.String).str.strip_chars())
    missing = text.select(pl.all().is_null() | pl.all().is_in(missing_tokens))
    numbers = text.select(pl.all().cast(pl.Float64, strict=False))
    bad = pl.DataFrame([numbers[c].is_null() & ~missing[c] for c in wanted])  # neither a number nor missing
    counts = pl.concat([bad.sum(), missing.sum()], how="vertical")
    for column in wanted:
        n_bad, n_missing = counts[column]
        if n_bad:
            row = int(bad[column].arg_true()[0])
            raise InputError(f"{path} {where} {row + 1 + first_line}, column {column}: "
                             f"{text[column][row]!r} is not a number")
        if n_missing and not allow_missing:
            row = int(missing[column].arg_true()[0])
            raise InputError(f"{path} {where} {row + 1 + first_line}, column {column}: missing value; expected a number")
    numbers = numbers.with_columns(pl.when(~missing[c]).then(pl.col(c)).alias(c) for c in wanted)
    if binary:
        off = numbers.select(~pl.all().is_in([0.0, 1.0]) & pl.all().is_not_null())
        for column in wanted:
            if off[column].any():
                row = int(off[column].arg_true()[0])
                raise InputError(f"{path} {where} {row + 1 + first_line}, column {column}: {text[column][row]!r}; "
                                 "expected 0 or 1")
    return pl.DataFrame({"eid": eid}).hstack(numbers)


def _read_raw(path: Path, columns: list[str] | None = None) -> tuple[pl.DataFrame, bool]:
    """Cells as text (so bad cells can be reported, not silently nulled); whether it is plink2-style.

    Holds at least `columns` and the eid (every column when None or when one is not in the header)."""
    if path.suffix == ".parquet":
        try:
            return pl.read_parquet(path), False
        except Exception as err:  # pyarrow/polars raise several types for a corrupt file
            raise InputError(f"{path}: not a readable Parquet file ({err})".replace("\n", " ")) from None
    with path.open() as f:
        header = f.readline()
    first = header.split()[0] if header.split() else ""
    if first in ("#FID", "FID", "#IID"):
        tabbed = _read_tab_separated(path, header, columns)
        if tabbed is not None:
            return tabbed, True
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


def _read_tab_separated(path: Path, header: str, columns: list[str] | None) -> pl.DataFrame | None:
    """The common plink2 file (tabs only, no empty field) read by polars' CSV reader, only the needed columns;
    None for anything else, which the line-by-line reader then reads and reports precisely."""
    names = header.rstrip("\r\n").split("\t")
    data = path.read_bytes()
    if len(names) < 2 or b" " in data:
        return None
    named = [n.lstrip("#") for n in names]
    keep = None if columns is None or not set(columns) <= set(named) else ["IID", *columns]
    try:
        table = pl.read_csv(data, separator="\t", has_header=False, skip_rows=1, new_columns=named,
                            columns=None if keep is None else [named.index(c) for c in keep],
                            infer_schema=False, quote_char=None)
    except pl.exceptions.ComputeError:  # a line with more fields than the header
        return None
    if table.null_count().sum_horizontal().item():  # a short line or an empty field
        return None
    return table.rename({"IID": "eid"}).drop("FID", strict=False)
