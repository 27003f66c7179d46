"""A cohort directory (docs/cohort.md): every file checked, samples aligned by eid across genotypes and tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.catalog import read_gwas_catalog
from comical.data_io.errors import InputError
from comical.data_io.plink import Genotypes, open_genotypes, with_ext
from comical.data_io.tables import read_table
from comical.data_io.ukb_fields import COVARIATES, DISEASES, EPRS_DISEASES, IDPS

TABLE_FILES = ["idps.csv", "covariates.csv", "diagnoses.csv", "gwas_catalog.tsv"]
# one genotype fileset, in this order of preference: PLINK 1, plink2, BGEN (with its .sample)
GENOTYPE_FILESETS = (["genotypes.bed", "genotypes.bim", "genotypes.fam"], ["genotypes.pgen", "genotypes.pvar",
                     "genotypes.psam"], ["genotypes.bgen", "genotypes.sample"])


@dataclasses.dataclass
class Cohort:
    """The checked cohort. `sample_index[i]` is the bed row of analysis sample i; every table's row i is
    that same sample (`eid` column equal to `genotypes.samples["iid"][sample_index[i]]`)."""

    path: Path
    genotypes: Genotypes
    sample_index: np.ndarray
    idps: pl.DataFrame
    covariates: pl.DataFrame
    diagnoses: pl.DataFrame
    eprs: pl.DataFrame | None  # None without eprs.csv; a subject it lacks has nulls
    catalog: pl.DataFrame
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)  # why subjects were left out: how many

    @property
    def dropped_line(self) -> str:
        """`N subjects used; dropped ...` when any subject was left out, else ''."""
        if not self.dropped:
            return ""
        why = "; ".join(f"{n:,} {reason}" for reason, n in self.dropped.items())
        return f"cohort: {self.eids.len():,} subjects used; dropped {why}"

    @property
    def eids(self) -> pl.Series:
        return self.idps["eid"]


_WHAT = {"idps": "IDP", "covariates": "covariate", "diagnoses": "diagnosis"}
ALL_TABLES = tuple(_WHAT)


def load_cohort(path: str | Path, needs: tuple[str, ...] = ALL_TABLES, keep: list[str] | None = None) -> Cohort:
    """Check every file of the cohort directory and align its samples; fail with one clear InputError.

    Analysis samples are those present in the genotypes and in every table, in .fam order, with no missing value
    in the tables a step `needs` (missing values elsewhere stay null). Why the others were left out is counted in
    `dropped` and printed in one line; it is an error if no sample is left. `keep` (plink2's --keep) narrows the
    samples to those it lists.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"--cohort {path}: not a folder")
    absent = [f for f in TABLE_FILES if not (path / f).is_file()]
    fileset = next((files for files in GENOTYPE_FILESETS if (path / files[0]).is_file()), GENOTYPE_FILESETS[0])
    absent += [f for f in fileset if not (path / f).is_file()]
    if absent:
        raise InputError(f"--cohort {path}: missing file(s) {absent}; a cohort folder holds {TABLE_FILES} and "
                         "genotypes as genotypes.bed/.bim/.fam, .pgen/.pvar/.psam or .bgen with .sample")
    genotypes = genotype_files(path)[0]
    tables = {
        "idps": read_table(path / "idps.csv", columns=IDPS, allow_missing=True),
        "covariates": read_table(path / "covariates.csv", columns=COVARIATES, allow_missing=True),
        "diagnoses": read_table(path / "diagnoses.csv", columns=DISEASES, binary=True, allow_missing=True),
    }
    eprs = read_table(path / "eprs.csv", columns=EPRS_DISEASES, allow_missing=True) \
        if (path / "eprs.csv").is_file() else None
    catalog = read_gwas_catalog(path / "gwas_catalog.tsv")
    iid = genotypes.samples["iid"]
    shared = np.ones(iid.len(), bool)
    for name, table in tables.items():
        in_table = iid.is_in(table["eid"].implode()).to_numpy()
        if not in_table.any():
            raise InputError(f"--cohort {path}: no samples shared between genotypes.fam and {name}.csv "
                             f"(fam IIDs like {iid[0]!r}, {name}.csv eids like {table['eid'][0]!r})")
        shared &= in_table
    if not shared.any():
        raise InputError(f"--cohort {path}: no sample is in genotypes.fam and in all of {list(tables)}")
    dropped = {}
    if (~shared).sum():
        dropped["genotyped but not in every table"] = int((~shared).sum())
    if keep is not None:
        listed = iid.is_in(pl.Series(keep).implode()).to_numpy()
        if (shared & ~listed).any():
            dropped["not in --keep"] = int((shared & ~listed).sum())
        shared &= listed
    for name in needs:  # in this order, each subject counted once: under the first table it misses a value in
        complete = tables[name].filter(pl.all_horizontal(pl.exclude("eid").is_not_null()))["eid"]
        has = iid.is_in(complete.implode()).to_numpy()
        if (shared & ~has).any():
            dropped[f"with a missing {_WHAT[name]} ({name}.csv)"] = int((shared & ~has).sum())
        shared &= has
    if not shared.any():
        raise InputError(f"--cohort {path}: no sample has every value this step needs ({', '.join(needs)}): "
                         f"{'; '.join(f'{n} {r}' for r, n in dropped.items())}")
    sample_index = np.flatnonzero(shared)
    order = pl.DataFrame({"eid": iid.gather(sample_index)})
    aligned = {name: order.join(t, on="eid", how="left", maintain_order="left") for name, t in tables.items()}
    if eprs is not None:  # never narrows the samples: only riskscore reads it
        eprs = order.join(eprs, on="eid", how="left", maintain_order="left")
    cohort = Cohort(path, genotypes, sample_index, catalog=catalog, eprs=eprs, dropped=dropped, **aligned)
    if cohort.dropped_line:
        print(cohort.dropped_line)
    return cohort


def genotype_files(path: Path) -> tuple[Genotypes, list[Path]]:
    """The cohort folder's genotypes, opened, and their files (GENOTYPE_FILESETS' first present)."""
    from comical.data_io.dosages import open_bgen, open_pgen

    path = Path(path)
    for files, opener in zip(GENOTYPE_FILESETS, (open_genotypes, open_pgen,
                                                 lambda prefix: open_bgen(with_ext(prefix, ".bgen"),
                                                                          with_ext(prefix, ".sample")))):
        if (path / files[0]).is_file():
            return opener(path / "genotypes"), [path / f for f in files]
    raise InputError(f"--cohort {path}: no genotypes.bed, genotypes.pgen or genotypes.bgen")
