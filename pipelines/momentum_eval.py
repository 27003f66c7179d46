"""`comical evaluate momentum`: paper 003's three claims on a simulated cohort, the joint T1/T2 model beside its
single-modality counterparts and the reconstruction baseline.

    comical evaluate momentum --runs joint=RUN,t1=RUN,t2=RUN,autoencoder=RUN --cohort COHORT --out DIR

For each run's embeddings (`embeddings.parquet`; joint: the T1 and T2 sides concatenated):
- age: MAE of a ridge regression (5-fold out-of-fold on the runs' test subjects), beside the mean age's;
- disease: AUC for AD (the disease whose genetic liability the simulated images carry) of an L2 logistic regression,
  5-fold out-of-fold on the test subjects, with a 95% bootstrap interval, beside age + sex alone;
- genetics: a multi-trait GWAS of the embedding (its top PCs, rank-normalised, age, sex, PC1-20; every subject, the
  GWAS uses no label) per side (T1 side, T2 side): loci at 5e-8 and the planted image-latent variants found; the
  agreement of the T1 and T2 sides (variants at 5e-8 on both / on either; for the single-modality models, the T1
  model's side against the T2 model's); the mean HE heritability of the side's top PCs and the genetic correlation
  of the two sides' first PCs (pipelines/heritability.py, jackknife se).
Writes evaluation.csv, evaluation.md, evaluation.png, gwas/ (one folder per run and side), summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError

GENOME_WIDE = 5e-8
PCS = 10  # embedding PCs per side for the GWAS and the heritabilities
SIDES = {"joint": ("t1", "t2"), "t1": ("t1",), "t2": ("t2",), "autoencoder": ("z",)}


def _sides(frame: pl.DataFrame, prefix: str) -> np.ndarray:
    return frame.select(pl.col(f"^{prefix}_\\d+$")).to_numpy()


def _pcs(x: np.ndarray, k: int = PCS) -> np.ndarray:
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :k] * s[:k]


def evaluate_momentum(runs: dict[str, Path], cohort_dir: Path, stage: Path, *, workers: int = 1, seed: int = 0) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    from comical.data_io.cohort import load_cohort
    from comical.pipelines.gemcont_eval import _auc, _covariates, _embedding_gwas, _labels, _oof_scores
    from comical.pipelines.heritability import genetic_correlation, he_regression, relationship_matrix
    from comical.pipelines.qc import run_qc

    unknown = [r for r in runs if r not in SIDES]
    if unknown:
        raise InputError(f"--runs: {unknown} unknown; name runs joint, t1, t2, autoencoder")
    cohort = load_cohort(cohort_dir)
    frames = {}
    for name, run in runs.items():
        path = Path(run) / "embeddings.parquet"
        if not path.is_file():
            raise InputError(f"--runs {name}={run}: no embeddings.parquet (a finished `comical train --task "
                             f"momentum-*` or `autoencoder-t1t2` run)")
        frames[name] = pl.read_parquet(path).sort("eid")
    eids = {n: f["eid"].to_numpy() for n, f in frames.items()}
    first = next(iter(eids.values()))
    if any(not np.array_equal(e, first) for e in eids.values()):
        raise InputError("--runs: the runs embed different subjects; train them on the same cohort and seed")
    split = next(iter(frames.values()))["split"].to_numpy()
    test = split == "test"
    age = _covariates(cohort, first, ["age"])[:, 0].astype(float)
    ad = _labels(cohort, "AD", first[test])
    covariates_auc = _auc(ad, _oof_scores(_covariates(cohort, first[test], ["age", "sex"]).astype(float), ad, seed),
                          seed)
    folds = KFold(5, shuffle=True, random_state=seed)
    mean_mae = float(np.abs(age[test] - cross_val_predict(RidgeCV(), np.zeros((test.sum(), 1)), age[test],
                                                          cv=folds)).mean())
    latent_variants = _latent_variants(Path(cohort_dir))

    qc = run_qc(cohort)
    kept = qc.samples["filter"].to_numpy() == "PASS"
    cohort_eids = cohort.eids.cast(pl.Int64).to_numpy()
    use = kept & np.isin(cohort_eids, first)
    grm = relationship_matrix(cohort.genotypes.read(cohort.sample_index[use],
                                                    np.flatnonzero(qc.variants["pruned_in"].to_numpy()), dtype=np.int8))
    in_grm = np.searchsorted(first, cohort_eids[use])
    h2_covariates = _covariates(cohort, cohort_eids[use], ["age", "sex"] + [f"PC{i}" for i in range(1, 11)])

    rows, hits = [], {}
    for name, frame in frames.items():
        x = np.column_stack([_sides(frame, s) for s in SIDES[name]])
        row = {"model": name, "dims": int(x.shape[1]), "n_test": int(test.sum())}
        predicted = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), x[test], age[test], cv=folds)
        row |= {"age_mae": float(np.abs(predicted - age[test]).mean()), "age_mae_mean_predictor": mean_mae}
        row |= {f"ad_{k}": v for k, v in _auc(ad, _oof_scores(x[test], ad, seed), seed).items()}
        row |= {f"ad_covariates_{k}": v for k, v in covariates_auc.items()}
        side_pcs = {}
        for side in SIDES[name]:
            pcs = _pcs(_sides(frame, side))
            side_pcs[side] = pcs
            gwas = _embedding_gwas(pl.DataFrame({"eid": first, **{f"pc{k}": pcs[:, k] for k in range(pcs.shape[1])}}),
                                   Path(cohort_dir), stage / "gwas" / f"{name}_{side}", workers)
            significant = set(gwas.filter(pl.col("p_value") < GENOME_WIDE)["variant_id"].to_list())
            hits[(name, side)] = significant
            row |= {f"{side}_loci": int(gwas["loci"][0]), f"{side}_variants_at_5e-8": len(significant),
                    f"{side}_lambda_gc": float(gwas["lambda_gc"][0]),
                    f"{side}_latent_variants_at_5e-8": len(significant & latent_variants) if latent_variants else None}
            h2, se = he_regression(grm, pcs[in_grm], h2_covariates, seed=seed)
            row |= {f"{side}_mean_h2": float(h2.mean()),
                    f"{side}_mean_h2_se": float(np.sqrt((se ** 2).mean() / len(se)))}  # as if independent
        if name == "joint":
            row |= _agreement(hits[("joint", "t1")], hits[("joint", "t2")])
            rg, rg_se = _first_pc_rg(grm, side_pcs["t1"][in_grm], side_pcs["t2"][in_grm], h2_covariates, seed,
                                     genetic_correlation)
            row |= {"rg_t1_t2": rg, "rg_t1_t2_se": rg_se}
        rows.append(row)
    if ("t1", "t1") in hits and ("t2", "t2") in hits:  # the two single-modality models against each other
        single = {"model": "t1 + t2 (single-modality models)", **_agreement(hits[("t1", "t1")], hits[("t2", "t2")])}
        t1_pcs, t2_pcs = (_pcs(_sides(frames[m], m))[in_grm] for m in ("t1", "t2"))
        single["rg_t1_t2"], single["rg_t1_t2_se"] = _first_pc_rg(grm, t1_pcs, t2_pcs, h2_covariates, seed,
                                                                 genetic_correlation)
        rows.append(single)
    table = pl.DataFrame(rows, infer_schema_length=None)
    table.write_csv(stage / "evaluation.csv")
    (stage / "evaluation.md").write_text(_markdown(table))
    _figure(table, stage / "evaluation.png")
    summary = {"rows": table.to_dicts(), "n_test": int(test.sum()), "n_gwas": int(len(first))}
    (stage / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _agreement(a: set, b: set) -> dict:
    return {"variants_both_sides": len(a & b), "variants_either_side": len(a | b),
            "side_agreement": len(a & b) / len(a | b) if a | b else None}


def _first_pc_rg(grm, a: np.ndarray, b: np.ndarray, covariates, seed, genetic_correlation) -> tuple[float, float]:
    """|rg| of the two sides' first PCs (a PC's sign is arbitrary)."""
    rg, se = genetic_correlation(grm, a[:, :1], b[:, :1], covariates, seed=seed)
    return float(abs(rg[0])), float(se[0])


def _latent_variants(cohort_dir: Path) -> set[str]:
    path = cohort_dir / "truth" / "image_latent_variants.parquet"
    return set(pl.read_parquet(path)["variant_id"].to_list()) if path.is_file() else set()


def _fmt(value, digits: int = 3) -> str:
    return "NA" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _rg_cell(r: dict) -> str:
    """rg only where its jackknife held (a heritability at or below 0 in any block leaves it undefined: NA)."""
    if r.get("rg_t1_t2") is None:
        return ""
    se = r.get("rg_t1_t2_se")
    return "NA" if se is None or np.isnan(se) else f"{r['rg_t1_t2']:.2f} ({se:.2f})"


def _markdown(table: pl.DataFrame) -> str:
    lines = ["# T1/T2 momentum model against single-modality and reconstruction baselines (simulated cohort)", "",
             "Age and AD: 5-fold out-of-fold on the runs' test subjects (in brackets: the mean age; age + sex alone). "
             "GWAS and heritability: every subject, top 10 PCs of each side's embedding.", "",
             "| model | age MAE (mean age) | AD AUC (age + sex) | loci at 5e-8 (T1 side / T2 side) | "
             "planted latent variants found | sides agree (both / either) | mean h2 of top PCs | rg T1-T2 (se) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        sides = [s for s in ("t1", "t2", "z") if r.get(f"{s}_loci") is not None]
        lines.append(
            f"| {r['model']} | "
            + (f"{_fmt(r.get('age_mae'), 2)} ({_fmt(r.get('age_mae_mean_predictor'), 2)}) | "
               f"{_fmt(r.get('ad_auc'))} ({_fmt(r.get('ad_covariates_auc'))}) | "
               if r.get("age_mae") is not None else " | | ")
            + " / ".join(str(r[f"{s}_loci"]) for s in sides) + " | "
            + " / ".join(str(r[f"{s}_latent_variants_at_5e-8"]) for s in sides) + " | "
            + (f"{r['variants_both_sides']} / {r['variants_either_side']}" if r.get("variants_either_side")
               is not None else "") + " | "
            + " / ".join(_fmt(r[f"{s}_mean_h2"]) for s in sides) + " | "
            + _rg_cell(r) + " |")
    return "\n".join(lines) + "\n"


def _figure(table: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = table.filter(pl.col("age_mae").is_not_null())
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    names = models["model"].to_list()
    axes[0].bar(names, models["age_mae"].to_list())
    axes[0].axhline(models["age_mae_mean_predictor"][0], color="grey", ls="--", label="mean age")
    axes[0].set_title("age MAE (years)")
    axes[0].legend()
    auc = models["ad_auc"].to_list()
    axes[1].bar(names, [a if a is not None else 0 for a in auc])
    axes[1].axhline(models["ad_covariates_auc"][0] or 0.5, color="grey", ls="--", label="age + sex")
    axes[1].set_title("AD AUC")
    axes[1].legend()
    loci = [sum(r.get(f"{s}_loci") or 0 for s in ("t1", "t2", "z")) for r in models.iter_rows(named=True)]
    axes[2].bar(names, loci)
    axes[2].set_title("embedding GWAS loci at 5e-8 (all sides)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
