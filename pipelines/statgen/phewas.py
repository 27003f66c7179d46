"""PheWAS of IDPs against diseases, and the one-to-one IDP -> disease map that pair-making uses.

    comical phewas --cohort DIR --out DIR [--qc DIR]

Model (as the R PheWAS package fits it, paper 000 section 2.2): for each disease d and IDP j,
    logit P(d = 1) = a + b * z_j + c' covariates        (d is 0/1: logistic; otherwise linear, OLS)
with z_j the IDP standardized to mean 0 and SD 1, so `beta` is per SD of the IDP. Covariates default to the
paper's: age, sex, smoking, height, BMI and the first ten genetic PCs (from QC). All IDPs are fitted together:
one batched Newton (IRLS) iteration serves every IDP of a disease, so 154 IDPs cost a few matrix products.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from comical.data_io.cohort import Cohort
from comical.data_io.configs import Config
from comical.data_io.errors import InputError

PAPER_COVARIATES = ["age", "sex", "smoking", "height", "bmi"] + [f"PC{i}" for i in range(1, 11)]


@dataclasses.dataclass(frozen=True)
class PhewasConfig(Config):
    diseases: tuple[str, ...] = ("AD", "ADHD", "BD", "CBVD", "MD", "MS", "PD", "UD")  # the paper's eight
    covariates: tuple[str, ...] = tuple(PAPER_COVARIATES)  # PCs come from QC, the rest from covariates.csv
    p_adjust: str = "fdr_bh"  # across all IDP x disease tests: fdr_bh (Benjamini-Hochberg) or bonferroni
    alpha: float = 0.05  # an IDP maps to a disease only if its adjusted p is below alpha
    # An IDP significant for several diseases maps to the one with the smallest p (ties: larger |beta|, then
    # the order of `diseases`). With map_nonsignificant, IDPs significant for none map to their smallest p too.
    map_nonsignificant: bool = False

    def __post_init__(self):
        object.__setattr__(self, "diseases", tuple(self.diseases))
        object.__setattr__(self, "covariates", tuple(self.covariates))
        if self.p_adjust not in ("fdr_bh", "bonferroni"):
            raise InputError(f"p_adjust {self.p_adjust!r}: expected fdr_bh or bonferroni")


def run_phewas(cohort: Cohort, qc, config: PhewasConfig = PhewasConfig(), *,
               subjects: pl.Series | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """PheWAS of the cohort's QC-kept subjects (of `subjects` among them, if given: e.g. the training split),
    with the QC's genetic PCs as the PC covariates.

    Returns (the full table of `phewas`, the IDP -> disease map of `map_idps_to_diseases`).
    """
    keep = cohort.eids.is_in(qc.pcs["eid"].implode())
    if subjects is not None:
        keep = keep & cohort.eids.is_in(subjects.implode())
    pcs = [c for c in config.covariates if c.startswith("PC")]
    missing = [c for c in pcs if c not in qc.pcs.columns]
    if missing:
        raise InputError(f"PheWAS covariates {missing}: the QC computed only {qc.pcs.width - 1} PCs")
    covariates = cohort.covariates.filter(keep).drop(pcs).join(qc.pcs.select("eid", *pcs), on="eid",
                                                                maintain_order="left")
    absent = [c for c in config.covariates if c not in covariates.columns]
    if absent:
        raise InputError(f"PheWAS covariates {absent}: not columns of covariates.csv")
    table = phewas(cohort.idps.filter(keep), cohort.diagnoses.filter(keep), covariates, config)
    return table, map_idps_to_diseases(table, config)


def phewas(idps: pl.DataFrame, outcomes: pl.DataFrame, covariates: pl.DataFrame,
           config: PhewasConfig = PhewasConfig()) -> pl.DataFrame:
    """Every IDP (columns of `idps`) against every disease of `config` (columns of `outcomes`).

    The three tables share row order (one row per subject, `eid` first). Returns one row per (idp, disease):
    `idp, disease, beta, se, p, n, n_cases, p_adjusted` (n_cases is null for a quantitative outcome).
    """
    z = idps.drop("eid").to_numpy().astype(np.float64)
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    c = covariates.select(config.covariates).to_numpy().astype(np.float64)
    c = np.column_stack([np.ones(len(c)), (c - c.mean(axis=0)) / np.where(c.std(axis=0) > 0, c.std(axis=0), 1)])
    rows = []
    for disease in config.diseases:
        y = outcomes[disease].to_numpy().astype(np.float64)
        binary = bool(np.isin(y, (0.0, 1.0)).all())
        beta, se = (logistic_regression_columns if binary else linear_regression_columns)(y, z, c)
        if binary:
            p = 2 * stats.norm.sf(np.abs(beta / se))  # Wald z, as R's glm and statsmodels report
        else:
            p = 2 * stats.t.sf(np.abs(beta / se), len(y) - c.shape[1] - 1)
        rows.append(pl.DataFrame({"idp": idps.columns[1:], "disease": disease, "beta": beta, "se": se, "p": p,
                                  "n": len(y), "n_cases": int(y.sum()) if binary else None}))
    table = pl.concat(rows)
    p = table["p"].to_numpy()
    adjusted = stats.false_discovery_control(p) if config.p_adjust == "fdr_bh" else np.minimum(p * p.size, 1.0)
    return table.with_columns(pl.Series("p_adjusted", adjusted))


def map_idps_to_diseases(table: pl.DataFrame, config: PhewasConfig = PhewasConfig()) -> pl.DataFrame:
    """The one-to-one IDP -> disease map: `idp, disease, beta, p, p_adjusted, significant` (rules in PhewasConfig)."""
    order = {d: i for i, d in enumerate(config.diseases)}
    ranked = table.with_columns(
        (pl.col("p_adjusted") < config.alpha).alias("significant"),
        pl.col("disease").replace_strict(order, return_dtype=pl.Int32).alias("_order"),
        (-pl.col("beta").abs()).alias("_neg_abs_beta"),
    ).sort(["idp", "significant", "p", "_neg_abs_beta", "_order"], descending=[False, True, False, False, False])
    best = ranked.group_by("idp", maintain_order=True).first()
    if not config.map_nonsignificant:
        best = best.filter(pl.col("significant"))
    return best.select("idp", "disease", "beta", "p", "p_adjusted", "significant")


def logistic_regression_columns(y: np.ndarray, x: np.ndarray, c: np.ndarray, *, max_iter: int = 50,
                                tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression of y on [c, x_k] for every column k of x at once; returns (beta_k, se_k) of x_k.

    Batched Newton-Raphson (IRLS): the information matrix of fit k has blocks C'W_kC, C'W_k x_k, x_k'W_k x_k,
    and C'W_kC for all k is one product of the pairwise covariate products with W. Converges to the
    maximum-likelihood fit of each regression (the same as statsmodels Logit).
    """
    n, k = x.shape
    q = c.shape[1]
    pairs = (c[:, :, None] * c[:, None, :]).reshape(n, q * q)
    theta = np.zeros((k, q + 1))  # per fit: covariate coefficients, then the tested one
    for _ in range(max_iter):
        eta = c @ theta[:, :q].T + x * theta[:, q]  # n x k
        mu = 1 / (1 + np.exp(-eta))
        w = mu * (1 - mu)
        info = _information(pairs, c, x, w, q)
        resid = y[:, None] - mu
        score = np.concatenate([(c.T @ resid).T, (x * resid).sum(axis=0)[:, None]], axis=1)
        step = np.linalg.solve(info, score[:, :, None])[:, :, 0]
        theta += step
        if np.abs(step).max() < tol:
            break
    eta = c @ theta[:, :q].T + x * theta[:, q]
    mu = 1 / (1 + np.exp(-eta))
    cov = np.linalg.inv(_information(pairs, c, x, mu * (1 - mu), q))
    return theta[:, q], np.sqrt(cov[:, q, q])


def _information(pairs, c, x, w, q):
    k = x.shape[1]
    info = np.empty((k, q + 1, q + 1))
    info[:, :q, :q] = (pairs.T @ w).T.reshape(k, q, q)
    cross = c.T @ (w * x)  # q x k
    info[:, :q, q] = cross.T
    info[:, q, :q] = cross.T
    info[:, q, q] = (w * x * x).sum(axis=0)
    return info


def linear_regression_columns(y: np.ndarray, x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OLS of y on [c, x_k] for every column k of x; returns (beta_k, se_k) of x_k (Frisch-Waugh-Lovell)."""
    q_basis, _ = np.linalg.qr(c)
    y_r = y - q_basis @ (q_basis.T @ y)
    x_r = x - q_basis @ (q_basis.T @ x)
    sxx = (x_r * x_r).sum(axis=0)
    beta = (x_r.T @ y_r) / sxx
    dof = len(y) - c.shape[1] - 1
    rss = (y_r @ y_r) - beta**2 * sxx
    return beta, np.sqrt(rss / dof / sxx)


def write_phewas(table: pl.DataFrame, mapping: pl.DataFrame, config: PhewasConfig, out: Path) -> None:
    """`phewas.tsv` (every test), `idp_disease_map.tsv` (the map pairs use), `config.yaml`."""
    table.write_csv(out / "phewas.tsv", separator="\t")
    mapping.write_csv(out / "idp_disease_map.tsv", separator="\t")
    (out / "config.yaml").write_text(config.to_yaml())


def read_idp_disease_map(folder: str | Path) -> pl.DataFrame:
    """The map written by `write_phewas` (`--phewas DIR`)."""
    path = Path(folder) / "idp_disease_map.tsv"
    if not path.is_file():
        raise InputError(f"--phewas {folder}: no idp_disease_map.tsv; make one with `comical phewas`")
    table = pl.read_csv(path, separator="\t")
    missing = [c for c in ("idp", "disease") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}")
    return table
