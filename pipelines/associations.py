"""Association p-values from the trained model (paper 000, section 2.6), and their score against planted truth.

    comical associate --run RUN/

Input: the run's `test_pair_counts.parquet` (per SNP-IDP pair of the test split: occurrences `n_test` and strict
top-1 correct retrievals `n_correct`, both directions). Test, per pair k (one-way chi-square, 1 df):
    expected_k = n_test_k * r,  r = sum(n_correct) / sum(n_test)   (null: every pair is recognised equally often)
    chi2_k = (n_correct_k - expected_k)^2 / expected_k
    chi2_corrected_k = chi2_k / n_test_k * n_bar                     (the paper's correction: per observation,
                                                                       rescaled to the mean pair's n_bar)
    p_k = P(chi2_1 > chi2_corrected_k), one-sided (1 where n_correct_k <= expected_k), Benjamini-Hochberg adjusted.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score


def pair_associations(counts: pl.DataFrame, info: dict) -> pl.DataFrame:
    """Columns: snp, idp, disease, n_test, frequency, expected, chi2, chi2_corrected, p, p_adjusted (sorted by p)."""
    n_test = counts["n_test"].to_numpy().astype(float)
    correct = counts["n_correct"].to_numpy().astype(float)
    rate = correct.sum() / n_test.sum()
    expected = n_test * rate
    chi2 = (correct - expected) ** 2 / np.where(expected > 0, expected, 1)
    corrected = chi2 / n_test * n_test.mean()
    p = np.where(correct > expected, stats.chi2.sf(corrected, df=1), 1.0)
    return pl.DataFrame({
        "snp": np.array(info["snps"])[counts["snp"].to_numpy()],
        "idp": np.array(info["idps"])[counts["idp"].to_numpy()],
        "disease": np.array(info["diseases"])[counts["disease"].to_numpy()],
        "n_test": counts["n_test"], "frequency": counts["n_correct"], "expected": expected, "chi2": chi2,
        "chi2_corrected": corrected, "p": p, "p_adjusted": stats.false_discovery_control(p),
    }).sort(["p", "frequency"], descending=[False, True])


def score_against_truth(associations: pl.DataFrame, planted: pl.DataFrame, *, k: int = 10) -> dict:
    """AUROC, AUPRC and precision at k of the ranking (by p) for the planted SNP -> IDP effects."""
    truth = set(zip(planted["variant_id"], planted["idp"]))
    label = np.array([(s, i) in truth for s, i in zip(associations["snp"], associations["idp"])])
    score = -np.log10(np.maximum(associations["p"].to_numpy(), 1e-300)) + 1e-9 * associations["frequency"].to_numpy()
    result = {"n_pairs": int(label.size), "n_planted_among_pairs": int(label.sum()), "k": k,
              "precision_at_k": float(label[:k].mean()) if label.size else float("nan")}
    if 0 < label.sum() < label.size:
        result.update(auroc=float(roc_auc_score(label, score)), auprc=float(average_precision_score(label, score)),
                      auprc_chance=float(label.mean()))
    else:
        result.update(auroc=None, auprc=None, note="no planted pair, or only planted pairs, among the test pairs")
    return result
