"""Scoring SNP-IDP association rankings against the simulator's planted SNP -> IDP effects (`truth/`).

    pairs = candidate_pairs(read_manifest(store))                     # every (snp, idp) of the buckets' grids
    gwas = gwas_pair_pvalues(cohort, pairs, train_eids)               # the GWAS baseline on the training split
    truth_comparison({"comical": comical, "gwas": gwas.with_columns(score="neg_log10_p")}, planted, out)

A candidate pair is planted when (snp, idp) is a row (variant_id, idp) of `truth/snp_idp_effects.parquet`. Every
method is scored on the same candidates: AUROC, AUPRC (average precision) against its chance level (the planted
fraction), precision among the top k, and the recall of Benjamini-Hochberg discoveries at FDR 0.05.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from comical.data_io.cohort import Cohort
from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.pipelines.statgen.gwas import CHUNK_BYTES, DEFAULT_COHORT_COVARIATES, GwasTables, build_inputs
from comical.pipelines.statgen import gwas_stats

FDR = 0.05


def candidate_pairs(manifest: dict) -> pl.DataFrame:
    """Columns snp, idp, disease: one row per cell of each bucket's snps x idps grid, in the manifest's order.

    A (snp, idp) in two buckets keeps both rows, as the pair store does: each bucket streams its own pairs and
    the model's associations are per (snp, idp, disease), so the rankings compared here have one row per cell.
    """
    buckets = manifest.get("buckets")
    if not buckets:
        raise InputError("pair-store manifest: no `buckets` ({disease: {snps, idps}}); make the store with "
                         "`comical pairs`")
    parts = [pl.DataFrame({"snp": np.repeat(b["snps"], len(b["idps"])).astype(str),
                           "idp": np.tile(b["idps"], len(b["snps"])).astype(str), "disease": d})
             for d, b in buckets.items() if b["snps"] and b["idps"]]
    return pl.concat(parts) if parts else pl.DataFrame(schema={"snp": pl.String, "idp": pl.String,
                                                               "disease": pl.String})


def gwas_pair_pvalues(cohort: Cohort, candidates: pl.DataFrame, train_eids, *,
                      covariates: list[str] = DEFAULT_COHORT_COVARIATES) -> pl.DataFrame:
    """The GWAS test of each candidate pair on the training subjects: `candidates` plus beta, se, p,
    neg_log10_p and n.

    Model (as `comical gwas`, with the same code: `build_inputs`, then `gwas_stats.linear`):
        idp = b0 + beta * g + covariates' gamma + e,    two-sided t test of beta = 0,
    g the additive allele-1 count; a subject with no call for the SNP is left out of that pair's test (n).
    Samples: `train_eids` that have every covariate. Each needed SNP is read once and every needed SNP x IDP is
    tested by one matrix product per chunk of SNPs; the candidate cells are then picked out.
    """
    for column in ("snp", "idp"):
        if column not in candidates.columns:
            raise InputError(f"candidate pairs: no column {column!r} (columns {candidates.columns})")
    if candidates.is_empty():
        return candidates.with_columns(**{c: pl.lit(None, pl.Float64) for c in ("beta", "se", "p", "neg_log10_p")},
                                       n=pl.lit(None, pl.Int64))
    train = pl.Series("eid", list(train_eids)).cast(pl.String).unique()
    foreign = train.filter(~train.is_in(cohort.eids.implode()))
    if foreign.len():
        raise InputError(f"training eids: {foreign.len()} of {train.len()} are not subjects of the cohort "
                         f"{cohort.path} (e.g. {foreign[0]!r}); the pair store belongs to another cohort")
    variants = cohort.genotypes.variants["variant_id"]
    snps = candidates["snp"].unique(maintain_order=True)
    absent = snps.filter(~snps.is_in(variants.implode()))
    if absent.len():
        raise InputError(f"candidate pairs: SNP {absent[0]!r} (and {absent.len() - 1} more) not in "
                         f"{cohort.genotypes.prefix}.bim")
    idps = candidates["idp"].unique(maintain_order=True).to_list()
    unknown = [i for i in idps if i not in cohort.idps.columns]
    if unknown:
        raise InputError(f"candidate pairs: IDP {unknown[0]!r} is not a column of {cohort.path}/idps.csv")

    phenotypes = cohort.idps.filter(pl.col("eid").is_in(train.implode())).select("eid", *idps)
    inputs = build_inputs(GwasTables(cohort.genotypes, phenotypes, cohort.covariates.select("eid", *covariates),
                                     source=str(cohort.path), binary=False))
    bim_index = {v: i for i, v in enumerate(variants.to_list())}
    columns = np.array(sorted(bim_index[s] for s in snps.to_list()))  # .bed order: sequential reads
    snp_row = {v: j for j, v in enumerate(variants.gather(columns).to_list())}
    idp_col = {name: j for j, name in enumerate(idps)}
    shape = (columns.size, len(idps))
    full = {key: np.full(shape, np.nan) for key in ("beta", "se", "p", "log10_p", "n")}
    chunk = max(16, CHUNK_BYTES // (8 * inputs.sample_index.size))  # as `comical gwas`: bounded memory
    for lo in range(0, columns.size, chunk):
        g = inputs.genotypes.read(inputs.sample_index, columns[lo:lo + chunk], dtype=np.float64)
        for group in inputs.groups:  # IDPs with the same missing subjects share one basis and one product
            result = gwas_stats.linear(g[group.rows], group.q, group.y, overwrite_g=True)
            cols = [idp_col[n] for n in group.names]
            for key in ("beta", "se", "p", "log10_p"):
                full[key][lo:lo + chunk, cols] = result[key]
            full["n"][lo:lo + chunk, cols] = result["n"][:, None]
    rows = np.array([snp_row[s] for s in candidates["snp"]], dtype=np.int64)
    cols = np.array([idp_col[i] for i in candidates["idp"]], dtype=np.int64)
    return candidates.with_columns(
        beta=full["beta"][rows, cols], se=full["se"][rows, cols], p=full["p"][rows, cols],
        neg_log10_p=-full["log10_p"][rows, cols],  # from log space: no underflow to p = 0 on strong hits
        n=pl.Series(full["n"][rows, cols]).cast(pl.Int64, strict=False))


def _ranks(score: np.ndarray) -> np.ndarray:
    """Dense ranks (1 = lowest), NaN below every number: finite for sklearn, same order and ties as `score`."""
    s = np.asarray(score, dtype=float)
    return stats.rankdata(np.where(np.isnan(s), -np.inf, s), method="dense")


def random_ranking_ap(planted: int, n: int) -> float:
    """The expected average precision of a uniformly random order of `n` items of which `planted` are positive:
    (P - 1) / (N - 1) + (N - P) H_N / (N (N - 1)), H_N the N-th harmonic number. Not P / N: the precision at a
    positive's rank averages 1 / rank terms that a short list weighs heavily (at P = 16 of 180: 0.113, not 0.089)."""
    if n == 1:
        return 1.0
    return (planted - 1) / (n - 1) + (n - planted) * float(np.sum(1 / np.arange(1, n + 1))) / (n * (n - 1))


def score_ranking(labels: np.ndarray, score: np.ndarray, p: np.ndarray | None, *, k: int = 10) -> dict:
    """How well `score` (higher = more likely associated) ranks the planted pairs (`labels` True) first.

    Returns n_pairs, n_planted, auroc, auprc (average precision, sklearn), auprc_chance (a random ranking's
    expected average precision, `random_ranking_ap`: above the planted fraction, most for few planted pairs), k,
    precision_at_k, and from `p` (None: these are None) the Benjamini-Hochberg discoveries at FDR 0.05 over the
    candidates: n_discoveries_fdr05, recall_at_fdr05 (planted pairs discovered / planted pairs),
    precision_at_fdr05. NaN scores rank below every number and NaN
    p-values count as 1. AUROC and AUPRC are None, with a `note`, where no pair or every pair is planted.

    precision_at_k is the top k's planted fraction averaged over every order of the pairs tied at the k-th score
    (the convention sklearn's AUROC takes for ties): deterministic, and independent of the input order.
    """
    labels = np.asarray(labels, dtype=bool)
    ranks = _ranks(score)
    if ranks.shape != labels.shape or (p is not None and np.shape(p) != labels.shape):
        raise ValueError(f"score_ranking: labels {labels.shape}, score {ranks.shape} and p "
                         f"{None if p is None else np.shape(p)} must have the same length")
    n, n_planted = labels.size, int(labels.sum())
    result = {"n_pairs": int(n), "n_planted": n_planted, "auroc": None, "auprc": None,
              "auprc_chance": random_ranking_ap(n_planted, n) if n_planted else None, "k": min(k, n),
              "precision_at_k": None,
              "n_discoveries_fdr05": None, "recall_at_fdr05": None, "precision_at_fdr05": None}
    if 0 < n_planted < n:
        result["auroc"] = float(roc_auc_score(labels, ranks))
        result["auprc"] = float(average_precision_score(labels, ranks))
    else:
        result["note"] = ("no candidate pairs" if n == 0 else "no planted pair among the candidates"
                          if n_planted == 0 else "every candidate pair is planted") + ": AUROC and AUPRC undefined"
    if n:
        kk = min(k, n)
        kth = np.sort(ranks)[::-1][kk - 1]
        above, tied = ranks > kth, ranks == kth
        hits = labels[above].sum() + (kk - above.sum()) * labels[tied].mean()
        result["precision_at_k"] = float(hits / kk)
    if p is not None and n:
        p = np.asarray(p, dtype=float)
        found = stats.false_discovery_control(np.where(np.isnan(p), 1.0, p)) < FDR
        result["n_discoveries_fdr05"] = int(found.sum())
        result["recall_at_fdr05"] = float(found[labels].mean()) if n_planted else None
        result["precision_at_fdr05"] = float(labels[found].mean()) if found.any() else None
    return result


def _joined(rankings: dict[str, pl.DataFrame]) -> tuple[pl.DataFrame, list[str]]:
    """One row per candidate with each method's score and p (`<method>_score`, `<method>_p`); the key columns.

    Every method must rank the same candidates: AUPRC and its chance level are comparable only then."""
    if not rankings:
        raise ValueError("truth_comparison: no rankings given")
    key = ["snp", "idp", "disease"] if all("disease" in df.columns for df in rankings.values()) else ["snp", "idp"]
    joined = None
    for name, df in rankings.items():
        missing = [c for c in ("snp", "idp", "score") if c not in df.columns]
        if missing:
            raise ValueError(f"ranking {name!r}: no column(s) {missing}; expected snp, idp, score (and p, disease)")
        if df.select(key).is_duplicated().any():
            raise ValueError(f"ranking {name!r}: a candidate {tuple(key)} appears more than once")
        part = df.select(*key, pl.col("score").cast(pl.Float64).alias(f"{name}_score"),
                         (pl.col("p").cast(pl.Float64) if "p" in df.columns else pl.lit(None, pl.Float64))
                         .alias(f"{name}_p"))
        if joined is None:
            joined = part
            continue
        differ = joined.select(key).join(part.select(key), on=key, how="anti").height + \
            part.select(key).join(joined.select(key), on=key, how="anti").height
        if differ:
            raise ValueError(f"ranking {name!r}: ranks other candidates than {next(iter(rankings))!r} ({differ} "
                             f"pairs in one but not the other); score every method on the same candidate pairs")
        joined = joined.join(part, on=key, how="left", maintain_order="left")
    return joined, key


def truth_comparison(candidates_with_scores: dict[str, pl.DataFrame], planted: pl.DataFrame, out: Path, *,
                     extra: dict | None = None) -> dict:
    """Score named rankings of the same candidate pairs against the planted (variant_id, idp) effects.

    `candidates_with_scores`: {method: DataFrame(snp, idp, score[, p][, disease])}, higher score = stronger;
    `planted`: truth/snp_idp_effects.parquet (variant_id, idp, effect_sd). Writes into `out`, each atomically:
    truth_score.json (returned: per method the `score_ranking` dict, and how many planted pairs the candidates
    miss), truth_pairs.tsv (snp, idp, [disease,] planted, effect_sd (null if not planted), <method>_score,
    <method>_p) and truth_pr.png (precision-recall curves with their AUPRC, and the chance level). `extra` joins
    the summary as it is.
    """
    joined, key = _joined(candidates_with_scores)
    effects = planted.select(pl.col("variant_id").alias("snp"), "idp", "effect_sd").unique(["snp", "idp"],
                                                                                           keep="first")
    table = joined.join(effects.with_columns(planted=pl.lit(True)), on=["snp", "idp"], how="left",
                        maintain_order="left").with_columns(pl.col("planted").fill_null(False))
    methods = list(candidates_with_scores)
    table = table.select(*key, "planted", "effect_sd", *[f"{m}_{c}" for m in methods for c in ("score", "p")])
    labels = table["planted"].to_numpy()
    scores = {}
    for m in methods:
        p = table[f"{m}_p"]
        scores[m] = score_ranking(labels, table[f"{m}_score"].to_numpy(),
                                  None if p.null_count() == p.len() else p.fill_null(np.nan).to_numpy())
    covered = effects.join(table.select("snp", "idp").unique(), on=["snp", "idp"], how="semi").height
    summary = {"n_candidates": table.height, "n_planted_effects": effects.height,
               "n_planted_not_in_candidates": effects.height - covered, "fdr": FDR, "methods": scores, **(extra or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tsv = io.BytesIO()
    table.write_csv(tsv, separator="\t", null_value="NA", float_precision=None)
    write_atomic(out / "truth_pairs.tsv", tsv.getvalue())
    write_atomic(out / "truth_pr.png", _pr_plot(labels, {m: table[f"{m}_score"].to_numpy() for m in methods}, scores))
    write_atomic(out / "truth_score.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _pr_plot(labels: np.ndarray, scores: dict[str, np.ndarray], results: dict[str, dict]) -> bytes:
    """One precision-recall plot: a curve per method labelled with its AUPRC, and the chance level; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, score in scores.items():
        if results[name]["auprc"] is not None:
            precision, recall, _ = precision_recall_curve(labels, _ranks(score))
            ax.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AUPRC {results[name]['auprc']:.3f})")
    chance = labels.mean() if labels.size else 0.0
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:.3f})")
    if not 0 < labels.sum() < labels.size:
        ax.text(0.5, 0.5, "no curve: no planted pair, or only planted pairs", ha="center", transform=ax.transAxes)
    ax.set(xlabel="recall (planted pairs found)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"{labels.size} candidate pairs, {int(labels.sum())} planted")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
