"""Benchmark: `comical gwas` against plink2 `--glm`, whole processes, measured side by side in one run.

    python benchmarks/bench_gwas.py --work /tmp/bench-gwas [--repeats 1] [--copies 10] [--only TEXT ...]

Every plink2 row is plink2 itself on every phenotype named, in one process (`--glm --threads 2`); nothing is
scaled. comical runs with clumping on (plink2 does not clump; one synthetic row without) and plots off (plink2 does
not plot). Inputs:
  synthetic: 10,000 samples x 2,000 variants in LD blocks, 1% missing calls, 154 quantitative phenotypes each
  with 10 causal variants (so clumping has many hits to work on), covariates age and sex;
  the `paper` cohort (40,426 subjects; simulated here unless --work holds it): its GWAS Catalog variants (5,577
  genotyped; ~3% missing calls) x its 154 IDPs, and one IDP; covariates age, sex, PC1-10;
  workers and formats: the cohort's 20,000 variants as .bed, .pgen (plink2 --make-pgen) and BGEN 1.2 (plink2
  --export bgen-1.2 ref-first), x 154 IDPs; and the .bed and .pgen `--copies` times over (renamed; the bed's
  variant records concatenated), where fixed costs are paid once, as in a biobank run: peak memory should not
  grow with the variant count for any format;
Wall time and peak memory (summed PSS of the whole process tree) of each command, the median of --repeats runs
taken in turns (this machine's timings wander by 20-30% from run to run); plink2 from `apt-get install plink2`.
Outputs of each command are deleted after it (the larger set writes ~4 GB of TSV per 100,000 variants).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import psutil

from comical.data_io.catalog import read_gwas_catalog
from comical.data_io.plink import BED_MAGIC, BIM_COLUMNS, open_genotypes


def timed(command: list[str], env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak memory (GiB) of a command and all its children: the sum of their proportional set
    sizes, so pages they share (Ray's object store, mapped by the store, the workers and the driver) count once.
    Sampled every 0.5 s: reading PSS walks each process's page tables, and sampling every 50 ms slowed a
    2-worker run on 2 cores by 12%."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0.0

    def watch():
        nonlocal peak
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_full_info().pss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=watch)
    thread.start()
    _, err = process.communicate()
    seconds = time.perf_counter() - start  # before joining the sampler, which may still sleep up to 0.5 s
    thread.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {err.decode()[-2000:]}")
    return seconds, peak / 2**30


def prepare(work: Path) -> tuple[Path, Path, Path, Path, list[str]]:
    comical = [sys.executable, "-m", "comical"]
    cohort = work / "paper"
    if not (cohort / "genotypes.bed").exists():
        subprocess.run([*comical, "simulate", "--preset", "paper", "--out", str(cohort)], check=True)
    ids = set(open_genotypes(cohort / "genotypes").variants["variant_id"]) & set(
        read_gwas_catalog(cohort / "gwas_catalog.tsv")["SNPS"])
    (work / "catalog.txt").write_text("\n".join(sorted(ids)) + "\n")
    if not (work / "catalog.bed").exists():
        subprocess.run(["plink2", "--bfile", cohort / "genotypes", "--extract", work / "catalog.txt", "--make-bed",
                        "--out", work / "catalog"], check=True, capture_output=True)
    idps = pl.read_csv(cohort / "idps.csv", infer_schema=False)
    names = idps.columns[1:]
    idps.select(pl.col("eid").alias("#FID"), pl.col("eid").alias("IID"), *names).write_csv(
        work / "pheno.txt", separator="\t")
    covariates = pl.read_csv(cohort / "covariates.csv", infer_schema=False)
    covariates.select(pl.col("eid").alias("#FID"), pl.col("eid").alias("IID"), "age", "sex",
                      *[f"PC{i}" for i in range(1, 11)]).write_csv(work / "covar.txt", separator="\t")
    return cohort, work / "catalog", work / "pheno.txt", work / "covar.txt", names


def replicate(prefix: Path, copies: int, out: Path) -> Path:
    """A fileset holding `prefix`'s variants `copies` times over (IDs suffixed _0, _1, ...): the .bed is
    variant-major, so its variant records concatenate."""
    if out.with_suffix(".bed").exists():
        return out
    bim = pl.read_csv(prefix.with_suffix(".bim"), separator="\t", has_header=False, new_columns=BIM_COLUMNS,
                      infer_schema=False)
    pl.concat([bim.with_columns(pl.col("variant_id") + f"_{i}") for i in range(copies)]).write_csv(
        out.with_suffix(".bim"), separator="\t", include_header=False)
    shutil.copy(prefix.with_suffix(".fam"), out.with_suffix(".fam"))
    with open(out.with_suffix(".bed.partial"), "wb") as bed:
        bed.write(BED_MAGIC)
        for _ in range(copies):
            with open(prefix.with_suffix(".bed"), "rb") as source:
                source.seek(len(BED_MAGIC))
                shutil.copyfileobj(source, bed, 16 << 20)
    os.replace(out.with_suffix(".bed.partial"), out.with_suffix(".bed"))
    return out


def synthetic(work: Path, n: int = 10_000, m: int = 2_000, phenotypes: int = 154, seed: int = 0) -> Path:
    """A .bed with LD blocks and 1% missing calls, and 154 phenotypes with 10 causal variants each."""
    import numpy as np
    from bed_reader import to_bed
    from scipy import stats

    prefix = work / "synthetic"
    if prefix.with_suffix(".bed").exists():
        return prefix
    rng = np.random.default_rng(seed)
    block = 10
    latent = rng.normal(size=(n, m // block))
    noise = rng.normal(size=(n, m))
    correlated = 0.9 * np.repeat(latent, block, axis=1) + np.sqrt(1 - 0.81) * noise  # r ~ 0.8 within a block
    freq = rng.uniform(0.05, 0.5, m)
    cut_low, cut_high = stats.norm.ppf((1 - freq) ** 2), stats.norm.ppf(1 - freq ** 2)
    g = (correlated > cut_low).astype(np.float32) + (correlated > cut_high)
    g[rng.random(g.shape) < 0.01] = np.nan
    ids = [f"s{i}" for i in range(n)]
    to_bed(prefix.with_suffix(".bed"), g, properties={
        "fid": ids, "iid": ids, "sid": [f"v{j}" for j in range(m)], "chromosome": ["1"] * m,
        "bp_position": list(range(10_000, 10_000 + 5_000 * m, 5_000)), "allele_1": ["A"] * m, "allele_2": ["G"] * m})
    filled = np.where(np.isnan(g), 2 * freq, g)
    age, sex = rng.normal(55, 7, n), rng.integers(0, 2, n)
    columns = {}
    for k in range(phenotypes):
        causal = rng.choice(m, 10, replace=False)
        columns[f"y{k}"] = filled[:, causal] @ rng.normal(0, 0.15, 10) + 0.02 * age + 0.3 * sex + rng.normal(size=n)
    pl.DataFrame({"#FID": ids, "IID": ids, **columns}).write_csv(work / "synthetic_pheno.txt", separator="\t")
    pl.DataFrame({"#FID": ids, "IID": ids, "age": age, "sex": sex}).write_csv(work / "synthetic_covar.txt",
                                                                            separator="\t")
    return prefix


def as_pgen(prefix: Path, work: Path) -> Path:
    """`prefix` as a .pgen fileset, written by plink2."""
    pfile = work / f"{prefix.name}_pgen"
    if not pfile.with_suffix(".pgen").exists():
        # --sort-vars: the replicated set repeats each chromosome, which plink2 only writes sorted
        subprocess.run(["plink2", "--bfile", prefix, "--make-pgen", "--sort-vars", "--out", pfile], check=True,
                       capture_output=True)
    return pfile


def as_bgen(prefix: Path, work: Path) -> Path:
    """`prefix` as BGEN 1.2 (REF first, as UK Biobank's), written by plink2 from its .pgen (sorted variants)."""
    bgen = work / f"{prefix.name}_bgen"
    if not bgen.with_suffix(".bgen").exists():
        subprocess.run(["plink2", "--pfile", as_pgen(prefix, work), "--export", "bgen-1.2", "ref-first", "--out", bgen],
                       check=True, capture_output=True)
    return bgen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--copies", type=int, default=10, help="the workers rows' variant set: the cohort's x this")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the rows whose name contains this text (repeatable)")
    args = parser.parse_args()
    if shutil.which("plink2") is None:
        subprocess.run(["apt-get", "install", "-y", "plink2"], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    cohort, catalog, pheno, covar, names = prepare(args.work)
    synth = synthetic(args.work)
    out = args.work / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    comical = [sys.executable, "-m", "comical", "gwas", "--pheno", str(pheno), "--covar", str(covar), "--no-plots"]
    plink = ["plink2", "--threads", "2", "--pheno", str(pheno), "--covar", str(covar), "--glm", "hide-covar",
             "--covar-variance-standardize"]  # plink2 refuses raw age beside PCs (scale check); OLS beta is unchanged
    synth_files = ["--pheno", str(args.work / "synthetic_pheno.txt"), "--covar", str(args.work / "synthetic_covar.txt")]
    larger = replicate(cohort / "genotypes", args.copies, args.work / f"variants_x{args.copies}")
    pfile, large_pfile = as_pgen(cohort / "genotypes", args.work), as_pgen(larger, args.work)
    bgen, large_bgen = as_bgen(cohort / "genotypes", args.work), as_bgen(larger, args.work)
    m = open_genotypes(larger).n_variants
    one = ["--pheno-name", names[0]]
    commands = {
        "synthetic 10,000 x 2,000, 154 phenotypes: plink2": [
            "plink2", "--threads", "2", "--bfile", synth, *synth_files, "--glm", "hide-covar", "--out", out / "s"],
        "synthetic 10,000 x 2,000, 154 phenotypes: comical --workers 1": [
            sys.executable, "-m", "comical", "gwas", "--bfile", str(synth), *synth_files, "--no-plots",
            "--workers", "1", "--out", str(out / "cs")],
        "synthetic 10,000 x 2,000, 154 phenotypes: comical --workers 1 --no-clump": [
            sys.executable, "-m", "comical", "gwas", "--bfile", str(synth), *synth_files, "--no-plots", "--no-clump",
            "--workers", "1", "--out", str(out / "cs")],
        "synthetic 10,000 x 2,000, 154 phenotypes: comical --workers 2": [
            sys.executable, "-m", "comical", "gwas", "--bfile", str(synth), *synth_files, "--no-plots",
            "--workers", "2", "--out", str(out / "cs")],
        "paper catalog, 1 IDP: plink2": [*plink, "--bfile", catalog, *one, "--out", out / "p1"],
        "paper catalog, 1 IDP: comical --workers 1": [*comical, "--bfile", str(catalog), *one, "--out", str(out / "c1")],
        "paper catalog, 1 IDP: comical --workers 2": [*comical, "--bfile", str(catalog), *one, "--workers", "2",
                                                      "--out", str(out / "c1")],
        "paper catalog, 154 IDPs: plink2": [*plink, "--bfile", catalog, "--out", out / "p154"],
        "paper catalog, 154 IDPs: comical --workers 1": [*comical, "--bfile", str(catalog), "--out", str(out / "c")],
        "paper catalog, 154 IDPs: comical --workers 2": [*comical, "--bfile", str(catalog), "--workers", "2",
                                                         "--out", str(out / "c")],
    }
    for fmt, flags in (("bed", ["--bfile", str(cohort / "genotypes")]), ("pgen", ["--pfile", str(pfile)]),
                       ("bgen", ["--bgen", str(bgen.with_suffix(".bgen"))])):
        commands[f"20,000 variants x 154 IDPs, {fmt}: comical --workers 2"] = [*comical, *flags, "--workers", "2",
                                                                              "--out", str(out / "f")]
    for fmt, flags in (("bed", ["--bfile", str(larger)]), ("pgen", ["--pfile", str(large_pfile)]),
                       ("bgen", ["--bgen", str(large_bgen.with_suffix(".bgen"))])):
        for workers in ("1", "2"):
            commands[f"{m:,} variants x 154 IDPs, {fmt}: comical --workers {workers}"] = [
                *comical, *flags, "--workers", workers, "--out", str(out / "w")]
    if args.only:
        commands = {name: c for name, c in commands.items() if any(text in name for text in args.only)}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            runs[name].append(timed([str(c) for c in command], env))
            print(f"{name}: {runs[name][-1][0]:.1f} s, {runs[name][-1][1]:.2f} GiB", file=sys.stderr, flush=True)
            for path in out.iterdir():
                path.unlink()
    rows = {name: (statistics.median(t for t, _ in r), max(g for _, g in r)) for name, r in runs.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {sum(1 for _ in open(catalog.with_suffix('.bim')))}"
          f" catalog variants x 40,426 subjects; median of {args.repeats} runs each")
    print("| run | wall s | peak GiB |\n|---|---|---|")
    for name, (seconds, gib) in rows.items():
        print(f"| {name} | {seconds:.1f} | {gib:.2f} |")
    for setting in ("synthetic 10,000 x 2,000, 154 phenotypes", "paper catalog, 1 IDP", "paper catalog, 154 IDPs"):
        if not all(f"{setting}: {who}" in rows for who in ("plink2", "comical --workers 1", "comical --workers 2")):
            continue
        theirs = rows[f"{setting}: plink2"][0]
        print(f"{setting}: plink2 / comical --workers 1 = {theirs / rows[f'{setting}: comical --workers 1'][0]:.1f}x, "
              f"/ --workers 2 = {theirs / rows[f'{setting}: comical --workers 2'][0]:.1f}x")


if __name__ == "__main__":
    main()
