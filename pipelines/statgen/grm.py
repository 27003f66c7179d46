"""`comical grm`: the genetic relationship matrix in GCTA's binary layout, as `plink2 --make-grm-bin` writes it.

    comical grm --cohort COHORT --out PREFIX [--qc DIR]

Over the QC-passed subjects and the LD-pruned variants (those `comical heritability` uses): each variant
standardised with the subjects' allele frequency, a missing call counted as 0 (the mean), and each pair's sum
divided by the variants called in both: plink2's values (heritability.py's own GRM divides by every polymorphic
variant instead, so the two differ where calls are missing; GCTA's `--make-grm` also estimates the diagonal
differently). A pair with no variant called in both is written as 0. Files:
- PREFIX.grm.bin: the lower triangle with the diagonal, row by row (A_00, A_10, A_11, A_20, ...), float32;
- PREFIX.grm.N.bin: the variants called in both of each pair, same order, float32;
- PREFIX.grm.id: FID and IID per subject, tab-separated, no header (both the cohort's eid).
Written in row blocks; memory is about four times the genotype matrix (the standardised values, the call mask,
a float64 copy per block), not n^2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS = 1024  # subjects per written block


def write_grm_bin(genotypes: np.ndarray, ids: list[str], prefix: Path) -> None:
    """The three files of PREFIX from int8 allele counts (subjects x variants, -127 missing)."""
    from comical.data_io.pca import MISSING_INT8, standardized_genotypes

    z = standardized_genotypes(genotypes)
    called = (genotypes != MISSING_INT8).astype(np.float32)
    n = len(z)
    with open(f"{prefix}.grm.bin", "wb") as grm, open(f"{prefix}.grm.N.bin", "wb") as counts:
        for start in range(0, n, ROWS):
            stop = min(start + ROWS, n)
            pairs = called[start:stop] @ called[:stop].T  # variants called in both
            block = (z[start:stop].astype(np.float64) @ z[:stop].T.astype(np.float64)) / np.maximum(pairs, 1)
            for i in range(start, stop):
                grm.write(block[i - start, :i + 1].astype(np.float32).tobytes())
                counts.write(pairs[i - start, :i + 1].astype(np.float32).tobytes())
    Path(f"{prefix}.grm.id").write_text("".join(f"{i}\t{i}\n" for i in ids))


def read_grm_bin(prefix: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(the full symmetric matrix, the pair counts, the IIDs) of a GCTA .grm.bin set."""
    ids = [line.split("\t")[1] for line in Path(f"{prefix}.grm.id").read_text().splitlines()]
    n = len(ids)
    rows, cols = np.tril_indices(n)
    out = []
    for suffix in (".grm.bin", ".grm.N.bin"):
        values = np.fromfile(f"{prefix}{suffix}", np.float32)
        full = np.zeros((n, n), np.float64)
        full[rows, cols] = values
        full[cols, rows] = values
        out.append(full)
    return out[0], out[1], ids


def grm(cohort_dir: Path, out_prefix: Path, *, qc_dir: Path | None = None) -> dict:
    """`comical grm`: writes the files next to a staged name, then renames them into place; returns a summary."""
    from comical.data_io.cohort import load_cohort
    from comical.data_io.errors import InputError
    from comical.pipelines.statgen.heritability import cohort_qc

    out_prefix = Path(out_prefix)
    targets = [Path(f"{out_prefix}{s}") for s in (".grm.bin", ".grm.N.bin", ".grm.id")]
    if not out_prefix.parent.is_dir():
        raise InputError(f"--out {out_prefix}: folder {out_prefix.parent} not found")
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise InputError(f"--out {out_prefix}: {existing[0]} exists; choose another prefix (nothing is overwritten)")
    cohort = load_cohort(cohort_dir)
    qc = cohort_qc(cohort, qc_dir)
    kept = qc.samples["filter"].to_numpy() == "PASS"
    variants = np.flatnonzero(qc.variants["pruned_in"].to_numpy())
    genotypes = cohort.genotypes.read(cohort.sample_index[kept], variants, dtype=np.int8)
    staged = out_prefix.parent / f".{out_prefix.name}.staged"
    try:
        write_grm_bin(genotypes, cohort.eids.cast(str).to_numpy()[kept].tolist(), staged)
        for suffix, target in zip((".grm.bin", ".grm.N.bin", ".grm.id"), targets):
            Path(f"{staged}{suffix}").rename(target)
    finally:
        for suffix in (".grm.bin", ".grm.N.bin", ".grm.id"):
            Path(f"{staged}{suffix}").unlink(missing_ok=True)
    return {"n_subjects": int(kept.sum()), "n_variants": int(variants.size), "files": [str(t) for t in targets]}
