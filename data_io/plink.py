"""PLINK 1 binary filesets (.bed/.bim/.fam): checked on open, genotypes read by slice through bed-reader.

Words used throughout: `iid` is the sample ID (equal to the tables' `eid`), `variant_id` the bim ID, `allele1`
the bim's fifth column, the *counted* allele (plink2's ALT when it reads a bed), `allele2` the other one.
Genotypes are counts of allele1: 0, 1, 2, or missing (NaN in float reads, -127 in int8 reads).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from bed_reader import open_bed

from comical.data_io.errors import InputError

BED_MAGIC = bytes([0x6C, 0x1B, 0x01])  # PLINK 1 .bed, variant-major
BIM_COLUMNS = ["chrom", "variant_id", "cm", "pos", "allele1", "allele2"]
FAM_COLUMNS = ["fid", "iid", "father", "mother", "sex", "pheno"]


MISSING_CALL = -127  # bed-reader's missing genotype in an integer read

def _read_whitespace_table(path: Path, columns: list[str], skip: int = 0) -> pl.DataFrame:
    """A whitespace-separated file with a fixed number of fields after `skip` header lines, as strings."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    lines = pl.read_csv(path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None,
                        infer_schema=False, skip_rows=skip)
    fields = lines["line"].str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ")
    counts = fields.list.len()
    bad = (counts != len(columns)).arg_true()
    if bad.len():
        row = int(bad[0])
        raise InputError(f"{path} line {skip + row + 1}: {counts[row]} fields; expected {len(columns)} ({' '.join(columns)})")
    return pl.DataFrame({c: fields.list.get(i) for i, c in enumerate(columns)})


def _check_padding(bed: Path, n: int, m: int, fam: Path) -> None:
    """A .fam a few rows short can leave the .bed size unchanged; PLINK pads each variant's last byte with
    zero bits, so genotype bits in the padding mean the .bed holds more samples than the .fam lists."""
    if n % 4 == 0 or m == 0:
        return
    per_variant = (n + 3) // 4
    last = np.memmap(bed, dtype=np.uint8, mode="r", offset=3, shape=(m, per_variant))[:, -1]
    padding = (0xFF << (2 * (n % 4))) & 0xFF
    dirty = np.flatnonzero(last & padding)
    if dirty.size > m // 10:
        raise InputError(f"{bed}: holds genotypes beyond the {n} samples of {fam.name} (padding bits set in "
                         f"{dirty.size} of {m} variants); the .fam belongs to another fileset")


@dataclasses.dataclass
class Genotypes:
    """An opened PLINK 1 fileset: sample and variant tables in memory, genotypes read on demand.

    >>> g = open_genotypes(MINI / "genotypes")  # doctest: +SKIP
    >>> g.read(variants=slice(0, 10)).shape      # all samples x the first 10 variants
    (2000, 10)
    """

    prefix: Path
    samples: pl.DataFrame  # fid, iid, sex (plink codes 1 male, 2 female, 0 unknown)
    variants: pl.DataFrame  # chrom, variant_id, cm, pos, allele1, allele2
    hard_calls = True  # reads are whole counts (a .bed); dosage formats say False
    read_bytes_per_call = 8  # memory a float64 read holds per sample and variant while it decodes

    @property
    def n_samples(self) -> int:
        return self.samples.height

    @property
    def n_variants(self) -> int:
        return self.variants.height

    def read(self, samples=None, variants=None, *, dtype=np.float32) -> np.ndarray:
        """Allele-1 counts, samples x variants, for index arrays or slices (None: all)."""
        index = (slice(None) if samples is None else samples, slice(None) if variants is None else variants)
        with open_bed(with_ext(self.prefix, ".bed"), iid_count=self.n_samples, sid_count=self.n_variants,
                      num_threads=1) as bed:  # the counts spare bed-reader the .fam/.bim
            return bed.read(index=index, dtype=dtype)


@dataclasses.dataclass
class VariantSubset:
    """Genotypes of any format restricted to some of their variants (plink2's --extract): the same interface, with
    variant indices counted in the subset."""

    inner: Any
    index: np.ndarray  # sorted positions in inner's variants

    def __getattr__(self, name: str):  # prefix, samples, hard_calls, read_bytes_per_call ...: the inner fileset's
        if name in ("inner", "index") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @functools.cached_property
    def variants(self) -> pl.DataFrame:  # built once: the GWAS writer reads it per block
        return self.inner.variants[self.index]

    @property
    def n_variants(self) -> int:
        return int(self.index.size)

    def read(self, samples=None, variants=None, *, dtype=np.float32) -> np.ndarray:
        return self.inner.read(samples, self.index if variants is None else self.index[variants], dtype=dtype)


def read_id_list(path: str | Path, flag: str) -> list[str]:
    """The IDs of a plink2 --keep (sample) or --extract (variant) file.

    --keep: `#FID IID` or `#IID` header, or no header with FID IID (or IID alone) per line: the IIDs.
    --extract: variant IDs separated by whitespace or newlines.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{flag} {path}: file not found")
    numbered = [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if flag == "--extract":
        ids = [token for _, fields in numbered for token in fields]
    else:
        column = 1 if numbered and len(numbered[0][1]) > 1 else 0
        if numbered and numbered[0][1][0].startswith("#"):
            header = [h.lstrip("#") for h in numbered.pop(0)[1]]
            if "IID" not in header:
                raise InputError(f"{flag} {path} line 1: a header without IID; expected #FID IID or #IID")
            column = header.index("IID")
        short = next(((n, fields) for n, fields in numbered if len(fields) <= column), None)
        if short is not None:
            raise InputError(f"{flag} {path} line {short[0]}: {len(short[1])} field(s); expected FID IID")
        ids = [fields[column] for _, fields in numbered]  # the IID: UK Biobank's FID is the IID
    if not ids:
        raise InputError(f"{flag} {path}: lists no ID")
    return ids


def subset_variants(genotypes, ids: list[str] | None, source: str):
    """`genotypes` restricted to the variants `ids` names (all when None); an error if it names none of them."""
    if ids is None:
        return genotypes
    listed = genotypes.variants["variant_id"].is_in(pl.Series(ids).implode()).to_numpy()
    if not listed.any():
        raise InputError(f"{source}: none of its {len(ids):,} variant IDs (like {ids[0]!r}) is a variant of the "
                         f"genotypes (IDs like {genotypes.variants['variant_id'][0]!r})")
    return VariantSubset(genotypes, np.flatnonzero(listed))


def with_ext(prefix: str | Path, ext: str) -> Path:
    """A fileset's file: the prefix plus the extension (`ukb.chr1` -> `ukb.chr1.bed`; not Path.with_suffix)."""
    return Path(f"{prefix}{ext}")


def open_genotypes(prefix: str | Path) -> Genotypes:
    """Check a .bed/.bim/.fam fileset and return it opened; every problem names its file and line."""
    prefix = Path(prefix)
    if prefix.suffix in (".bed", ".bim", ".fam"):
        prefix = prefix.with_suffix("")
    bed, bim, fam = (with_ext(prefix, s) for s in (".bed", ".bim", ".fam"))
    variants = _read_whitespace_table(bim, BIM_COLUMNS)
    samples = _read_whitespace_table(fam, FAM_COLUMNS)
    for column, kind in (("pos", pl.Int64), ("cm", pl.Float64)):
        cast = variants[column].cast(kind, strict=False)
        if cast.null_count():
            row = int(cast.is_null().arg_true()[0])
            raise InputError(f"{bim} line {row + 1}, column {column}: {variants[column][row]!r} is not a number")
        variants = variants.with_columns(cast)
    for table, path, column in ((variants, bim, "variant_id"), (samples, fam, "iid")):
        dup = table[column].is_duplicated()
        if dup.any():
            rows = dup.arg_true()
            raise InputError(f"{path}: {column} {table[column][int(rows[0])]!r} appears more than once "
                             f"(lines {int(rows[0]) + 1} and {int(rows[1]) + 1})")
    if not bed.is_file():
        raise InputError(f"{bed}: file not found")
    with bed.open("rb") as f:
        magic = f.read(3)
    if magic != BED_MAGIC:
        raise InputError(f"{bed}: first bytes {magic.hex()} are not a variant-major PLINK 1 .bed ({BED_MAGIC.hex()})")
    expected = 3 + variants.height * ((samples.height + 3) // 4)
    size = bed.stat().st_size
    if size != expected:
        raise InputError(f"{bed}: {size} bytes, but {bim.name} has {variants.height} variants and {fam.name} "
                         f"{samples.height} samples, which need {expected} bytes (truncated, or .bim/.fam from "
                         "another fileset)")
    _check_padding(bed, samples.height, variants.height, fam)
    sex = samples["sex"].cast(pl.Int8, strict=False).fill_null(0)
    return Genotypes(prefix, samples.select("fid", "iid").with_columns(sex.alias("sex")), variants)
