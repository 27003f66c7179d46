"""`comical gwas`: per-variant association as Ray tasks over variant blocks, exact against plink2 `--glm`.

    comical gwas --bfile geno --pheno pheno.txt --covar covar.txt --out results/run
    comical gwas --cohort cohort/ --out results/idps              # every IDP; --binary: the diagnoses
    comical gwas --cohort cohort/ --multi-trait embeddings.parquet --out results/mt

Phenotypes that share their missing samples form a group; a group's covariates are projected out once and its
quantitative phenotypes are tested together by matrix products (`gwas_stats`), so 154 IDPs cost little more
than one. Each Ray task reads its own block of the .bed by index range and returns the block's statistics (one
local worker runs the same blocks in-process, without starting Ray); the driver writes blocks in order into
staged files and moves them into place at the end. Outputs per phenotype:
`PREFIX.<phenotype>.tsv` (GWAS-SSF columns), clumps, `PREFIX.summary.json` (lambda_GC, hits), and plots.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
from scipy import special

from comical.data_io.dosages import open_bgen, open_pgen
from comical.data_io.errors import InputError
from comical.data_io.plink import Genotypes, open_genotypes, subset_variants, with_ext
from comical.data_io.tables import read_table
from comical.distributed.ray_session import check_nodes_see, init_ray, shutdown_ray
from comical.pipelines.statgen import gwas_stats

GENOME_WIDE = 5e-8
CHUNK_BYTES = 64 << 20  # genotypes decoded at once per task
BLOCK_VARIANTS = 2048  # the most variants in one task (154 phenotypes' rows of 2,048 variants: ~80 MB of text)
DEFAULT_COHORT_COVARIATES = ["age", "sex"] + [f"PC{i}" for i in range(1, 11)]


@dataclasses.dataclass
class Group:
    """Phenotypes analysed on the same samples: `rows` index the analysis samples; y is residualised on q for
    linear and multi-trait tests, raw 0/1 for a logistic one."""

    kind: str  # linear, logistic or multi_trait
    names: list[str]
    rows: np.ndarray
    q: np.ndarray
    c: np.ndarray
    y: np.ndarray


@dataclasses.dataclass
class GwasInputs:
    genotypes: Genotypes
    sample_index: np.ndarray  # bed rows of the analysis samples
    groups: list[Group]
    covariate_names: list[str]


@dataclasses.dataclass
class GwasTables:
    """The inputs as read and checked from their files, before any linear algebra. They are read in a thread
    while Ray starts; `build_inputs` then runs in the main thread, because OpenBLAS tears its thread pool down
    whenever the process forks (as Ray's start does) and a BLAS call running meanwhile in another thread hangs."""

    genotypes: Genotypes
    phenotypes: pl.DataFrame
    covariates: pl.DataFrame
    source: str
    binary: bool | None = None  # True: logistic; False: linear; None: decided per phenotype from its values
    multi_trait: bool = False  # the phenotypes are embedding dimensions, tested jointly
    mt_pcs: int | None = None
    rank_normalise: bool = False
    keep: list[str] | None = None  # plink2's --keep: only these samples


def _phenotype_kind(values: np.ndarray) -> str | None:
    """'binary' (0/1, or plink's 1/2), or None for quantitative."""
    present = np.unique(values[~np.isnan(values)])
    return "binary" if present.size <= 2 and (set(present) <= {0.0, 1.0} or set(present) <= {1.0, 2.0}) else None


def build_inputs(tables: GwasTables) -> GwasInputs:
    """Align tables to the .fam, group phenotypes by their missing samples, and check everything up front."""
    genotypes, covariates, source, binary = tables.genotypes, tables.covariates, tables.source, tables.binary
    phenotypes = tables.phenotypes
    if tables.multi_trait:
        phenotypes = embedding_traits(phenotypes, n_pcs=tables.mt_pcs, rank_normalise=tables.rank_normalise)
    iid = genotypes.samples["iid"]
    covariate_names = [c for c in covariates.columns if c != "eid"]
    complete = covariates.drop_nulls()
    keep = iid.is_in(phenotypes["eid"].implode()) & iid.is_in(complete["eid"].implode())
    if tables.keep is not None:
        listed = iid.is_in(pl.Series(tables.keep).implode())
        if not listed.any():
            raise InputError(f"--keep: none of its {len(tables.keep):,} IDs (like {tables.keep[0]!r}) is a sample of "
                             f"{genotypes.prefix} (IIDs like {iid[0]!r})")
        keep &= listed
    if not keep.any():
        raise InputError(f"{source}: no sample ID of the phenotype and covariate files is in {genotypes.prefix}'s samples "
                         f"(fam IIDs like {iid[0]!r}, phenotype IDs like {phenotypes['eid'][0]!r})")
    sample_index = np.flatnonzero(keep.to_numpy())
    order = pl.DataFrame({"eid": iid.gather(sample_index)})
    pheno = order.join(phenotypes, on="eid", how="left", maintain_order="left")
    covar = order.join(complete, on="eid", how="left", maintain_order="left").drop("eid").to_numpy().astype(float)
    names = [c for c in pheno.columns if c != "eid"]
    values = pheno.drop("eid").to_numpy().astype(float)
    if tables.multi_trait:
        rows = np.flatnonzero(~np.isnan(values).any(1))
        q = _basis(covar[rows], covariate_names, source)
        y = values[rows]
        return GwasInputs(genotypes, sample_index, [Group("multi_trait", names, rows, q, covar[rows],
                                                          y - q @ (q.T @ y))], covariate_names)
    groups: dict[tuple, Group] = {}
    for j, name in enumerate(names):
        column = values[:, j]
        rows = np.flatnonzero(~np.isnan(column))
        if rows.size == 0:
            raise InputError(f"{source}: phenotype {name} has no values for the genotyped samples")
        kind = _phenotype_kind(column)
        if binary and kind != "binary":
            raise InputError(f"{source}: phenotype {name} is not case/control (expected 0/1 or 1/2 values)")
        if kind == "binary" and binary is not False:
            y = column[rows] - column[rows].min() if set(np.unique(column[rows])) <= {1.0, 2.0} else column[rows]
            if y.sum() == 0 or y.sum() == y.size:
                raise InputError(f"{source}: binary phenotype {name} has no {'cases' if y.sum() == 0 else 'controls'}")
            q = _basis(covar[rows], covariate_names, source)
            groups[("logistic", name)] = Group("logistic", [name], rows, q, covar[rows], y)
            continue
        key = ("linear", rows.tobytes())
        if key not in groups:
            groups[key] = Group("linear", [], rows, _basis(covar[rows], covariate_names, source), covar[rows],
                                np.empty(0))
        groups[key].names.append(name)
    for group in groups.values():
        if group.kind == "linear":  # residualised together: one GEMM per group
            y = values[np.ix_(group.rows, [names.index(n) for n in group.names])]
            group.y = y - group.q @ (group.q.T @ y)
    return GwasInputs(genotypes, sample_index, list(groups.values()), covariate_names)


def _basis(covar: np.ndarray, names: list[str], source: str) -> np.ndarray:
    try:
        return gwas_stats.covariate_basis(covar, names)
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None


def _block(genotypes: Genotypes, sample_index: np.ndarray, lo: int, hi: int, groups: list[Group],
           out_format: str = "tsv"):
    """One variant block for every group (a Ray task, or a call in-process with one local worker): reads its own
    slice of the genotypes, computes, and encodes its rows, so the driver only appends them. Returns ({phenotype:
    encoded rows}, {phenotype: -log10 p}).

    The block is read and tested a chunk of variants at a time (~64 MB of float64 genotypes), so a task's memory
    stays small and is reused: first-touch page faults on fresh memory cost more than the statistics here."""
    every = sample_index.size == genotypes.n_samples  # sorted, unique: all samples, read without an index
    chunk = max(16, CHUNK_BYTES // (genotypes.read_bytes_per_call * sample_index.size))
    parts: list[list[dict]] = [[] for _ in groups]
    for start in range(lo, hi, chunk):
        g = genotypes.read(samples=None if every else sample_index, variants=slice(start, min(start + chunk, hi)),
                           dtype=np.float64)
        for group, done in zip(groups, parts):
            whole = group.rows.size == len(g)  # rows are sorted and unique: all samples, no copy needed
            gg = g if whole else g[group.rows]
            scratch = not whole or len(groups) == 1  # a copy of ours, or the only user of the read
            if group.kind == "linear":
                done.append(gwas_stats.linear(gg, group.q, group.y, overwrite_g=scratch))
            elif group.kind == "multi_trait":
                done.append(gwas_stats.multi_trait(gg, group.q, group.y, overwrite_g=scratch))
            else:
                done.append(gwas_stats.logistic(gg, group.c, group.y))
    results = [{key: np.concatenate([part[key] for part in done]) for key in done[0]} for done in parts]
    return _format_block(genotypes.variants.slice(lo, hi - lo), groups, results, header=lo == 0,
                         out_format=out_format)


OUT_FORMATS = ("tsv", "tsv.gz", "parquet")


def _format_block(base: pl.DataFrame, groups: list[Group], results: list[dict], *, header: bool,
                  out_format: str = "tsv"):
    """GWAS-SSF rows of one block per phenotype, encoded here (in parallel) for the driver to append: TSV bytes,
    or BGZF-compressed TSV bytes (uint8 arrays, read from Ray's object store without a copy), or an Arrow table
    (parquet); and its -log10 p per phenotype.

    A group's phenotypes are stacked into one table (phenotype-major) and encoded once, then cut into each
    phenotype's rows: one CSV writer call per block instead of one per phenotype and block (~0.35 ms each, x 154
    phenotypes x blocks)."""
    ssf = pl.DataFrame({"chromosome": base["chrom"], "base_pair_location": base["pos"],
                        "effect_allele": base["allele1"], "other_allele": base["allele2"]})
    m = base.height
    texts, neg_log10_p = {}, {}
    for group, result in zip(groups, results):
        names = ["multi_trait"] if group.kind == "multi_trait" else group.names
        k = len(names)

        def stack(values, per_phenotype: bool = group.kind == "linear"):
            # (m, k) phenotype columns to one phenotype-major column; shared per-variant columns repeat k times
            values = np.asarray(values)
            return values.T.reshape(-1) if per_phenotype else np.tile(values, k)

        neg = -np.asarray(result["log10_p"], dtype=np.float64).reshape(m, -1)
        table = ({"beta": _na(stack(result["beta"])), "standard_error": _na(stack(result["se"]))}
                 if group.kind != "multi_trait" else {"lrt": _na(result["lrt"]), "df": result["df"]})
        table |= {"effect_allele_frequency": _na(stack(np.where(result["n"] > 0, result["freq"], np.nan), False)),
                  "p_value": _na(stack(result["p"])), "variant_id": pl.concat([base["variant_id"]] * k),
                  "n": stack(result["n"], False), "neg_log10_p": _na(neg.T.reshape(-1))}
        if group.kind == "logistic":
            table.update(odds_ratio=_na(np.exp(result["beta"])), firth=result["firth"])
        # NaN becomes null, written NA as plink2 does
        table["note"] = pl.Series(stack(np.asarray(result["note"], dtype=object), False), dtype=pl.String)
        stacked = pl.concat([pl.concat([ssf] * k), pl.DataFrame(table)], how="horizontal")
        for j, (name, encoded) in enumerate(zip(names, _encode(stacked, out_format, header, k))):
            texts[name] = encoded
            neg_log10_p[name] = neg[:, j]
    return texts, neg_log10_p


def _na(values: np.ndarray) -> pl.Series:
    return pl.Series(values=np.asarray(values, dtype=np.float64), nan_to_null=True)


def _encode(table: pl.DataFrame, out_format: str, header: bool, parts: int) -> list:
    """`table` (`parts` equal runs of rows, one per phenotype) encoded once and cut into its parts."""
    rows = table.height // parts
    if out_format == "parquet":
        return [table.slice(j * rows, rows).to_arrow() for j in range(parts)]
    text = io.BytesIO()
    table.write_csv(text, separator="\t", include_header=False, null_value="NA", float_precision=None)
    data = np.frombuffer(text.getbuffer(), np.uint8)
    ends = np.flatnonzero(data == ord("\n"))[rows - 1::rows] + 1 if rows else np.zeros(parts, dtype=np.int64)
    head = ("\t".join(table.columns) + "\n").encode() if header else b""
    encoded = []
    for start, end in zip([0, *ends[:-1]], ends):
        chunk = head + data[start:end].tobytes()
        if out_format == "tsv.gz":  # BGZF blocks: gzip members that bgzip and tabix read; appended blocks stay valid
            from Bio import bgzf

            packed = io.BytesIO()
            writer = bgzf.BgzfWriter(fileobj=packed)
            writer.write(chunk)
            if len(chunk) % 65536:  # the rest as one block; flushing nothing would write an empty block, which is
                writer.flush()  # the end-of-file marker the driver writes once at the end
            chunk = packed.getvalue()
        encoded.append(np.frombuffer(chunk, np.uint8))  # Ray hands arrays to the driver without a copy
    return encoded


def run_gwas(read_tables: Callable[[], GwasTables], out: str | Path, *, workers: int = 1,
             block_size: int | None = None, plots: bool = True, clump: dict | None = None,
             out_format: str = "tsv") -> dict:
    """Tests every variant block; writes PREFIX.<phenotype>.<out_format>, clumps, summary.json, plots; returns the
    summary.

    With more than one worker, or on a cluster (RAY_ADDRESS, as `ray job submit` sets it), each block is a Ray task.
    One worker on the local machine runs the same blocks in this process: a local Ray costs ~3 s to start and stop
    on 2 cores (more than a one-phenotype GWAS of 5,000 variants takes) and gives one worker nothing to share.
    `read_tables` (e.g. a partial of `tables_from_files`) reads and checks the files; with Ray it runs in a thread
    while Ray starts, since both take seconds and Ray's start is mostly waiting on its own processes.
    """
    out = Path(out).resolve()
    if workers == 1 and not os.environ.get("RAY_ADDRESS"):
        from threadpoolctl import threadpool_limits

        inputs = build_inputs(read_tables())
        bounds = _bounds(inputs.genotypes.n_variants, workers, block_size)

        def blocks():
            with threadpool_limits(1):  # one worker is one CPU, as in a Ray task; clumping after it is the driver's
                for lo, hi in bounds:
                    yield _block(inputs.genotypes, inputs.sample_index, lo, hi, inputs.groups, out_format)

        return _write(inputs, out, _progress(blocks(), len(bounds)), plots=plots, clump=clump, out_format=out_format)
    with ThreadPoolExecutor(1) as pool:
        reading = pool.submit(read_tables)
        started = init_ray(num_cpus=workers, log_to_driver=False)  # a local Ray without dashboard
        try:
            inputs = build_inputs(reading.result())
        except BaseException:
            if started:
                shutdown_ray()
            raise
    try:
        # each task reads its block from the genotypes' files: on a cluster every node must see them
        check_nodes_see({"the genotypes' folder": Path(inputs.genotypes.prefix).resolve().parent})
        bounds = _bounds(inputs.genotypes.n_variants, workers, block_size)
        blocks = _progress(_ray_blocks(inputs, bounds, out_format), len(bounds))
        return _write(inputs, out, blocks, plots=plots, clump=clump, out_format=out_format)
    finally:
        if started:  # ours alone: an explicit shutdown is seconds faster than Ray's exit hook
            shutdown_ray()


def _progress(blocks, total: int):
    """A progress bar on stderr over the variant blocks, shown only when the run takes more than a few seconds and
    stderr is a terminal (tqdm's own rules), so short runs and logs stay clean."""
    from tqdm import tqdm

    return tqdm(blocks, total=total, unit="block", desc="gwas", delay=3, disable=None, leave=False)


def _bounds(m: int, workers: int, block_size: int | None) -> list[tuple[int, int]]:
    """Variant blocks: about four per worker, so a slow block leaves the others something to take, and at most
    BLOCK_VARIANTS, so the driver writes results while the workers compute rather than all at the end."""
    size = block_size or min(BLOCK_VARIANTS, max(256, math.ceil(m / (4 * workers))))
    return [(lo, min(lo + size, m)) for lo in range(0, m, size)]


def _ray_blocks(inputs: GwasInputs, bounds: list[tuple[int, int]], out_format: str):
    """Each block a Ray task reading its own slice of the .bed; yields the results in variant order."""
    import ray

    block = ray.remote(num_cpus=1)(_block)
    genotypes, samples, groups = (ray.put(x) for x in (inputs.genotypes, inputs.sample_index, inputs.groups))
    pending = {block.remote(genotypes, samples, lo, hi, groups, out_format): i for i, (lo, hi) in enumerate(bounds)}
    done: dict[int, tuple] = {}
    next_block = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        done[pending.pop(ready[0])] = ray.get(ready[0])
        while next_block in done:
            yield done.pop(next_block)
            next_block += 1


def _write(inputs: GwasInputs, out: Path, blocks, *, plots: bool, clump: dict | None, out_format: str) -> dict:
    """Blocks (in variant order) into staged files, then summary, clumps and plots; moved into place at the end."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        writers = _Writers(inputs, stage / out.name, out_format)
        for block in blocks:
            writers.append(block)
        summary = writers.finish(plots=plots, clump=clump)
        for path in sorted(stage.iterdir()):
            os.replace(path, out.parent / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


class _Writers:
    """Per-phenotype tables written block by block. Each phenotype's -log10 p goes to a scratch file beside them
    (float64, in variant order) for the summary, clumping and plots, which read one phenotype at a time: memory
    does not grow with the variant count (154 phenotypes x 10^7 variants would be 12 GB)."""

    def __init__(self, inputs: GwasInputs, prefix: Path, out_format: str):
        self.inputs, self.prefix, self.out_format = inputs, prefix, out_format
        self.variants = inputs.genotypes.variants
        self.scratch = Path(tempfile.mkdtemp(prefix=".neg-log10-p-", dir=prefix.parent))
        self.files, self.log10_p = {}, {}
        for group in inputs.groups:
            for name in (["multi_trait"] if group.kind == "multi_trait" else group.names):
                path = f"{prefix}.{name}.{out_format}"
                self.files[name] = open(path, "wb") if out_format != "parquet" else path
                self.log10_p[name] = open(self.scratch / f"{len(self.log10_p)}.f64", "wb")

    def append(self, block: tuple[dict, dict[str, np.ndarray]]) -> None:
        texts, neg_log10_p = block
        for name, text in texts.items():
            if self.out_format == "parquet":
                import pyarrow.parquet as pq

                if isinstance(self.files[name], str):  # the first block gives the schema
                    self.files[name] = pq.ParquetWriter(self.files[name], text.schema)
                self.files[name].write_table(text)
            else:
                self.files[name].write(text)
            # written out, nothing kept: a kept view of a Ray result would pin the whole block (its text too)
            self.log10_p[name].write(np.ascontiguousarray(neg_log10_p[name], dtype=np.float64).data)

    def finish(self, *, plots: bool, clump: dict | None) -> dict:
        for f in self.files.values():
            if self.out_format == "tsv.gz":
                from Bio import bgzf

                bgzf.BgzfWriter(fileobj=f).close()  # BGZF's end-of-file marker block, once at the end; closes f
            else:
                f.close()
        for f in self.log10_p.values():
            f.close()
        try:
            return self._summarise(_NegLog10P({name: f.name for name, f in self.log10_p.items()}), plots, clump)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _summarise(self, neg_log10_p: "_NegLog10P", plots: bool, clump: dict | None) -> dict:
        summary = {"n_samples": int(self.inputs.sample_index.size), "n_variants": self.variants.height,
                   "covariates": self.inputs.covariate_names, "phenotypes": {}}
        threshold = -math.log10(GENOME_WIDE)
        for group in self.inputs.groups:
            df = len(group.names) if group.kind == "multi_trait" else 1
            for name in (["multi_trait"] if group.kind == "multi_trait" else group.names):
                neg = neg_log10_p[name]
                summary["phenotypes"][name] = {"test": group.kind, "n": int(group.rows.size),
                                               "lambda_gc": lambda_gc(neg, df), "hits": int((neg > threshold).sum()),
                                               "min_p": float(10 ** -np.nanmax(neg)) if np.isfinite(neg).any() else None,
                                               # the ranking key: min_p underflows to 0 below 1e-308
                                               "max_neg_log10_p": float(np.nan_to_num(np.nanmax(neg, initial=0.0),
                                                                                      posinf=np.finfo(float).max))}
        if clump is not None:  # every phenotype's clumps from one read of the genotypes near hits
            from comical.pipelines.statgen.clump import clump_phenotypes

            found = clump_phenotypes(self.inputs.genotypes, self.inputs.sample_index, neg_log10_p, **clump)
            for name, info in summary["phenotypes"].items():
                found[name].write_csv(f"{self.prefix}.{name}.clumps.tsv", separator="\t")
                info["clumps"] = found[name].height
        if plots:
            from comical.pipelines.statgen.gwas_plots import plot_all

            plot_all(self.variants, neg_log10_p, summary, self.prefix)
        Path(f"{self.prefix}.summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary


class _NegLog10P(Mapping):
    """Phenotype name -> its -log10 p over all variants, read from its scratch file on each access (one
    phenotype in memory at a time)."""

    def __init__(self, paths: dict[str, str]):
        self.paths = paths

    def __getitem__(self, name: str) -> np.ndarray:
        return np.fromfile(self.paths[name], dtype=np.float64)

    def __iter__(self):
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)


def lambda_gc(neg_log10_p: np.ndarray, df: int = 1) -> float | None:
    """Genomic inflation: median chi-square of the p-values over the chi-square median (df degrees of freedom).

    The chi-square quantile is monotone in p, so only the middle p-values are converted (a chi2.isf of every
    p-value costs seconds per phenotype at biobank scale)."""
    neg = np.sort(neg_log10_p[np.isfinite(neg_log10_p)])
    if neg.size == 0:
        return None
    middle = neg[[(neg.size - 1) // 2, neg.size // 2]]
    return float(special.chdtri(df, np.power(10.0, -middle)).mean() / special.chdtri(df, 0.5))


# ------------------------------------------------------------------ inputs from files or a cohort


def genotype_files(bfile: Path | None, pfile: Path | None, bgen: Path | None,
                   sample: Path | None) -> tuple[Callable[[], Genotypes] | None, list[Path]]:
    """The genotype input named by the flags: its opener (picklable, for Ray tasks) and its files."""
    given = [flag for flag, value in (("--bfile", bfile), ("--pfile", pfile), ("--bgen", bgen)) if value]
    if len(given) > 1:
        raise InputError(f"give one genotype input, not {' and '.join(given)}")
    if sample and not bgen:
        raise InputError("--sample goes with --bgen")
    if bfile:
        return functools.partial(open_genotypes, bfile), [with_ext(bfile, s) for s in (".bed", ".bim", ".fam")]
    if pfile:
        return functools.partial(open_pgen, pfile), [with_ext(pfile, s) for s in (".pgen", ".pvar", ".psam")]
    if bgen:
        sample = sample or bgen.with_suffix(".sample")
        return functools.partial(open_bgen, bgen, sample), [bgen, sample]
    return None, []


def tables_reader(*, cohort: Path | None, pheno: Path | None, covar: Path | None, out: Path, workers: int,
                  binary: bool, multi_trait: Path | None, mt_pcs: int | None, rank_normalise: bool,
                  pheno_names: list[str] | None, covar_names: list[str] | None, bfile: Path | None = None,
                  pfile: Path | None = None, bgen: Path | None = None, sample: Path | None = None,
                  keep: list[str] | None = None, extract: list[str] | None = None) -> Callable[[], GwasTables]:
    """`comical gwas`'s inputs checked (which files, none overwritten by --out), as the reader `run_gwas` calls.
    `keep` and `extract` are plink2's: the samples and the variants to test."""
    if workers < 1:
        raise InputError(f"--workers {workers}: expected at least 1")
    opener, geno_files = genotype_files(bfile, pfile, bgen, sample)
    if cohort is not None and (opener or pheno):
        raise InputError("give --cohort, or a genotype input with --pheno, not both")
    if cohort is None and not (opener and pheno):
        raise InputError("give --bfile PREFIX, --pfile PREFIX or --bgen FILE [--sample FILE], with --pheno FILE "
                         "[--covar FILE]; or --cohort DIR")
    if multi_trait and cohort is None:
        raise InputError("--multi-trait runs on a --cohort folder")
    given = [cohort, multi_trait] if cohort else [pheno, covar, *geno_files]
    prefix = str(out.resolve()) + "."
    for path in filter(None, given):
        if str(path.resolve()).startswith(prefix) or path.resolve() == out.resolve():
            raise InputError(f"--out {out}: would write over the input {path}; choose another prefix")
    if cohort is not None:
        reader = functools.partial(tables_from_cohort, cohort, binary=binary, pheno_names=pheno_names,
                                   covar_names=covar_names, multi_trait=multi_trait, mt_pcs=mt_pcs,
                                   rank_normalise=rank_normalise)
    else:
        reader = functools.partial(tables_from_files, opener, pheno, covar, pheno_names=pheno_names,
                                   covar_names=covar_names, binary=True if binary else None)
    return reader if keep is None and extract is None else functools.partial(_narrowed, reader, keep, extract)


def _narrowed(reader: Callable[[], GwasTables], keep: list[str] | None, extract: list[str] | None) -> GwasTables:
    tables = reader()
    return dataclasses.replace(tables, keep=keep, genotypes=subset_variants(tables.genotypes, extract, "--extract"))


def tables_from_files(open_genotype_files: Callable[[], Genotypes], pheno: Path, covar: Path | None, *,
                      pheno_names: list[str] | None, covar_names: list[str] | None, binary: bool | None) -> GwasTables:
    genotypes = open_genotype_files()
    phenotypes = read_table(pheno, columns=pheno_names, allow_missing=True)
    if phenotypes.width < 2:
        raise InputError(f"{pheno}: no phenotype columns")
    covariates = (read_table(covar, columns=covar_names, allow_missing=True) if covar is not None
                  else pl.DataFrame({"eid": phenotypes["eid"]}))
    return GwasTables(genotypes, phenotypes, covariates, source=f"{pheno}" + (f", {covar}" if covar else ""),
                      binary=binary)


def tables_from_cohort(cohort_dir: Path, *, binary: bool, pheno_names: list[str] | None,
                       covar_names: list[str] | None, multi_trait: Path | None = None, mt_pcs: int | None = None,
                       rank_normalise: bool = False) -> GwasTables:
    from comical.data_io.cohort import load_cohort

    # no table must be complete: a phenotype's gaps leave out its own subjects, and the model's covariates (not the
    # cohort's other columns) leave out theirs, as in plink2
    cohort = load_cohort(cohort_dir, needs=())
    covariates = cohort.covariates.select("eid", *(covar_names or DEFAULT_COHORT_COVARIATES))
    gaps = covariates.filter(pl.any_horizontal(pl.exclude("eid").is_null())).height
    if gaps:
        print(f"gwas: {gaps:,} subjects left out: a missing value in the model's covariates "
              f"({', '.join(covariates.columns[1:4])}{' ...' if covariates.width > 4 else ''})")
    if multi_trait is not None:  # default traits: every numeric column (`comical embed` also writes list columns)
        schema = pl.read_parquet_schema(multi_trait) if multi_trait.suffix == ".parquet" else None
        columns = pheno_names or ([c for c, t in schema.items() if c != "eid" and t.is_numeric()] if schema else None)
        return GwasTables(cohort.genotypes, read_table(multi_trait, columns=columns), covariates,
                          source=str(multi_trait), multi_trait=True, mt_pcs=mt_pcs, rank_normalise=rank_normalise)
    table = cohort.diagnoses if binary else cohort.idps
    phenotypes = table.select("eid", *pheno_names) if pheno_names else table
    return GwasTables(cohort.genotypes, phenotypes, covariates, source=str(cohort_dir), binary=binary or None)


def embedding_traits(table: pl.DataFrame, *, n_pcs: int | None, rank_normalise: bool) -> pl.DataFrame:
    """Paper 001's preprocessing of embeddings before the multi-trait test: top PCs, then rank-based inverse normal."""
    values = table.drop("eid").to_numpy().astype(float)
    if np.isnan(values).any():
        raise InputError("multi-trait embeddings: missing values; expected a complete table")
    if n_pcs:
        if not 1 <= n_pcs <= values.shape[1]:
            raise InputError(f"--mt-pcs {n_pcs}: expected 1..{values.shape[1]} (the embedding's dimensions)")
        centred = values - values.mean(0)
        u, s, _ = np.linalg.svd(centred, full_matrices=False)
        values = u[:, :n_pcs] * s[:n_pcs]
    if rank_normalise:
        from scipy import stats

        ranks = stats.rankdata(values, axis=0)
        values = stats.norm.ppf((ranks - 0.5) / len(values))
    return pl.DataFrame({"eid": table["eid"], **{f"dim{i}": values[:, i] for i in range(values.shape[1])}})
