"""`comical cohort build`: a UK Biobank showcase export, genotypes and a GWAS Catalog download into a cohort folder.

The tables come from the showcase through the map (data_io/showcase.py), with missing values left missing: each
command later uses the subjects that have what it needs. The genotypes are linked, not copied (imputed BGEN is
hundreds of GB), under the names a cohort folder uses; the user's files are never written to.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl

from comical.data_io.catalog import read_gwas_catalog
from comical.data_io.errors import InputError
from comical.data_io.plink import with_ext
from comical.data_io.showcase import ShowcaseMap, read_showcase
from comical.pipelines.statgen.gwas import genotype_files


def genotype_fileset(genotypes: Path, sample: Path | None) -> tuple[object, dict[str, Path]]:
    """The user's genotypes opened and checked, and their files by the cohort folder's names: a .bgen (with its
    .sample), or a prefix of a .pgen/.pvar/.psam or .bed/.bim/.fam fileset. Opened by `comical gwas`'s reader."""
    genotypes = Path(genotypes)
    prefix = genotypes.with_suffix("") if genotypes.suffix in (".bed", ".pgen") else genotypes
    if genotypes.suffix == ".bgen":
        flags = {"bgen": genotypes}
    elif sample:
        raise InputError("--sample goes with a .bgen file only")
    elif with_ext(prefix, ".pgen").is_file():
        flags = {"pfile": prefix}
    elif with_ext(prefix, ".bed").is_file():
        flags = {"bfile": prefix}
    else:
        raise InputError(f"--genotypes {genotypes}: no {prefix}.pgen, {prefix}.bed or .bgen file")
    opener, files = genotype_files(flags.get("bfile"), flags.get("pfile"), flags.get("bgen"), sample)
    return opener(), {f"genotypes{Path(f).suffix}": Path(f) for f in files}


def build_cohort(showcase: Path, mapping: ShowcaseMap, genotypes: Path, sample: Path | None, catalog: Path,
                 stage: Path) -> dict:
    """Check every input, then write the cohort's tables, catalog and genotype links into `stage`; the report."""
    opened, files = genotype_fileset(genotypes, sample)
    read_gwas_catalog(catalog)  # checked before the showcase's gigabytes are read
    tables, report = read_showcase(showcase, mapping)
    iids = opened.samples["iid"]
    eids = tables["idps"]["eid"]
    shared = int(iids.is_in(eids.implode()).sum())
    if not shared:
        raise InputError(f"--genotypes {genotypes}: none of its {iids.len():,} samples (IDs like {iids[0]!r}) is an "
                         f"eid of {showcase} (eids like {eids[0]!r}); the genotypes' sample IDs must be the showcase's "
                         "eids")
    for name, table in tables.items():
        table.write_csv(stage / f"{name}.csv", null_value="NA")
    shutil.copyfile(catalog, stage / "gwas_catalog.tsv")
    for name, path in files.items():
        os.symlink(Path(path).resolve(), stage / name)
    complete = {name: int(t.drop("eid").select(pl.all_horizontal(pl.all().is_not_null())).to_series().sum())
                for name, t in tables.items()}
    report |= {"map": mapping.source, "instance": mapping.instance, "genotype_samples": iids.len(),
               "subjects_with_genotypes": shared, "subjects_complete": complete,
               "genotypes": {name: str(Path(path).resolve()) for name, path in files.items()}}
    (stage / "build_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
