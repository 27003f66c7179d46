"""Association p-values of SNP-IDP pairs from a trained model's test-split predictions.

    comical associate --run RUN/ [--test calibrated|paper] [--cohort DIR]

Input: the run's `test_retrievals.parquet`, one row per test pair (subject, snp, idp, disease) with the subject's
allele-1 dosage at the SNP and the model's log-probabilities log p(g | IDP input) of the SNP's three genotypes
(a softmax of the CLIP logits; distributed/run.py), and the strict top-1 hits the paper's test counts.

`calibrated` (default): a permutation test per pair. Statistic T = sum over the pair's test subjects of
log p(g_s | IDP value of s): how well the model predicts each subject's genotype from its IDP value. Null: the
genotype is independent of the IDP value, so genotypes are exchangeable across subjects; T's permutation mean
and variance are exact (Hoeffding 1951, Ann Math Stat 22:558, combinatorial central limit theorem: for
c[r, s] = A[r, g_s], E T = sum c / n and Var T = sum d[r, s]^2 / (n - 1), d the doubly centred c), and
p = P(Z >= (T - E T) / sd) one-sided. The normal tail is too light for rare genotypes and heavy-tailed values
(up to 4x too many calls at 1e-4), so wherever it gives p < 0.05 the p-value is a Monte Carlo permutation p,
(1 + #{T_perm >= T}) / (1 + B), with B = 20 x (number of pairs) / 0.05 permutations (10^4 to 2 x 10^5), so
that Benjamini-Hochberg can reach its threshold; Benjamini-Hochberg across pairs. A row counts once (one direction: the
model's genotype prediction from the IDP value), every genotype of the SNP is a candidate whatever the batch
held, and a model that ignores the IDP value gets T = E T exactly. Pairs whose SNP is monomorphic among the test
subjects get NA and a note. This test was checked uniform on a permuted (null) store (tests/test_associate.py).

`paper` (section 2.6, kept for reproduction; it fails on a null store, see SCIENCE.md): per pair, strict top-1
hits over both directions against a common rate,
    expected_k = n_test_k * r,  r = sum(n_correct) / sum(n_test)
    chi2_k = (n_correct_k - expected_k)^2 / expected_k,  chi2_corrected_k = chi2_k / n_test_k * n_bar
    p_k = P(chi2_1 > chi2_corrected_k), one-sided (1 where n_correct_k <= expected_k), Benjamini-Hochberg adjusted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

TESTS = ("calibrated", "paper")
_MONTE_CARLO_BELOW = 0.05  # normal p below this is replaced by a Monte Carlo permutation p
_KEYS = ["snp", "idp", "disease"]


def permutation_z(log_p: np.ndarray, dosage: np.ndarray) -> tuple[float, float, float]:
    """(T, E T, sd T) of T = sum_r log_p[r, dosage[r]] under random permutations of the dosages (Hoeffding).

    `log_p`: n x 3, `dosage`: n ints in 0-2. With n_k subjects of dosage k, c[r, s] = log_p[r, g_s] takes three
    values per row, so the doubly centred sum of squares is sum_r sum_k n_k d(r, k)^2.
    """
    n = len(dosage)
    counts = np.bincount(dosage, minlength=3).astype(float)
    observed = float(log_p[np.arange(n), dosage].sum())
    row_mean = log_p @ counts / n  # c[r, .]
    col_mean = log_p.mean(axis=0)  # c[., s] for a subject s of dosage k
    grand = float(col_mean @ counts / n)
    d = log_p - row_mean[:, None] - col_mean[None, :] + grand
    variance = float((d ** 2 @ counts).sum() / (n - 1)) if n > 1 else 0.0
    return observed, n * grand, float(np.sqrt(max(variance, 0.0)))


def permutation_p(log_p: np.ndarray, dosage: np.ndarray, observed: float, permutations: int,
                  rng: np.random.Generator) -> float:
    """Monte Carlo P(T_perm >= T): T = sum_r log_p[r, dosage[r]] over random permutations of the dosages."""
    n = len(dosage)
    rows = np.arange(n)
    tolerance = 1e-9 * max(abs(observed), 1.0)  # a permutation equal to the observed one counts as >=
    exceed, done, chunk = 0, 0, max(1, (1 << 22) // max(n, 1))
    while done < permutations:
        size = min(chunk, permutations - done)
        shuffled = rng.permuted(np.broadcast_to(dosage, (size, n)), axis=1)
        exceed += int((log_p[rows, shuffled].sum(axis=1) >= observed - tolerance).sum())
        done += size
    return (1 + exceed) / (1 + permutations)


def pair_associations(rows: pl.DataFrame, info: dict, *, test: str = "calibrated") -> pl.DataFrame:
    """One row per SNP-IDP pair of the test split, named by the run's vocabularies, sorted by p.

    Columns: snp, idp, disease, n_test, then the test's statistics, p, p_adjusted (NA where p is NA), test.
    """
    if test not in TESTS:
        raise ValueError(f"test {test!r}: expected one of {TESTS}")
    table = _calibrated(rows) if test == "calibrated" else _paper(rows)
    tested = table["p"].is_not_null().to_numpy()
    adjusted = np.full(table.height, np.nan)
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(table["p"].to_numpy()[tested])
    table = table.with_columns(pl.Series("p_adjusted", adjusted).fill_nan(None), pl.lit(test).alias("test"))
    names = {"snp": info["snps"], "idp": info["idps"], "disease": info["diseases"]}
    table = table.with_columns(pl.col(k).map_elements(names[k].__getitem__, return_dtype=pl.String) for k in _KEYS)
    return table.sort(["p", "n_test"], descending=[False, True], nulls_last=True)


def _calibrated(rows: pl.DataFrame, *, seed: int = 0) -> pl.DataFrame:
    pairs = rows.select(_KEYS).unique(maintain_order=True)
    called = rows.filter(pl.col("dosage") >= 0)
    grouped = pairs.join(called.group_by(_KEYS, maintain_order=True).agg(
        pl.len().alias("n_test"), pl.col("dosage"), pl.concat_list("log_p0", "log_p1", "log_p2").alias("log_p")),
        on=_KEYS, how="left", maintain_order="left").with_columns(pl.col("n_test").fill_null(0))
    permutations = int(np.clip(20 * grouped.height / 0.05, 1e4, 2e5))
    rng = np.random.default_rng(seed)
    stat, expected, sd, p_normal, p, method, note = [], [], [], [], [], [], []
    for dosage, log_p in zip(grouped["dosage"].to_list(), grouped["log_p"].to_list()):
        dosage = np.asarray(dosage or [], dtype=np.int64)
        log_p = np.asarray(log_p or [], dtype=np.float64).reshape(-1, 3)
        t, e, s = permutation_z(log_p, dosage) if len(dosage) > 1 else (np.nan, np.nan, 0.0)
        stat.append(t), expected.append(e), sd.append(s)
        normal, value, how, why = None, None, None, None
        if len(dosage) < 2:
            why = "fewer than two test subjects with a genotype call"
        elif np.bincount(dosage, minlength=3).max() == len(dosage):
            why = "monomorphic among the test subjects"
        elif s <= 1e-12 * max(abs(e), 1.0):  # the prediction ignores the IDP value: T = E T under every permutation
            normal, value, how, why = 1.0, 1.0, "exact", "the model's genotype prediction does not vary with this IDP"
        else:
            normal = float(stats.norm.sf((t - e) / s))
            value, how = normal, "normal"
            if normal < _MONTE_CARLO_BELOW:
                value, how = permutation_p(log_p, dosage, t, permutations, rng), f"monte_carlo_{permutations}"
        p_normal.append(normal), p.append(value), method.append(how), note.append(why)
    return grouped.select(*_KEYS, "n_test").with_columns(
        pl.Series("log_likelihood", stat), pl.Series("expected", expected), pl.Series("sd", sd),
        pl.Series("z", [(t - e) / s if s > 0 else None for t, e, s in zip(stat, expected, sd)], dtype=pl.Float64),
        pl.Series("p_normal", p_normal, dtype=pl.Float64), pl.Series("p", p, dtype=pl.Float64),
        pl.Series("p_method", method, dtype=pl.String), pl.Series("note", note, dtype=pl.String))


def _paper(rows: pl.DataFrame) -> pl.DataFrame:
    counts = rows.group_by(_KEYS, maintain_order=True).agg(pl.len().alias("n_test"),
                                                           pl.col("top1_correct").sum().alias("n_correct"))
    n_test = counts["n_test"].to_numpy().astype(float)
    correct = counts["n_correct"].to_numpy().astype(float)
    rate = correct.sum() / n_test.sum()
    expected = n_test * rate
    chi2 = (correct - expected) ** 2 / np.where(expected > 0, expected, 1)
    corrected = chi2 / n_test * n_test.mean()
    p = np.where(correct > expected, stats.chi2.sf(corrected, df=1), 1.0)
    return counts.rename({"n_correct": "frequency"}).with_columns(
        pl.Series("expected", expected), pl.Series("chi2", chi2), pl.Series("chi2_corrected", corrected),
        pl.Series("p", p))


def associate_run(run: Path, *, test: str = "calibrated", cohort: Path | None = None) -> dict:
    """`comical associate`: the run's pair p-values (`associations.tsv`, or `associations_paper.tsv` for the paper's
    test) and, when the cohort has planted truth, COMICAL's ranking against a GWAS of the same candidate pairs
    on the training subjects (`truth_score.json`, `truth_pairs.tsv`, `truth_pr.png`). Returns a summary."""
    import json

    from comical.data_io.errors import InputError
    from comical.data_io.output_dir import write_atomic

    retrievals, info_path, run_file = run / "test_retrievals.parquet", run / "model" / "model.json", run / "run.json"
    if not retrievals.is_file() or not info_path.is_file() or not run_file.is_file():
        raise InputError(f"--run {run}: no test_retrievals.parquet and model/model.json; run `comical train` first "
                         "(runs made before this version need retraining)")
    if json.loads(run_file.read_text()).get("state", "done") != "done":
        raise InputError(f"--run {run}: run.json says the run is not finished; train it to the end first")
    table = pair_associations(pl.read_parquet(retrievals), json.loads(info_path.read_text())["input"], test=test)
    name = "associations.tsv" if test == "calibrated" else "associations_paper.tsv"
    write_atomic(run / name, table.write_csv(separator="\t"))
    summary = {"test": test, "n_pairs": table.height, "n_fdr05": int((table["p_adjusted"] < 0.05).sum()),
               "n_p05": int((table["p"] < 0.05).sum()), "n_na": int(table["p"].null_count()), "file": str(run / name)}
    store = Path(json.loads(run_file.read_text())["config"]["data"])
    if cohort is None and (store / "run.json").is_file():
        cohort = json.loads((store / "run.json").read_text()).get("cohort")
    planted_path = Path(cohort) / "truth" / "snp_idp_effects.parquet" if cohort else None
    if test == "calibrated" and planted_path is not None and planted_path.is_file():
        from comical.pipelines.comical.ceiling import ceiling_metrics, ceiling_power

        planted = pl.read_parquet(planted_path)
        ceiling, ceiling_rows = ceiling_metrics(run, store, Path(cohort))
        ceiling["association"] = ceiling_power(
            pair_associations(ceiling_rows, json.loads(info_path.read_text())["input"]), planted)
        summary["truth"] = _score_against_truth(table, store, Path(cohort), planted, run, ceiling)
    return summary


def _score_against_truth(table: pl.DataFrame, store: Path, cohort_dir: Path, planted: pl.DataFrame, out: Path,
                         ceiling: dict) -> dict:
    """COMICAL's ranking beside baselines on the same candidate (snp, idp) pairs, scored on planted truth, and
    the run's test metrics beside their floor and ceiling (`ceiling`, from pipelines/comical/ceiling.py).

    - comical: by p (ties by z), on the test subjects;
    - gwas: per-pair OLS with covariates on the training subjects (7x COMICAL's test subjects: the GWAS a user
      would run); gwas_test_subjects: the same on COMICAL's test subjects (like for like);
    - snp_only: the SNP's catalog p for its disease, no IDP information at all: what the candidate set alone
      gives (the planted leads are the strongest disease SNPs, so this beats chance without any association).
    A (snp, idp) in two buckets counts once, at its best score.
    """
    from comical.data_io.cohort import load_cohort
    from comical.data_io.pair_store import read_manifest
    from comical.pipelines.comical.truth import candidate_pairs, gwas_pair_pvalues, truth_comparison

    candidates = candidate_pairs(read_manifest(store))
    subjects = pl.read_parquet(store / "subjects.parquet")
    cohort = load_cohort(cohort_dir)
    gwas = {f"gwas{suffix}": gwas_pair_pvalues(cohort, candidates, subjects.filter(pl.col("split") == split)["eid"])
            .with_columns(score=pl.col("neg_log10_p")) for split, suffix in (("train", ""), ("test", "_test_subjects"))}
    catalog = pl.read_csv(store / "snp_sets.tsv", separator="\t").select(
        pl.col("variant_id").alias("snp"), "disease", score=-pl.col("p_value").log10())
    snp_only = candidates.join(catalog, on=["snp", "disease"], how="left")
    comical = table.select("snp", "idp", "p", score=-pl.col("p").fill_null(1).clip(1e-300).log10()
                           + 1e-6 * pl.col("z").fill_null(0))
    rankings = {"comical": comical, **gwas, "snp_only": snp_only}
    best = {name: r.group_by("snp", "idp").agg(pl.col("score").max(), *([pl.col("p").min()] if "p" in r.columns else []))
            for name, r in rankings.items()}
    return truth_comparison(best, planted, out, extra={"ceiling": ceiling})


def truth_summary(truth: dict) -> str:
    """AUPRC of COMICAL and its baselines against planted pairs beside chance, and where the planted truth is scored
    (`ceiling`), the recall at FDR 5% it allows and the within-bucket accuracy's lift beside the ceiling's."""
    m = truth["methods"]
    fmt = lambda v, d=3: "NA" if v is None else f"{v:.{d}f}"  # noqa: E731
    line = (f"against the {m['comical']['n_planted']} planted pairs among {truth['n_candidates']} candidates, AUPRC "
            f"COMICAL {fmt(m['comical']['auprc'])}, GWAS of the same pairs {fmt(m['gwas']['auprc'])} (training "
            f"subjects) and {fmt(m['gwas_test_subjects']['auprc'])} (COMICAL's test subjects), SNP identity alone "
            f"{fmt(m['snp_only']['auprc'])}, chance {fmt(m['comical']['auprc_chance'])}")
    if "ceiling" in truth:
        a, power = truth["ceiling"]["within_bucket_accuracy"], truth["ceiling"]["association"]
        line += (f"; recall at FDR 5% {fmt(m['comical']['recall_at_fdr05'], 2)} (the planted effects themselves "
                 f"{fmt(power['recall_at_fdr05'], 2)}); within-bucket accuracy above its null {a['model_lift']:+.4f}, "
                 f"the planted effects' {a['ceiling_lift']:+.4f} +- {fmt(a['ceiling_lift_se'], 4)} (share "
                 f"{fmt(a['share_of_lift'], 2)})")
    return line
