"""The shipped map from GWAS Catalog trait names (and EFO URIs) to the cohort's diagnosis columns."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import polars as pl

from comical.data_io.errors import InputError

_REQUIRED = ("disease", "trait", "efo_uri")


def load_trait_map(path: str | Path | None = None) -> pl.DataFrame:
    """Columns `disease` (a diagnoses.csv column), `trait` (Catalog DISEASE/TRAIT text), `efo_uri`.

    With no `path`, the shipped table; a user's `--trait-map FILE` has the same three columns.
    """
    source = Path(path) if path is not None else files("comical.data_io") / "resources" / "trait_map.csv"
    try:
        table = pl.read_csv(source.read_bytes(), infer_schema=False)
    except FileNotFoundError:
        raise InputError(f"{source}: trait map not found") from None
    missing = [c for c in _REQUIRED if c not in table.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {missing}; expected {list(_REQUIRED)}")
    return table.select(_REQUIRED)
