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

    @property
    def eids(self) -> pl.Series:
        return self.idps["eid"]


def load_cohort(path: str | Path) -> Cohort:
    """Check every file of the cohort directory and align its samples; fail with one clear InputError.

    Analysis samples are those present in the genotypes and in every table, in .fam order; it is an
    error if there are none.
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
        "idps": read_table(path / "idps.csv", columns=IDPS),
        "covariates": read_table(path / "covariates.csv", columns=COVARIATES),
        "diagnoses": read_table(path / "diagnoses.csv", columns=DISEASES, binary=True),
    }
    eprs = read_table(path / "eprs.csv", columns=EPRS_DISEASES) if (path / "eprs.csv").is_file() else None
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
    sample_index = np.flatnonzero(shared)
    order = pl.DataFrame({"eid": iid.gather(sample_index)})
    aligned = {name: order.join(t, on="eid", how="left", maintain_order="left") for name, t in tables.items()}
    if eprs is not None:  # never narrows the samples: only riskscore reads it
        eprs = order.join(eprs, on="eid", how="left", maintain_order="left")
    return Cohort(path, genotypes, sample_index, catalog=catalog, eprs=eprs, **aligned)


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
