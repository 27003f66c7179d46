"""The chain from a cohort to a pair store: QC, the PheWAS that forms the buckets, catalog SNP sets, pairs.

`comical qc`, `comical pairs` and `comical demo` call these; each step writes into a staged folder that the
caller renames into place (data_io/output_dir.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from comical.data_io.errors import InputError


def write_qc(cohort, config, stage: Path, *, shown_as: Path, extract: list[str] | None = None):
    """Run QC (of the `extract` variants only, when given) and write its outputs into `stage` (shown to the user
    as `shown_as`)."""
    from comical.pipelines.statgen.qc import run_qc

    result = run_qc(cohort, config, extract=extract)
    result.write(stage)
    (stage / "config.yaml").write_text(config.to_yaml())
    r = result.report
    print(f"qc: kept {r['samples']['kept']}/{r['samples']['input']} samples and {r['variants']['kept']}/"
          f"{r['variants']['input']} variants ({r['variants']['pruned_in']} after LD pruning), "
          f"{config.n_pcs} PCs -> {shown_as}")
    return result


def qc_of(cohort, qc_dir: Path | None, stage: Path, *, shown_as: Path):
    """The QC to build on: read from `--qc DIR`, or run now with defaults and written to `stage/qc`."""
    from comical.pipelines.statgen.qc import QCConfig, QCResult

    if qc_dir is not None:
        return QCResult.read(qc_dir)
    (stage / "qc").mkdir()
    return write_qc(cohort, QCConfig(), stage / "qc", shown_as=shown_as / "qc")


def write_pair_store(cohort, config, trait_map, stage: Path, *, qc_dir, phewas_dir, shown_as: Path) -> dict:
    """QC (read from `qc_dir`, or run into `stage/qc`), the PheWAS (read from `phewas_dir`, or run on the training
    split into `stage/phewas`), catalog SNP sets, then the pair store in `stage`; returns its manifest."""
    from comical.pipelines.comical.catalog_sets import build_check, catalog_snp_sets, snp_set_report
    from comical.pipelines.comical.pairs import make_pairs, split_subjects
    from comical.pipelines.statgen.phewas import PhewasConfig, read_idp_disease_map, run_phewas, write_phewas

    phewas_config = PhewasConfig()
    idp_map = read_idp_disease_map(phewas_dir) if phewas_dir else None  # read (and checked) before compute
    qc = qc_of(cohort, qc_dir, stage, shown_as=shown_as)
    kept = cohort.eids.filter(cohort.eids.is_in(qc.pcs["eid"].implode()))  # make_pairs' subjects and order
    if idp_map is None:
        (stage / "phewas").mkdir()
        subjects = None  # --buckets-from all
        if config.buckets_from == "train":  # the split make_pairs will draw, so no test subject shapes a bucket
            subjects = kept.filter(pl.Series(split_subjects(kept.len(), config) == "train"))
        table, idp_map = run_phewas(cohort, qc, phewas_config, subjects=subjects)
        write_phewas(table, idp_map, phewas_config, stage / "phewas")
    if idp_map.height == 0:
        raise InputError(f"no IDP is significant for any disease (adjusted p < {phewas_config.alpha}); nothing to "
                         "pair. Run `comical phewas` with a larger --alpha or --map-nonsignificant true")
    diseases = list(phewas_config.diseases)
    variants = cohort.genotypes.variants.with_columns(
        (qc.variants["filter"] == "PASS").alias("passed_qc"))
    selected, rows = catalog_snp_sets(cohort.catalog, variants, trait_map, top_n_perc=config.top_n_perc,
                                      diseases=diseases)
    report = snp_set_report(rows, selected, diseases) | {"genome_build": build_check(cohort.catalog, variants)}
    build = report["genome_build"]
    if build["other_build"]:
        print(f"comical pairs: warning: only {build['same_position']} of {build['rsid_matches_compared']} catalog rows "
              "matched by rsID sit at the genotypes' position: the genotypes look like another genome build than the "
              f"Catalog's GRCh38; {report['rows_matched_by']['position']} rows matched by position alone may be wrong "
              "variants (catalog_rows.tsv, matched_by)", file=sys.stderr)
    for d in report["diseases_without_snps"]:
        print(f"comical pairs: warning: no catalog SNP of {d} is in the genotypes and passed QC; {d} forms no "
              "bucket", file=sys.stderr)
    selected.write_csv(stage / "snp_sets.tsv", separator="\t")
    rows.write_csv(stage / "catalog_rows.tsv", separator="\t")
    manifest = make_pairs(cohort, kept, idp_map, selected, config, stage, diseases=diseases)
    report["pairs"] = manifest["splits"]
    report["buckets_from"] = f"--phewas {phewas_dir}" if phewas_dir else config.buckets_from
    (stage / "pairs_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return manifest
