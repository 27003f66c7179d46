"""Benchmark: `comical gwas` against plink2 `--glm` on the paper cohort, whole processes, in one run.

    python benchmarks/bench_gwas.py --work /tmp/bench-gwas [--plink2-phenotypes 4] [--repeats 3] [--copies 10]

Inputs: the `paper` cohort (40,426 subjects; simulated here unless --work holds it), its GWAS Catalog variants
(5,632 genotyped; ~3% missing calls), the 154 IDPs as phenotypes, covariates age, sex, PC1-10. Rows:
  one phenotype: plink2 --glm --threads 2 vs comical gwas --workers 1 (in-process, one CPU) and --workers 2 (a
  local Ray started and stopped by the command);
  all 154 IDPs: comical gwas (with its combined plots) vs plink2 on `--plink2-phenotypes` IDPs, scaled to 154
  (plink2 runs each phenotype separately once missing calls push it off its fast path; the measured
  per-phenotype time is linear, and 154 of them take ~30 min);
  workers: comical gwas --workers 1 and 2 on a larger variant set: the cohort's 20,000 variants `--copies` times
  over (renamed; the bed's variant records concatenated), x 154 IDPs. Fixed costs (imports, Ray's start and stop,
  summary and clumping) are paid once, as in a biobank run of 10^5-10^7 variants;
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
    thread.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {err.decode()[-2000:]}")
    return time.perf_counter() - start, peak / 2**30


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--plink2-phenotypes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=10, help="the workers rows' variant set: the cohort's x this")
    args = parser.parse_args()
    if shutil.which("plink2") is None:
        subprocess.run(["apt-get", "install", "-y", "plink2"], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    cohort, catalog, pheno, covar, names = prepare(args.work)
    out = args.work / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    comical = [sys.executable, "-m", "comical", "gwas", "--pheno", str(pheno), "--covar", str(covar)]
    plink = ["plink2", "--threads", "2", "--pheno", str(pheno), "--covar", str(covar), "--glm", "hide-covar",
             "--covar-variance-standardize"]  # plink2 refuses raw age beside PCs (scale check); OLS beta is unchanged
    first, some = names[0], ",".join(names[:args.plink2_phenotypes])
    one = [*comical, "--bfile", str(catalog), "--pheno-name", first, "--no-plots"]
    larger = replicate(cohort / "genotypes", args.copies, args.work / f"variants_x{args.copies}")
    m = open_genotypes(larger).n_variants
    commands = {
        "plink2, 1 IDP": ([*plink, "--bfile", str(catalog), "--pheno-name", first, "--out", str(out / "p1")], env),
        "comical, 1 IDP, --workers 1 (in-process)": ([*one, "--workers", "1", "--out", str(out / "c1")], env),
        "comical, 1 IDP, --workers 2 (own local Ray)": ([*one, "--workers", "2", "--out", str(out / "c1")], env),
        f"plink2, {args.plink2_phenotypes} IDPs": ([*plink, "--bfile", str(catalog), "--pheno-name", some,
                                                    "--out", str(out / "pn")], env),
        "comical, 154 IDPs, --workers 1 (with plots)": ([*comical, "--bfile", str(catalog), "--workers", "1",
                                                         "--out", str(out / "c154")], env),
        "comical, 154 IDPs, --workers 2 (with plots)": ([*comical, "--bfile", str(catalog), "--workers", "2",
                                                         "--out", str(out / "c154")], env),
        f"comical, {m:,} variants x 154 IDPs, --workers 1": (
            [*comical, "--bfile", str(larger), "--workers", "1", "--no-plots", "--out", str(out / "w")], env),
        f"comical, {m:,} variants x 154 IDPs, --workers 2": (
            [*comical, "--bfile", str(larger), "--workers", "2", "--no-plots", "--out", str(out / "w")], env),
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, (command, command_env) in commands.items():
            runs[name].append(timed(command, command_env))
            for path in out.iterdir():
                path.unlink()
    rows = {name: (statistics.median(t for t, _ in r), max(g for _, g in r)) for name, r in runs.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {sum(1 for _ in open(catalog.with_suffix('.bim')))}"
          f" catalog variants x 40,426 subjects; median of {args.repeats} runs each")
    print("| run | wall s | peak GiB |\n|---|---|---|")
    for name, (seconds, gib) in rows.items():
        print(f"| {name} | {seconds:.1f} | {gib:.2f} |")
    plink_154 = rows[f"plink2, {args.plink2_phenotypes} IDPs"][0] / args.plink2_phenotypes * 154
    print(f"| plink2, 154 IDPs (scaled from {args.plink2_phenotypes}) | {plink_154:.0f} | |")
    w1, w2 = (rows[f"comical, {m:,} variants x 154 IDPs, --workers {w}"][0] for w in (1, 2))
    plink_1 = rows["plink2, 1 IDP"][0]
    print(f"1 IDP: plink2 / comical --workers 1 = {plink_1 / rows['comical, 1 IDP, --workers 1 (in-process)'][0]:.1f}x"
          f", / --workers 2 = {plink_1 / rows['comical, 1 IDP, --workers 2 (own local Ray)'][0]:.1f}x; 154 IDPs: "
          f"plink2 (scaled) / comical --workers 1 = "
          f"{plink_154 / rows['comical, 154 IDPs, --workers 1 (with plots)'][0]:.1f}x, / --workers 2 = "
          f"{plink_154 / rows['comical, 154 IDPs, --workers 2 (with plots)'][0]:.1f}x; "
          f"{m:,} variants: --workers 2 / --workers 1 = {w1 / w2:.2f}x")


if __name__ == "__main__":
    main()
