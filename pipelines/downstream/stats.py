"""The statistics of the downstream heads: AUC with bootstrap intervals, the paper's NRI, R^2, Pearson tests, OLS.

AUC is the Mann-Whitney statistic (ties count a half); intervals are percentile bootstraps over test subjects,
resampling cases and controls separately (so every resample has both classes and the AUC is defined), 1,000
resamples from a seed. NRI is paper 000's (Fig. 6): the AUC of the embedding heads minus the baseline heads', its
interval from the same resamples of both (paired).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

BOOTSTRAP = 1000


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of `score` for the 0/1 labels `y` (NaN without both classes)."""
    return float(_auc_rows(np.asarray(y, bool)[None], np.asarray(score, float)[None])[0])


def _auc_rows(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row-wise AUC of (resamples x subjects) labels and scores (rank sums; scipy's average ranks for ties)."""
    ranks = stats.rankdata(score, axis=1)
    cases = y.sum(1)
    controls = y.shape[1] - cases
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(1) - cases * (cases + 1) / 2) / (cases * controls)


def bootstrap_indices(y: np.ndarray, *, resamples: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """(resamples x n) indices into y: cases resampled among cases, controls among controls."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y, bool)
    cases, controls = np.flatnonzero(y), np.flatnonzero(~y)
    return np.concatenate([rng.choice(cases, (resamples, cases.size)),
                           rng.choice(controls, (resamples, controls.size))], axis=1)


def auc_interval(y: np.ndarray, scores: dict[str, np.ndarray], *, resamples: int = BOOTSTRAP, seed: int = 0,
                 level: float = 0.95) -> dict:
    """For each named score: its AUC and percentile bootstrap interval; for the first two names, also their AUC
    difference (the NRI of the first over the second) with its paired interval (the same resamples)."""
    y = np.asarray(y, bool)
    tail = (1 - level) / 2 * 100
    if y.all() or not y.any():
        return {name: (np.nan, np.nan, np.nan) for name in [*scores, "difference"]}
    index = bootstrap_indices(y, resamples=resamples, seed=seed)
    labels = y[index]
    out, draws = {}, {}
    for name, score in scores.items():
        draws[name] = _auc_rows(labels, np.asarray(score, float)[index])
        out[name] = (auc(y, score), *np.percentile(draws[name], [tail, 100 - tail]))
    if len(scores) >= 2:
        first, second = list(scores)[:2]
        out["difference"] = (out[first][0] - out[second][0],
                             *np.percentile(draws[first] - draws[second], [tail, 100 - tail]))
    return out


def r2(y: np.ndarray, predicted: np.ndarray) -> float:
    """Out-of-sample R^2: 1 - residual sum of squares / total sum of squares around y's own mean (0 for predicting
    that mean; negative for worse)."""
    y, predicted = np.asarray(y, float), np.asarray(predicted, float)
    return float(1 - np.sum((y - predicted) ** 2) / np.sum((y - y.mean()) ** 2))


def pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Squared Pearson correlation and its two-sided p-value (scipy: the exact t-test under normality)."""
    result = stats.pearsonr(x, y)
    return float(result.statistic ** 2), float(result.pvalue)


def ols_on(response: np.ndarray, exposure: np.ndarray, covariates: dict[str, np.ndarray], exposure_name: str) -> dict:
    """statsmodels OLS of `response` on an intercept, the exposure and the covariates: each term's coefficient,
    standard error and p-value (`terms`: name -> (coef, se, p)), the model's R^2 and adjusted R^2, the same for the
    model without the exposure (`r2_covariates`, `r2_adj_covariates`: what the covariates alone explain; with many
    covariates on few subjects the plain R^2 is mostly overfitting), and the residual degrees of freedom."""
    import statsmodels.api as sm

    names = ["const", exposure_name, *covariates]
    design = sm.add_constant(np.column_stack([exposure, *covariates.values()]), has_constant="add")
    fit = sm.OLS(response, design).fit()
    base = sm.OLS(response, np.delete(design, 1, axis=1)).fit()
    terms = zip(names, fit.params, fit.bse, fit.pvalues)
    return {"terms": {n: (float(c), float(se), float(p)) for n, c, se, p in terms},
            "r2": float(fit.rsquared), "r2_covariates": float(base.rsquared), "r2_adj": float(fit.rsquared_adj),
            "r2_adj_covariates": float(base.rsquared_adj), "df_resid": int(fit.df_resid), "n": int(len(response))}
