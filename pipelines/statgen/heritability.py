"""SNP heritability and genetic correlation of phenotypes (embedding dimensions) by Haseman-Elston regression.

    comical heritability --embeddings EMB.parquet --cohort COHORT --out DIR [--rg t1_,t2_]

Model: y = g + e with var(g) = h2 and cov(g_j, g_k) = h2 A_jk, A the genetic relationship matrix of standardised
allele counts (Z Z' / m, Yang et al. 2011) on the LD-pruned, QC-passed variants. Each phenotype is residualised on
the covariates (intercept, age, sex, PC1-10) and standardised; HE-CP regression (cross products of distinct pairs
on their relatedness, through the origin; Haseman & Elston 1972, the cross-product form of Sofer 2017 / GCTA's
--HEreg) gives

    h2 = sum_{j != k} A_jk y_j y_k / sum_{j != k} A_jk^2
       = (y'Ay - sum_j A_jj y_j^2) / (||A||_F^2 - sum_j A_jj^2),

computed from these sums (no pair list). Bivariate HE gives the genetic covariance of two phenotypes the same way
(y1'Ay2 in the numerator) and rg = cov_g / sqrt(h2_1 h2_2) (NA where an h2 is not positive). Standard errors: a
delete-one-block jackknife over subjects (50 blocks), since the pairs' residuals are not independent.

With `--components FILE` (variant_id, component: MAF or LD bins, functional annotations) the variants fall into
components and randomized multi-component HE (RHE-mc, rhe.py) gives each component's h2 and their total.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError

JACKKNIFE_BLOCKS = 50
EXACT_MAX_SUBJECTS = 10000  # above it, `auto` uses randomized HE (exact: 73 s, 2.5 GiB here; BENCHMARKS.md)
COVARIATES = ["age", "sex"] + [f"PC{i}" for i in range(1, 11)]


def relationship_matrix(genotypes: np.ndarray) -> np.ndarray:
    """A = Z Z' / m from int8 allele counts (-127 missing; standardised, missing at the mean; m counts the variants
    polymorphic in these subjects)."""
    from comical.data_io.pca import standardized_genotypes

    z = standardized_genotypes(genotypes).astype(np.float64)
    polymorphic = int((z.std(0) > 0).sum())  # a variant monomorphic in these subjects is a zero column
    return z @ z.T / max(polymorphic, 1)


def _residualised(y: np.ndarray, covariates: np.ndarray) -> np.ndarray:
    x = np.column_stack([np.ones(len(y)), covariates])
    r = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    sd = r.std(0)
    return r / np.where(sd > 0, sd, 1)


def _he_sums(a: np.ndarray, y1: np.ndarray, y2: np.ndarray) -> np.ndarray:
    """HE-CP estimates of the genetic covariance of each column pair (y1[:, t], y2[:, t])."""
    d = np.diag(a)
    numerator = np.einsum("it,it->t", y1, a @ y2) - (d[:, None] * y1 * y2).sum(0)
    return numerator / ((a * a).sum() - (d * d).sum())


def he_regression(a: np.ndarray, y: np.ndarray, covariates: np.ndarray, *, y2: np.ndarray | None = None,
                  blocks: int = JACKKNIFE_BLOCKS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(estimates, jackknife standard errors), one per column of `y`: h2, or with `y2` the genetic covariance of
    y[:, t] and y2[:, t]. `a`: the subjects' relationship matrix; phenotypes and covariates in its row order."""
    first = _residualised(np.asarray(y, float), covariates)
    second = first if y2 is None else _residualised(np.asarray(y2, float), covariates)
    estimate = _he_sums(a, first, second)
    block = np.random.default_rng(seed).permutation(len(a)) % blocks
    leave_out = np.stack([_he_sums(a[np.ix_(block != b, block != b)], first[block != b], second[block != b])
                          for b in range(blocks)])
    se = np.sqrt((blocks - 1) / blocks * ((leave_out - leave_out.mean(0)) ** 2).sum(0))
    return estimate, se


def genetic_correlation(a: np.ndarray, y1: np.ndarray, y2: np.ndarray, covariates: np.ndarray, *,
                        blocks: int = JACKKNIFE_BLOCKS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rg, jackknife se) of each column pair; NaN where either heritability is not positive."""
    first, second = _residualised(np.asarray(y1, float), covariates), _residualised(np.asarray(y2, float), covariates)

    def rg(sub: np.ndarray | slice) -> np.ndarray:
        m = a[np.ix_(sub, sub)] if not isinstance(sub, slice) else a
        h1, h2 = _he_sums(m, first[sub], first[sub]), _he_sums(m, second[sub], second[sub])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((h1 > 0) & (h2 > 0), _he_sums(m, first[sub], second[sub]) / np.sqrt(h1 * h2), np.nan)

    estimate = rg(slice(None))
    block = np.random.default_rng(seed).permutation(len(a)) % blocks
    leave_out = np.stack([rg(np.flatnonzero(block != b)) for b in range(blocks)])
    se = np.full(len(estimate), np.nan)
    ok = np.isfinite(estimate) & np.isfinite(leave_out).all(0)  # an h2 at or below 0 anywhere: NA
    se[ok] = np.sqrt((blocks - 1) / blocks * ((leave_out[:, ok] - leave_out[:, ok].mean(0)) ** 2).sum(0))
    return estimate, se


class HeEstimator:
    """h2 and rg of phenotypes of one set of subjects: exact HE on their n x n GRM (8 n^2 bytes), or randomized HE
    (rhe.py: no GRM, memory O(n)); `auto` is exact up to EXACT_MAX_SUBJECTS. `rows`: the subjects' rows in the
    cohort's genotypes; `variants`: the variant columns (QC'd, LD-pruned); phenotypes and `covariates` in `rows`'
    order."""

    def __init__(self, genotypes, rows: np.ndarray, variants: np.ndarray, covariates: np.ndarray, *,
                 method: str = "auto", seed: int = 0):
        self.method = method if method != "auto" else "exact" if len(rows) <= EXACT_MAX_SUBJECTS else "randomized"
        self.covariates, self.seed, self.n_variants = covariates, seed, len(variants)
        self.read = lambda start, stop: genotypes.read(rows, variants[start:stop], dtype=np.int8)  # noqa: E731
        self.grm = relationship_matrix(self.read(0, len(variants))) if self.method == "exact" else None

    def h2(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.grm is not None:
            return he_regression(self.grm, y, self.covariates, seed=self.seed)
        from comical.pipelines.statgen.rhe import randomized_he

        return randomized_he(self.read, self.n_variants, y, self.covariates, seed=self.seed)

    def h2_components(self, y: np.ndarray, components: np.ndarray):
        """RHE-mc (randomized whatever the size: no exact multi-component form here): (total h2, se, per-component
        h2 (K x phenotypes), se). `components`: 0..K-1 per variant, in `variants`' order."""
        from comical.pipelines.statgen.rhe import randomized_he_components

        return randomized_he_components(self.read, components, y, self.covariates, seed=self.seed)

    def rg(self, y1: np.ndarray, y2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.grm is not None:
            return genetic_correlation(self.grm, y1, y2, self.covariates, seed=self.seed)
        from comical.pipelines.statgen.rhe import randomized_rg

        return randomized_rg(self.read, self.n_variants, y1, y2, self.covariates, seed=self.seed)


def cohort_qc(cohort, qc_dir):
    """The QC to build on: `comical qc`'s folder of this cohort, or run now."""
    from comical.pipelines.statgen.qc import QCResult, run_qc

    if qc_dir is None:
        return run_qc(cohort)
    qc = QCResult.read(qc_dir)
    if qc.samples["eid"].to_list() != cohort.eids.cast(pl.String).to_list() or \
            qc.variants.height != cohort.genotypes.n_variants:
        raise InputError(f"--qc {qc_dir}: made from another cohort ({qc.samples.height} samples, "
                         f"{qc.variants.height} variants; the cohort has {cohort.eids.len()} and "
                         f"{cohort.genotypes.n_variants}); run `comical qc --cohort` on this one")
    return qc


def read_components(path: Path) -> pl.DataFrame:
    """`--components`: variant_id and component, tab- or comma-separated, one row per variant."""
    if not path.is_file():
        raise InputError(f"--components {path}: file not found")
    with open(path) as f:
        header = f.readline()
    table = pl.read_csv(path, separator="\t" if "\t" in header else ",", infer_schema=False)
    if not {"variant_id", "component"} <= set(table.columns):
        raise InputError(f"--components {path}: expected columns variant_id and component; header is "
                         f"{table.columns[:6]}")
    table = table.select("variant_id", "component")
    if table.null_count().sum_horizontal()[0]:
        row = int((table["variant_id"].is_null() | table["component"].is_null()).arg_true()[0])
        raise InputError(f"--components {path} line {row + 2}: empty variant_id or component")
    duplicated = table["variant_id"].is_duplicated()
    if duplicated.any():
        raise InputError(f"--components {path}: variant {table['variant_id'][int(duplicated.arg_true()[0])]} "
                         "appears more than once; give each variant one component")
    return table


def _embedding_columns(table: pl.DataFrame, path: Path) -> list[str]:
    columns = [c for c, t in table.schema.items() if c not in ("eid", "split") and t.is_numeric()]
    if "eid" not in table.columns or not columns:
        raise InputError(f"--embeddings {path}: expected an eid column and numeric embedding columns")
    return columns


def heritability(embeddings: str | Path, cohort_dir: str | Path, out: str | Path, *,
                 rg_prefixes: tuple[str, str] | None = None, seed: int = 0, qc_dir: str | Path | None = None,
                 method: str = "auto", components: str | Path | None = None) -> dict:
    """`comical heritability`: writes OUT/h2.csv (dimension, h2, se, n_subjects, n_variants), with `rg_prefixes`
    OUT/rg.csv (dimension_1, dimension_2, rg, se: each column of the first prefix with the column of the second
    prefix that has the same suffix; NA with a note unless both columns' h2 exceed 2 se), and OUT/summary.json; returns
    the summary. `qc_dir`: a `comical qc` folder of this cohort to reuse (default: QC is run). `method`: exact (the
    n x n GRM), randomized (rhe.py: no GRM), or auto (exact up to EXACT_MAX_SUBJECTS subjects). `components`: a
    variant_id/component file; h2.csv then adds h2_<component> and se_<component> (RHE-mc), h2 being their total."""
    import json

    from comical.data_io.cohort import load_cohort
    from comical.data_io.output_dir import write_atomic
    path = Path(embeddings)
    if not path.is_file():
        raise InputError(f"--embeddings {path}: file not found")
    table = pl.read_parquet(path)
    columns = _embedding_columns(table, path)
    pairs = []
    if rg_prefixes:
        first, second = rg_prefixes
        pairs = [(c, second + c[len(first):]) for c in columns if c.startswith(first)
                 and second + c[len(first):] in columns]
        if not pairs:
            raise InputError(f"--rg {first},{second}: no column pair {first}X / {second}X in {path}")
    if method not in ("auto", "exact", "randomized"):
        raise InputError(f"--method {method}: expected auto, exact or randomized")
    if components is not None and method == "exact":
        raise InputError("--components with --method exact: multi-component HE is randomized (RHE-mc) only")
    annotation = read_components(Path(components)) if components is not None else None
    cohort = load_cohort(cohort_dir)
    if annotation is not None and not annotation["variant_id"].is_in(
            cohort.genotypes.variants["variant_id"].implode()).any():
        raise InputError(f"--components {components}: names none of the cohort's variants (variant_id as in its "
                         ".bim)")
    qc = cohort_qc(cohort, qc_dir)
    kept = qc.samples["filter"].to_numpy() == "PASS"
    eids = cohort.eids.cast(pl.Int64).to_numpy()
    have = np.isin(eids, table["eid"].cast(pl.Int64).to_numpy()) & kept
    if have.sum() < 50:
        raise InputError(f"--embeddings {path}: {int(have.sum())} of its subjects pass the cohort's QC; expected >= 50")
    variants = np.flatnonzero(qc.variants["pruned_in"].to_numpy())
    notes = []
    if annotation is not None:  # the pruned variants the file names, each with its component's index
        named = qc.variants.select("variant_id").with_row_index("column").join(annotation, on="variant_id")
        named = named.filter(pl.col("column").is_in(variants)).sort("column")
        if named.is_empty():
            raise InputError(f"--components {components}: names none of the {variants.size} variants that pass QC "
                             "and LD pruning")
        if named.height < variants.size:
            notes.append(f"{variants.size - named.height} of {variants.size} pruned variants are not in "
                         "--components: left out")
        names = sorted(named["component"].unique().to_list())
        variants = named["column"].to_numpy()
        component_index = named["component"].replace_strict(names, list(range(len(names)))).to_numpy()
    order = pl.DataFrame({"eid": eids[have]}).join(table.with_columns(pl.col("eid").cast(pl.Int64)), on="eid",
                                                   how="left", maintain_order="left")
    covariates = cohort.covariates.filter(pl.Series(have))
    pcs = qc.pcs.join(pl.DataFrame({"eid": cohort.eids.filter(pl.Series(have))}), on="eid", how="right")
    x = np.column_stack([covariates.select("age", "sex").to_numpy().astype(float),
                         pcs.select([f"PC{i}" for i in range(1, 11)]).to_numpy()])
    estimator = HeEstimator(cohort.genotypes, cohort.sample_index[have], variants, x,
                            method="randomized" if annotation is not None else method, seed=seed)
    y = order.select(columns).to_numpy()
    per_component = {}
    if annotation is None:
        h2, se = estimator.h2(y)
    else:
        h2, se, parts, parts_se = estimator.h2_components(y, component_index)
        for k, name in enumerate(names):
            per_component |= {f"h2_{name}": parts[k], f"se_{name}": parts_se[k]}
            if np.isnan(parts[k]).all():
                notes.append(f"component {name}: no variant polymorphic in these subjects; h2 NA")
            elif np.isnan(parts_se[k]).all():
                notes.append(f"component {name}: its variants lie within one of the jackknife's variant blocks; its "
                             "se and the total's are NA")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({"dimension": columns, "h2": h2, "se": se, **per_component, "n_subjects": int(have.sum()),
                          "n_variants": int(variants.size)})
    write_atomic(out / "h2.csv", frame.write_csv())
    summary = {"n_subjects": int(have.sum()), "n_variants": int(variants.size),
               "method": "HE-CP, jackknife se over subjects" if estimator.method == "exact" else
               "randomized HE (RHE-reg), jackknife se over variant blocks" if annotation is None else
               f"randomized multi-component HE (RHE-mc, {len(names)} components), jackknife se over variant blocks",
               "mean_h2": float(np.mean(h2)), "notes": notes}
    if annotation is not None:
        summary["components"] = {name: {"variants": int((component_index == k).sum()),
                                        "mean_h2": float(np.mean(parts[k]))} for k, name in enumerate(names)}
    if pairs:
        rg, rg_se = estimator.rg(order.select([p[0] for p in pairs]).to_numpy(),
                                 order.select([p[1] for p in pairs]).to_numpy())
        z = dict(zip(columns, h2 / np.where(se > 0, se, np.nan)))
        # rg divides by sqrt(h2_1 h2_2): only reported where both heritabilities are clearly above 0
        weak = np.array([not (z[p[0]] > 2 and z[p[1]] > 2) for p in pairs])
        rg, rg_se = np.where(weak, np.nan, rg), np.where(weak, np.nan, rg_se)
        write_atomic(out / "rg.csv", pl.DataFrame({
            "dimension_1": [p[0] for p in pairs], "dimension_2": [p[1] for p in pairs], "rg": rg, "se": rg_se,
            "note": ["h2 of a side not above 2 se: rg not estimable" if w else "" for w in weak]}).write_csv())
        summary["mean_rg"] = float(np.nanmean(rg)) if np.isfinite(rg).any() else math.nan
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
