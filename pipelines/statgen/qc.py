"""Genotype QC: sample and variant filters as plink2 applies them, heterozygosity outliers, LD pruning, 40 PCs.

    comical qc --cohort DIR --out DIR

Order (plink2's): `--mind` on all variants; then, on the samples left, `--geno`, `--hwe` and `--maf`
(each count in the report is among the variants left by the filters before it). Then LD pruning of the
kept variants, heterozygosity F on the pruned set (outliers beyond mean +- `het_sd` SD removed), and PCs of
the kept samples on the pruned variants. The kept sets equal `plink2 --bfile G --mind 0.1 --geno 0.1
--hwe 1e-16 --maf 0.05 --write-snplist --write-samples` (tested).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
from scipy.special import gammaln, logsumexp
from tqdm import tqdm

from comical.data_io.cohort import Cohort
from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.pca import MISSING_INT8, genotype_pcs
from comical.data_io.plink import subset_variants

_BLOCK = 2048  # variants read from the bed at a time


@dataclasses.dataclass(frozen=True)
class QCConfig(Config):
    mind: float = 0.1  # max missing-call rate of a sample (paper: samples missing > 10% removed)
    geno: float = 0.1  # max missing-call rate of a variant (plink's customary 0.1)
    hwe: float = 1e-16  # min Hardy-Weinberg exact-test p (paper: p < 1e-16 removed)
    maf: float = 0.05  # min minor allele frequency (paper: MAF < 0.05 removed)
    het_sd: float = 3.0  # heterozygosity outliers: |F - mean F| > het_sd SD
    prune_window: int = 50  # LD pruning window, in variants (plink --indep-pairwise 50 5 0.2)
    prune_step: int = 5
    prune_r2: float = 0.2
    n_pcs: int = 40  # paper: forty PCs
    seed: int = 0  # randomized SVD


@dataclasses.dataclass
class QCResult:
    samples: pl.DataFrame  # eid, missing_rate, het_f, filter ("PASS", or the filter that removed it: mind, het)
    variants: pl.DataFrame  # variant_id chrom pos allele1 allele2 missing_rate a1_freq maf hwe_p filter pruned_in
    # (variant filter: "PASS", or the one that removed it: geno, hwe, maf)
    pcs: pl.DataFrame  # eid, PC1..PCn for kept samples
    eigenvalues: np.ndarray
    report: dict

    def write(self, out: Path) -> None:
        """Write the tables plink users expect (snplist, keep file, prune.in, eigenvec) and the report."""
        self.samples.write_csv(out / "sample_qc.tsv", separator="\t")
        self.variants.write_csv(out / "variant_qc.tsv", separator="\t")
        kept = self.variants.filter(pl.col("filter") == "PASS")
        kept.select("variant_id").write_csv(out / "kept_variants.snplist", include_header=False)
        kept.filter(pl.col("pruned_in")).select("variant_id").write_csv(out / "pruned.prune.in", include_header=False)
        eids = self.samples.filter(pl.col("filter") == "PASS")["eid"]
        pl.DataFrame({"#FID": eids, "IID": eids}).write_csv(out / "kept_samples.id", separator="\t")
        self.pcs.rename({"eid": "IID"}).insert_column(0, self.pcs["eid"].alias("#FID")).write_csv(
            out / "pcs.eigenvec", separator="\t", float_precision=6)
        (out / "pcs.eigenval").write_text("".join(f"{v:.6g}\n" for v in self.eigenvalues))
        (out / "qc_report.json").write_text(json.dumps(self.report, indent=2) + "\n")

    @classmethod
    def read(cls, folder: str | Path) -> QCResult:
        """A QC written by `write` (`--qc DIR`), checked to be one."""
        folder = Path(folder)
        needed = ["sample_qc.tsv", "variant_qc.tsv", "pcs.eigenvec", "pcs.eigenval", "qc_report.json"]
        missing = [f for f in needed if not (folder / f).is_file()]
        if missing:
            raise InputError(f"--qc {folder}: not a QC output folder (missing {missing}); make one with `comical qc`")
        samples = pl.read_csv(folder / "sample_qc.tsv", separator="\t", schema_overrides={"eid": pl.String})
        variants = pl.read_csv(folder / "variant_qc.tsv", separator="\t", schema_overrides={"chrom": pl.String})
        pcs = pl.read_csv(folder / "pcs.eigenvec", separator="\t", schema_overrides={"IID": pl.String})
        pcs = pcs.drop("#FID").rename({"IID": "eid"})
        eigenvalues = np.loadtxt(folder / "pcs.eigenval", ndmin=1)
        return cls(samples, variants, pcs, eigenvalues, json.loads((folder / "qc_report.json").read_text()))


def run_qc(cohort: Cohort, config: QCConfig = QCConfig(), extract: list[str] | None = None) -> QCResult:
    """QC of the cohort's analysis samples (genotyped and in every table): filters, pruning, PCs.

    Returns per-sample and per-variant tables with the filter that removed each (empty if kept), the PCs
    of the kept samples, and a report of counts removed per filter. `extract` (plink2's --extract) limits QC to
    the variants it names: the others stay in the variant table, filtered as `extract`, so its rows remain the
    genotypes' variants in order.
    """
    geno = cohort.genotypes
    rows = cohort.sample_index
    eid = cohort.eids
    n, m = rows.size, geno.n_variants
    listed = subset_variants(geno, extract, "--extract").index if extract is not None else np.arange(m)
    # only the listed variants are read (slices when all are: a whole-file read stays sequential)
    blocks = [slice(s, s + _BLOCK) if extract is None else listed[s:s + _BLOCK] for s in range(0, listed.size, _BLOCK)]

    sample_missing = np.zeros(n)
    for columns in tqdm(blocks, desc="qc: sample call rates", leave=False):
        block = geno.read(rows, columns, dtype=np.int8)
        sample_missing += (block == MISSING_INT8).sum(axis=1)
    sample_missing /= listed.size
    sample_filter = np.where(sample_missing > config.mind, "mind", "PASS").astype(object)
    keep_s = rows[sample_filter == "PASS"]

    stats = [_variant_stats(geno.read(keep_s, columns, dtype=np.int8))
             for columns in tqdm(blocks, desc="qc: variant stats", leave=False)]
    missing_rate, a1_freq, hwe_p = (np.full(m, np.nan) for _ in range(3))  # NaN: a variant --extract left out
    for column, values in zip((missing_rate, a1_freq, hwe_p), (np.concatenate(x) for x in zip(*stats))):
        column[listed] = values
    maf = np.minimum(a1_freq, 1 - a1_freq)
    variant_filter = np.full(m, "extract", dtype=object)
    variant_filter[listed] = "PASS"
    for name, failed in (("geno", missing_rate > config.geno), ("hwe", hwe_p < config.hwe),
                         ("maf", maf < config.maf)):
        variant_filter[(variant_filter == "PASS") & failed] = name
    kept_v = np.flatnonzero(variant_filter == "PASS")

    kept_genotypes = geno.read(keep_s, kept_v, dtype=np.int8)
    chrom = geno.variants["chrom"].to_numpy()[kept_v]
    pruned = kept_v[ld_prune(kept_genotypes, chrom, maf[kept_v], window=config.prune_window,
                             step=config.prune_step, r2=config.prune_r2)]
    del kept_genotypes  # the PCA below needs the memory
    pruned_genotypes = geno.read(keep_s, pruned, dtype=np.int8)
    het_f = np.full(n, np.nan)
    f = heterozygosity_f(pruned_genotypes)
    het_f[sample_filter == "PASS"] = f
    outlier = np.abs(f - f.mean()) > config.het_sd * f.std()
    sample_filter[np.flatnonzero(sample_filter == "PASS")[outlier]] = "het"
    final = sample_filter == "PASS"
    scores, eigenvalues = genotype_pcs(pruned_genotypes[~outlier], config.n_pcs, seed=config.seed)

    variants = geno.variants.select("variant_id", "chrom", "pos", "allele1", "allele2").with_columns(
        pl.Series("missing_rate", missing_rate), pl.Series("a1_freq", a1_freq), pl.Series("maf", maf),
        pl.Series("hwe_p", hwe_p), pl.Series("filter", variant_filter.astype(str)),
        pl.Series("pruned_in", np.isin(np.arange(m), pruned)))
    samples = pl.DataFrame({"eid": eid, "missing_rate": sample_missing, "het_f": het_f,
                            "filter": sample_filter.astype(str)})
    pcs = pl.DataFrame({"eid": eid.filter(pl.Series(final))}).with_columns(
        pl.from_numpy(scores, schema=[f"PC{i + 1}" for i in range(config.n_pcs)]))
    report = {
        "samples": {"input": int(n), "removed_mind": int((sample_filter == "mind").sum()),
                    "removed_het": int((sample_filter == "het").sum()), "kept": int(final.sum()),
                    "left_out_before_qc": cohort.dropped},  # no genotypes, or a missing value (data_io/cohort.py)
        "variants": {"input": int(m), **{f"removed_{k}": int((variant_filter == k).sum())
                                         for k in ("extract", "geno", "hwe", "maf")},
                     "kept": int(kept_v.size), "pruned_in": int(pruned.size)},
        "config": config.to_dict(),
    }
    truth = cohort.path / "truth" / "samples.parquet"
    if truth.is_file():  # simulated cohort: how much of each PC the planted subpopulations explain
        report["planted_structure"] = {"population_eta2_by_pc": _population_eta2(pcs, pl.read_parquet(truth))}
    return QCResult(samples, variants, pcs, eigenvalues, report)


def _population_eta2(pcs: pl.DataFrame, truth: pl.DataFrame) -> list[float]:
    """Between-population share of each PC's variance (eta squared), for the first five PCs."""
    table = pcs.join(truth.select(pl.col("eid").cast(pl.String), "population"), on="eid")
    eta2 = []
    for k in range(1, min(5, pcs.width - 1) + 1):
        pc = table[f"PC{k}"]
        means = table.group_by("population").agg(pl.col(f"PC{k}").mean().alias("mean"), pl.len().alias("n"))
        between = float((means["n"] * (means["mean"] - pc.mean()) ** 2).sum())
        eta2.append(round(between / float(((pc - pc.mean()) ** 2).sum()), 4))
    return eta2


def _variant_stats(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Missing rate, allele-1 frequency and HWE exact p of each variant (column) of an int8 block."""
    counts = np.stack([(block == g).sum(axis=0) for g in (0, 1, 2)])  # 3 x variants
    called = counts.sum(axis=0)
    a1_freq = (counts[1] + 2 * counts[2]) / np.maximum(2 * called, 1)
    hwe = np.array([hwe_exact_p(*c) for c in counts.T])
    return 1 - called / block.shape[0], a1_freq, hwe


def hwe_exact_p(hom1: int, het: int, hom2: int) -> float:
    """Hardy-Weinberg exact test p-value (Wigginton, Cutler & Abecasis 2005), as plink's `--hwe`.

    Sums the probabilities, given the allele counts, of every heterozygote count no more likely than
    the observed one. Computed in log space so p-values down to 1e-300 keep their magnitude.
    """
    n = hom1 + het + hom2
    if n == 0:
        return 1.0
    rare = min(2 * hom1 + het, 2 * hom2 + het)
    h = np.arange(rare % 2, rare + 1, 2)
    hom_rare = (rare - h) // 2
    hom_common = n - h - hom_rare
    logp = h * np.log(2) - gammaln(h + 1) - gammaln(hom_rare + 1) - gammaln(hom_common + 1)
    observed = logp[np.searchsorted(h, het)]
    # plink treats probabilities within a relative 1e-7 of the observed one as ties.
    return float(min(1.0, np.exp(logsumexp(logp[logp <= observed + 1e-7]) - logsumexp(logp))))


def heterozygosity_f(genotypes: np.ndarray) -> np.ndarray:
    """Inbreeding coefficient F per sample, as `plink2 --het`: (O(hom) - E(hom)) / (N - E(hom)).

    E(hom) sums 1 - 2p(1-p) over the sample's called variants, p from all samples' calls (no small-sample
    correction, as plink2). Accumulated over variant blocks so memory stays near the int8 input.
    """
    n = genotypes.shape[0]
    obs_hom, exp_hom, n_called = np.zeros(n), np.zeros(n), np.zeros(n)
    for start in range(0, genotypes.shape[1], 512):
        block = genotypes[:, start:start + 512]
        called = block != MISSING_INT8
        count = called.sum(axis=0)
        p = np.where(called, block, 0).sum(axis=0) / np.maximum(2 * count, 1)
        obs_hom += (called & (block != 1)).sum(axis=1)
        exp_hom += called.astype(np.float64) @ (1 - 2 * p * (1 - p))
        n_called += called.sum(axis=1)
    return (obs_hom - exp_hom) / (n_called - exp_hom)


def ld_prune(genotypes: np.ndarray, chrom: np.ndarray, maf: np.ndarray, *, window: int = 50, step: int = 5,
             r2: float = 0.2) -> np.ndarray:
    """Indices of variants kept by pairwise LD pruning (the algorithm of `plink --indep-pairwise W S r2`).

    Windows of `window` variants on one chromosome slide by `step`; within a window, while some pair of
    still-kept variants has r^2 > `r2`, the one with the lower MAF (the later one on ties) is removed.
    r is the correlation of allele counts over the samples called at both variants.
    """
    m = genotypes.shape[1]
    keep = np.ones(m, bool)
    band = _banded_r2(genotypes, window)
    for start in range(0, m, step):
        idx = np.arange(start, min(start + window, m))
        idx = idx[(chrom[idx] == chrom[start]) & keep[idx]]
        if idx.size < 2:
            continue
        sub = band[idx[:, None], np.clip(idx[None, :] - idx[:, None], 0, window - 1)]
        sub = np.triu(sub, 1)
        alive = np.ones(idx.size, bool)
        while True:
            live = sub * np.outer(alive, alive)
            i, j = np.unravel_index(np.argmax(live > r2), live.shape)
            if live[i, j] <= r2:
                break
            drop = i if maf[idx[i]] < maf[idx[j]] else j
            alive[drop] = False
        keep[idx[~alive]] = False
    return np.flatnonzero(keep)


def _banded_r2(genotypes: np.ndarray, window: int) -> np.ndarray:
    """r^2 of each variant with the next `window - 1` variants: band[i, k] = r^2(i, i + k).

    Each r uses the samples called at both variants (as plink does), from four matrix products.
    """
    m = genotypes.shape[1]
    band = np.zeros((m, window), dtype=np.float32)
    block = 256
    for start in range(0, m, block):
        g = genotypes[:, start:min(m, start + block + window - 1)]
        called = (g != MISSING_INT8).astype(np.float32)
        x = np.where(g == MISSING_INT8, 0, g).astype(np.float32)
        n, sx, sxx, sxy = called.T @ called, x.T @ called, (x * x).T @ called, x.T @ x
        cov = n * sxy - sx * sx.T
        var = n * sxx - sx * sx
        r2 = cov**2 / np.maximum(var * var.T, 1e-12)
        for i in range(min(block, m - start)):
            row = r2[i, i:i + window]
            band[start + i, :row.size] = row
    return band
