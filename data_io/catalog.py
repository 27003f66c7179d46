"""The GWAS Catalog association download (TSV, v1.0.2 layout): read, check required columns, parse p-values."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from comical.data_io.errors import InputError

REQUIRED_COLUMNS = ["DISEASE/TRAIT", "CHR_ID", "CHR_POS", "STRONGEST SNP-RISK ALLELE", "SNPS", "P-VALUE",
                    "OR or BETA"]


def read_gwas_catalog(path: str | Path) -> pl.DataFrame:
    """The catalog's rows with every column as text, plus `p_value` (Float64) parsed from `P-VALUE`.

    The Catalog writes p-values like `2E-8`; a row whose P-VALUE is not a number is an error naming its line.
    Extra columns (the download has 38) are kept as they are.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        table = pl.read_csv(path, separator="\t", infer_schema=False, quote_char=None)
    except pl.exceptions.ComputeError as err:
        raise InputError(f"{path}: not a readable tab-separated GWAS Catalog download ({err})".replace("\n", " ")) from None
    absent = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if absent:
        raise InputError(f"{path}: missing GWAS Catalog column(s) {absent}; expected the association download "
                         f"layout with at least {REQUIRED_COLUMNS}")
    p = table["P-VALUE"].str.strip_chars().cast(pl.Float64, strict=False)
    bad = p.is_null() | (p < 0) | (p > 1)
    if bad.any():
        row = int(bad.arg_true()[0])
        raise InputError(f"{path} line {row + 2}, column P-VALUE: {table['P-VALUE'][row]!r}; expected a p-value like 2E-8")
    return table.with_columns(p.alias("p_value"))
