"""Dosage genotypes: plink2 .pgen/.pvar/.psam (pgenlib) and BGEN 1.2/1.3 with a .sample file (bgen-reader).

Both open as a `Genotypes` like a PLINK 1 fileset (data_io/plink.py): the same sample and variant tables, and
`read` gives the dosage of the counted allele, `allele1`, as float (NaN where a call is missing), so every
analysis reads any of the three formats the same way, a variant range at a time. Asked for an integer dtype, `read`
gives hard calls as a .bed would hold them (plink2's --hard-call-threshold 0.1; -127 missing).

The counted allele is ALT (plink2's ALT; its `--glm` reports the minor allele as A1, so compare with the sign
flipped where A1 is REF): for a .pgen its ALT; for a BGEN the second allele of each variant, which is ALT when
the file lists REF first, as UK Biobank's imputed BGENs do (plink2 `--bgen FILE ref-first`). A BGEN dosage is the
expected count, P(het) + 2 P(hom second) (phased: the sum over haplotypes), rounded to plink2's 1/16384 dosage
unit as plink2 does on import, so results equal plink2's on the same file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError
from comical.data_io.plink import MISSING_CALL, Genotypes, _read_whitespace_table, with_ext


DOSAGE_UNITS = 16384  # plink2's dosage precision (.pgen stores dosages as multiples of 1/16384)
HARD_CALL_THRESHOLD = 0.1  # plink2's default --hard-call-threshold: a dosage further than this from 0, 1, 2 is missing


def _as(dosage: np.ndarray, dtype) -> np.ndarray:
    """Dosages in the caller's dtype. An integer dtype asks for hard calls, as a .bed holds them: the nearest count,
    and MISSING_CALL where the dosage is missing or further than HARD_CALL_THRESHOLD from every count (plink2's
    rule when it writes a .bed from dosages)."""
    if not np.issubdtype(np.dtype(dtype), np.integer):
        return dosage.astype(dtype, copy=False)
    call = np.rint(dosage)
    unsure = np.isnan(dosage) | (np.abs(dosage - call) > HARD_CALL_THRESHOLD)
    return np.where(unsure, MISSING_CALL, np.nan_to_num(call)).astype(dtype)


def _index(selection, count: int) -> np.ndarray:
    """Sorted-or-not index array for a slice, an index list or None (everything)."""
    if selection is None:
        return np.arange(count)
    if isinstance(selection, slice):
        return np.arange(count)[selection]
    return np.asarray(selection, dtype=np.int64)


@dataclasses.dataclass
class PgenGenotypes(Genotypes):
    """A plink2 fileset: the .pvar and .psam in memory, dosages read on demand through pgenlib."""

    hard_calls = False  # a .pgen may hold dosages

    def read(self, samples=None, variants=None, *, dtype=np.float32) -> np.ndarray:
        import pgenlib

        rows = _index(samples, self.n_samples)
        order = np.argsort(rows, kind="stable")  # pgenlib reads a sorted sample subset
        subset = rows[order].astype(np.uint32)
        variant_index = _index(variants, self.n_variants)
        out = np.empty((variant_index.size, subset.size), dtype=np.float64 if dtype == np.float64 else np.float32)
        reader = pgenlib.PgenReader(bytes(with_ext(self.prefix, ".pgen")), raw_sample_ct=self.n_samples,
                                    sample_subset=None if samples is None else subset)
        try:
            if isinstance(variants, slice) and (variants.step in (None, 1)) and variant_index.size:
                reader.read_dosages_range(int(variant_index[0]), int(variant_index[-1]) + 1, out)
            elif variant_index.size:
                reader.read_dosages_list(variant_index.astype(np.uint32), out)
        finally:
            reader.close()
        out[out < 0] = np.nan  # pgenlib writes -9 for a missing dosage
        result = np.empty((rows.size, variant_index.size), dtype=out.dtype)
        result[order] = out.T  # back to the caller's sample order
        return _as(result, dtype)


def open_pgen(prefix: str | Path) -> PgenGenotypes:
    """Check a .pgen/.pvar/.psam fileset and return it opened (biallelic variants; plink2 --max-alleles 2)."""
    prefix = Path(prefix)
    if prefix.suffix in (".pgen", ".pvar", ".psam"):
        prefix = prefix.with_suffix("")
    pgen, pvar, psam = (with_ext(prefix, s) for s in (".pgen", ".pvar", ".psam"))
    for path in (pgen, pvar, psam):
        if not path.is_file():
            raise InputError(f"{path}: file not found")
    variants = _read_header_table(pvar, "#CHROM", ["#CHROM", "POS", "ID", "REF", "ALT"])
    multi = variants["ALT"].str.contains(",")
    if multi.any():
        row = int(multi.arg_true()[0])
        raise InputError(f"{pvar}: variant {variants['ID'][row]} has ALT {variants['ALT'][row]!r}; expected "
                         "biallelic variants (split them with plink2 --max-alleles 2 or --make-pgen multiallelics=-)")
    samples = _read_header_table(psam, "#", ["IID"])
    pos = variants["POS"].cast(pl.Int64, strict=False)
    if pos.null_count():
        row = int(pos.is_null().arg_true()[0])
        raise InputError(f"{pvar}: POS {variants['POS'][row]!r} of variant {variants['ID'][row]} is not a number")
    cm = variants["CM"].cast(pl.Float64, strict=False).fill_null(0.0) if "CM" in variants.columns else 0.0
    table = pl.DataFrame({"chrom": variants["#CHROM"], "variant_id": variants["ID"]}).with_columns(
        cm=pl.lit(cm) if isinstance(cm, float) else cm, pos=pos, allele1=variants["ALT"], allele2=variants["REF"])
    fid = samples["#FID"] if "#FID" in samples.columns else samples["IID"]
    sex = samples["SEX"].cast(pl.Int8, strict=False).fill_null(0) if "SEX" in samples.columns else \
        pl.Series([0] * samples.height, dtype=pl.Int8)
    genotypes = PgenGenotypes(prefix, pl.DataFrame({"fid": fid, "iid": samples["IID"], "sex": sex}), table)
    _check_unique(genotypes, pvar, psam)
    import pgenlib

    try:
        reader = pgenlib.PgenReader(bytes(pgen))
        counts = reader.get_raw_sample_ct(), reader.get_variant_ct()
        reader.close()
    except Exception as err:  # pgenlib raises plain RuntimeErrors on a damaged header
        raise InputError(f"{pgen}: not a readable .pgen ({err})") from None
    if counts != (genotypes.n_samples, genotypes.n_variants):
        raise InputError(f"{pgen}: holds {counts[0]} samples x {counts[1]} variants, but {psam.name} lists "
                         f"{genotypes.n_samples} and {pvar.name} {genotypes.n_variants} (files of another fileset?)")
    return genotypes


def _read_header_table(path: Path, first: str, required: list[str]) -> pl.DataFrame:
    """A plink2 text table: `##` lines, then a header line starting with `first`, then tab-separated rows."""
    with open(path) as f:
        skip = 0
        for line in f:
            if not line.startswith("##"):
                break
            skip += 1
    table = pl.read_csv(path, separator="\t", skip_rows=skip, infer_schema=False, quote_char=None)
    if not table.columns or not table.columns[0].startswith(first):
        raise InputError(f"{path} line {skip + 1}: expected a header line starting with {first} (plink2 format)")
    table = table.rename({table.columns[0]: table.columns[0] if table.columns[0] != "#IID" else "IID"})
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputError(f"{path}: no column {missing[0]} in the header ({' '.join(table.columns)})")
    return table


def _check_unique(genotypes: Genotypes, variant_file: Path, sample_file: Path) -> None:
    """Sample IDs must be unique; variant IDs may repeat (imputed files repeat rsIDs, and plink2 accepts them)."""
    for table, path, column in ((genotypes.samples, sample_file, "iid"),):
        dup = table[column].is_duplicated() & (table[column] != ".")
        if dup.any():
            rows = dup.arg_true()
            raise InputError(f"{path}: {column} {table[column][int(rows[0])]!r} appears more than once "
                             f"(rows {int(rows[0]) + 1} and {int(rows[1]) + 1})")


@dataclasses.dataclass
class BgenGenotypes(Genotypes):
    """A BGEN file with its .sample file; bgen-reader's index ('metadata') lives in a cache folder, so nothing is
    written beside the user's files."""

    hard_calls = False
    read_bytes_per_call = 48  # bgen-reader's three float64 probabilities, and the dosage's temporaries

    sample_file: Path = Path()
    metadata: Path = Path()

    def read(self, samples=None, variants=None, *, dtype=np.float32) -> np.ndarray:
        from bgen_reader import open_bgen

        self.metadata.parent.mkdir(parents=True, exist_ok=True)  # a Ray task on another node indexes it there
        with open_bgen(self.prefix, samples_filepath=self.sample_file, metadata_filepath=self.metadata,
                       verbose=False) as bgen:
            probs = bgen.read(index=(samples, variants), dtype=np.float64, num_threads=1)
            phased = np.array(bgen.phased[_index(variants, self.n_variants)])
        haploid = np.isnan(probs[:, :, -1]) & ~np.isnan(probs[:, :, 0])  # missing calls are NaN in every column
        if haploid.any():  # would silently become missing calls otherwise
            sample, variant = (int(a[0]) for a in np.nonzero(haploid))
            sample = _index(samples, self.n_samples)[sample]
            variant = _index(variants, self.n_variants)[variant]
            raise InputError(f"{self.prefix}: variant {self.variants['variant_id'][int(variant)]}, sample "
                             f"{self.samples['iid'][int(sample)]}: a haploid call; expected diploid calls (autosomes; "
                             "haploid chrX/Y/MT calls are not supported)")
        if probs.shape[2] == 3 and not phased.any():  # unphased diploid: P(AA), P(AB), P(BB)
            dosage = probs[:, :, 1] + 2 * probs[:, :, 2]
        else:  # phased diploid: P(hap1 = B) + P(hap2 = B); unphased rows keep their own columns
            dosage = np.where(phased, probs[:, :, 1] + probs[:, :, -1], probs[:, :, 1] + 2 * probs[:, :, 2])
        # plink2 keeps dosages in units of 1/16384; rounding as it does makes results equal to plink2's
        return _as(np.round(dosage * DOSAGE_UNITS) / DOSAGE_UNITS, dtype)


def open_bgen(path: str | Path, sample: str | Path | None = None) -> BgenGenotypes:
    """Check a BGEN file (biallelic, diploid) and its .sample file; index it once into the user's cache."""
    from bgen_reader import open_bgen as bgen_reader

    path = Path(path)
    sample = Path(sample) if sample else path.with_suffix(".sample")
    for file in (path, sample):
        if not file.is_file():
            raise InputError(f"{file}: file not found" + (" (give --sample)" if file == sample else ""))
    samples = _read_sample_file(sample)
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "comical" / "bgen"
    cache.mkdir(parents=True, exist_ok=True)
    metadata = cache / f"{path.stem}-{key}.metadata2.mmm"
    try:
        with bgen_reader(path, samples_filepath=sample, metadata_filepath=metadata, verbose=False) as bgen:
            # copies: bgen-reader's arrays are views of its index file, unmapped when it closes
            n_samples, nalleles = bgen.nsamples, np.array(bgen.nalleles)
            ids = np.where(bgen.rsids != "", bgen.rsids, bgen.ids).astype(str)
            alleles = pl.Series(np.array(bgen.allele_ids).astype(str)).str.split(",")
            chrom, pos = np.array(bgen.chromosomes).astype(str), np.array(bgen.positions).astype(np.int64)
    except InputError:
        raise
    except Exception as err:  # bgen-reader raises assorted errors on a damaged file
        raise InputError(f"{path}: not a readable BGEN file ({err})".replace("\n", " ")) from None
    if n_samples != samples.height:
        raise InputError(f"{sample}: lists {samples.height} samples, but {path.name} holds {n_samples}")
    if (nalleles != 2).any():
        row = int(np.flatnonzero(nalleles != 2)[0])
        raise InputError(f"{path}: variant {ids[row]} has {nalleles[row]} alleles; expected biallelic variants")
    variants = pl.DataFrame({"chrom": chrom.astype(str), "variant_id": ids.astype(str), "cm": 0.0,
                             "pos": pos.astype(np.int64), "allele1": alleles.list.get(1), "allele2": alleles.list.get(0)})
    genotypes = BgenGenotypes(path, samples, variants, sample_file=sample, metadata=metadata)
    _check_unique(genotypes, path, sample)
    return genotypes


def _read_sample_file(path: Path) -> pl.DataFrame:
    """An Oxford .sample file: a header line (ID_1 ID_2 missing [sex ...]), a type line (0 0 0 D ...), samples."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise InputError(f"{path}: expected a header line and a type line (Oxford .sample format)")
    header = lines[0].split()
    if header[:2] != ["ID_1", "ID_2"] and header[:1] != ["ID"]:
        raise InputError(f"{path} line 1: expected ID_1 ID_2 missing ... (Oxford .sample format), got {lines[0]!r}")
    table = _read_whitespace_table(path, header, skip=2)
    iid = table["ID_2"] if "ID_2" in table.columns else table["ID"]
    fid = table["ID_1"] if "ID_1" in table.columns else iid
    sex = table["sex"].cast(pl.Int8, strict=False).fill_null(0) if "sex" in table.columns else \
        pl.Series([0] * table.height, dtype=pl.Int8)
    return pl.DataFrame({"fid": fid, "iid": iid, "sex": sex})


