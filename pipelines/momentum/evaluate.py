"""`comical evaluate momentum`: paper 003's three claims on a simulated cohort, the joint T1/T2 model beside its
single-modality counterparts and the reconstruction baseline.

    comical evaluate momentum --runs joint=RUN,t1=RUN,t2=RUN,autoencoder=RUN --cohort COHORT --out DIR

For each run's embeddings (`embeddings.parquet`; joint: the T1 and T2 sides concatenated), and two trivial
references made here (the joint run's architecture at its initial weights; the top 64 PCs of the raw T1 + T2 voxels):
- age: MAE of a ridge regression (5-fold out-of-fold on the runs' test subjects), beside the mean age's;
- disease: AUC for AD (the disease whose genetic liability the simulated images carry) of an L2 logistic regression,
  5-fold out-of-fold on the test subjects, with a 95% bootstrap interval, beside age + sex alone;
- the planted genetic image latent (AD's liability, truth/image_latent.parquet): 5-fold ridge R^2 on the test
  subjects; on a cohort simulated with --signal K > 1 also the T2-only latent's (MS's liability, seen in T2 alone:
  truth/image_latent_t2.parquet); the joint model's R^2 minus the same architecture's untrained, with a paired 95%
  bootstrap interval over the test subjects (both models' out-of-fold predictions resampled together);
- genetics: a multi-trait GWAS of the embedding (its top PCs, rank-normalised, age, sex, PC1-20; every subject, the
  GWAS uses no label) per side (T1 side, T2 side): loci at 5e-8 and the planted image-latent variants found; the
  agreement of the T1 and T2 sides (variants at 5e-8 on both / on either; for the single-modality models, the T1
  model's side against the T2 model's); the HE heritability of the side's top PCs (how many exceed 2 se, and their
  mean; beside it the ceiling, the planted latent's own HE heritability through the same regression) and the
  phenotypic and genetic correlation of the two sides' first PCs (pipelines/statgen/heritability.py, jackknife
  se; signed so the phenotypic correlation is positive). The multi-trait test's p-values are uniform on null data
  (tests/test_gwas.py). T1 and T2 render the same simulated anatomy, so agreement and rg between sides are high for
  any model that summarises anatomy: the planted latent's R^2 and its variants are the measures of learning.
Writes evaluation.csv, evaluation.md, evaluation.png, gwas/ (one folder per run and side), summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError
from comical.pipelines.statgen.gwas import GENOME_WIDE

PCS = 10  # embedding PCs per side for the GWAS and the heritabilities
RUN_NAMES = ("joint", "t1", "t2", "autoencoder")
RAW_PCA_SUBJECTS = 2000  # the raw-voxel PCA's fit sample: 2,000 x 145,920 voxels at 4 mm is 1.2 GB of float32


def _sides(frame: pl.DataFrame, prefix: str) -> np.ndarray:
    return frame.select(pl.col(f"^{prefix}_\\d+$")).to_numpy()


def paired_r2_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, seed: int = 0,
                         resamples: int = 2000) -> dict:
    """R^2 of predictions a minus that of b for the same y, with a 95% percentile bootstrap interval over subjects
    (each resample draws subjects with replacement and scores both predictions on them)."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), (resamples, len(y)))

    def r2(p: np.ndarray) -> np.ndarray:  # vectorised over the resamples
        yy, pp = y[draws], p[draws]
        return 1 - ((yy - pp) ** 2).sum(1) / ((yy - yy.mean(1, keepdims=True)) ** 2).sum(1)

    low, high = np.percentile(r2(a) - r2(b), [2.5, 97.5])
    return {"difference": float(r2_score(y, a) - r2_score(y, b)), "low": float(low), "high": float(high)}


def _pcs(x: np.ndarray, k: int = PCS) -> np.ndarray:
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, :k] * s[:k]


def evaluate_momentum(runs: dict[str, Path], cohort_dir: Path, stage: Path, *, workers: int = 1, seed: int = 0,
                      qc_dir: Path | None = None) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict

    from comical.data_io.cohort import load_cohort
    from sklearn.metrics import r2_score

    from comical.distributed.metrics import ridge_predictions
    from comical.pipelines.gemcont.evaluate import _auc, _covariates, _embedding_gwas, _labels, _latent, _oof_scores
    from comical.pipelines.statgen.heritability import HeEstimator, cohort_qc

    unknown = [r for r in runs if r not in RUN_NAMES]
    if unknown:
        raise InputError(f"--runs: {unknown} unknown; name runs {', '.join(RUN_NAMES)}")
    cohort = load_cohort(cohort_dir)
    frames = {}
    for name, run in runs.items():
        path = Path(run) / "embeddings.parquet"
        if not path.is_file():
            raise InputError(f"--runs {name}={run}: no embeddings.parquet (a finished `comical train --task "
                             f"momentum-*` or `autoencoder-t1t2` run)")
        frames[name] = pl.read_parquet(path).sort("eid")
    first = next(iter(frames.values()))["eid"].to_numpy()
    if any(not np.array_equal(f["eid"].to_numpy(), first) for f in frames.values()):
        raise InputError("--runs: the runs embed different subjects; train them on the same cohort and seed")
    qc = cohort_qc(cohort, qc_dir)  # a `comical qc` folder of this cohort (checked before any compute), or run now
    split = next(iter(frames.values()))["split"].to_numpy()
    # the trivial references: the joint architecture untrained, and PCs of the raw voxels
    reference = runs.get("joint") or next(iter(runs.values()))
    frames["untrained"] = _untrained(Path(reference), first, split, seed)
    frames["raw voxels"] = _raw_voxels(Path(reference), first, split, seed)
    test = split == "test"
    age = _covariates(cohort, first, ["age"])[:, 0].astype(float)
    ad = _labels(cohort, "AD", first[test])
    latent = _latent(Path(cohort_dir) / "truth", first)
    t2_latent = _latent(Path(cohort_dir) / "truth", first, "image_latent_t2")  # --signal K > 1 only
    covariates_auc = _auc(ad, _oof_scores(_covariates(cohort, first[test], ["age", "sex"]).astype(float), ad, seed),
                          seed)
    folds = KFold(5, shuffle=True, random_state=seed)
    mean_mae = float(np.abs(age[test] - cross_val_predict(RidgeCV(), np.zeros((test.sum(), 1)), age[test],
                                                          cv=folds)).mean())
    latent_variants = _latent_variants(Path(cohort_dir))

    kept = qc.samples["filter"].to_numpy() == "PASS"
    cohort_eids = cohort.eids.cast(pl.Int64).to_numpy()
    use = kept & np.isin(cohort_eids, first)
    in_grm = np.searchsorted(first, cohort_eids[use])
    h2_covariates = _covariates(cohort, cohort_eids[use], ["age", "sex"] + [f"PC{i}" for i in range(1, 11)])
    # exact HE up to EXACT_MAX_SUBJECTS, randomized above (no n x n matrix: memory flat in the subjects)
    he = HeEstimator(cohort.genotypes, cohort.sample_index[use], np.flatnonzero(qc.variants["pruned_in"].to_numpy()),
                     h2_covariates, seed=seed)
    ceiling = None
    if latent is not None:  # the ceiling: the planted latent's own heritability through the same HE regression
        h2, se = he.h2(latent[in_grm].reshape(-1, 1))
        ceiling = {"latent_h2": float(h2[0]), "latent_h2_se": float(se[0])}

    rows, hits, first_pcs, predicted_latents = [], {}, {}, {}
    for name, frame in frames.items():
        sides = [p for p in ("t1", "t2", "z", "raw") if f"{p}_0" in frame.columns]
        x = np.column_stack([_sides(frame, s) for s in sides])
        # standardised columns (no label used): embeddings are unit vectors whose dimensions can vary by 1e-3, which
        # a ridge penalty would shrink to the mean whatever they hold
        x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1)
        row = {"model": name, "dims": int(x.shape[1]), "n_test": int(test.sum())}
        predicted = cross_val_predict(RidgeCV(alphas=np.logspace(-2, 4, 13)), x[test], age[test], cv=folds)
        row |= {"age_mae": float(np.abs(predicted - age[test]).mean()), "age_mae_mean_predictor": mean_mae}
        row |= {f"ad_{k}": v for k, v in _auc(ad, _oof_scores(x[test], ad, seed), seed).items()}
        row |= {f"ad_covariates_{k}": v for k, v in covariates_auc.items()}
        for key, target in (("latent", latent), ("t2_latent", t2_latent)):  # 5-fold ridge on the test subjects
            if target is not None:  # the T2-only latent (K > 1): what the T2 contrast carries and T1 does not
                predicted_latents[(name, key)] = ridge_predictions(x[test], target[test])
                row[f"{key}_r2"] = float(r2_score(target[test], predicted_latents[(name, key)]))
        for side in sides:
            pcs = _pcs(_sides(frame, side))
            first_pcs[(name, side)] = pcs[in_grm, :1]
            gwas = _embedding_gwas(pl.DataFrame({"eid": first, **{f"pc{k}": pcs[:, k] for k in range(pcs.shape[1])}}),
                                   Path(cohort_dir), stage / "gwas" / f"{name.replace(' ', '_')}_{side}", workers)
            significant = set(gwas.filter(pl.col("p_value") < GENOME_WIDE)["variant_id"].to_list())
            hits[(name, side)] = significant
            h2, se = he.h2(pcs[in_grm])
            row |= {f"{side}_loci": int(gwas["loci"][0]), f"{side}_variants_at_5e-8": len(significant),
                    f"{side}_lambda_gc": float(gwas["lambda_gc"][0]),
                    f"{side}_latent_variants_at_5e-8": len(significant & latent_variants),
                    f"{side}_mean_h2": float(h2.mean()), f"{side}_pcs_h2_above_2se": int((h2 > 2 * se).sum()),
                    f"{side}_max_h2_z": float(np.max(h2 / np.where(se > 0, se, np.inf)))}
        if len(sides) == 2:
            row |= _sides_compared(hits[(name, "t1")], hits[(name, "t2")], first_pcs[(name, "t1")],
                                   first_pcs[(name, "t2")], he)
        rows.append(row)
    if ("t1", "t1") in hits and ("t2", "t2") in hits:  # the two single-modality models against each other
        rows.append({"model": "t1 + t2 (single-modality models)",
                     **_sides_compared(hits[("t1", "t1")], hits[("t2", "t2")], first_pcs[("t1", "t1")],
                                       first_pcs[("t2", "t2")], he)})
    table = pl.DataFrame(rows, infer_schema_length=None)
    table.write_csv(stage / "evaluation.csv")
    learned = {key: paired_r2_difference(target[test], predicted_latents[("joint", key)],
                                         predicted_latents[("untrained", key)], seed=seed)
               for key, target in (("latent", latent), ("t2_latent", t2_latent))
               if ("joint", key) in predicted_latents}  # what training added to the architecture
    (stage / "evaluation.md").write_text(_markdown(table) + (
        f"\nThe ceiling of the heritabilities above: the planted latent itself (AD's genetic liability, "
        f"truth/image_latent.parquet) through the same HE regression, GRM and covariates: h2 "
        f"{_fmt(ceiling['latent_h2'], 2)} (se {_fmt(ceiling['latent_h2_se'], 2)}).\n" if ceiling else "") + "".join(
        f"\nWhat training added: the joint model's {key.replace('_', ' ')} R^2 minus its untrained architecture's, "
        f"{_fmt(d['difference'])} (paired 95% bootstrap interval over the test subjects {_fmt(d['low'])} to "
        f"{_fmt(d['high'])}).\n" for key, d in learned.items()))
    _figure(table, stage / "evaluation.png")
    summary = {"rows": table.to_dicts(), "n_test": int(test.sum()), "n_gwas": int(len(first)), "ceiling": ceiling,
               "joint_minus_untrained_r2": learned}
    (stage / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _sides_compared(hits_a: set, hits_b: set, pc_a: np.ndarray, pc_b: np.ndarray, he) -> dict:
    """Hit agreement of two sides and the correlations of their first PCs: phenotypic, and genetic (bivariate HE,
    signed so that the phenotypic correlation is positive: a PC's sign is arbitrary)."""
    r = float(np.corrcoef(pc_a[:, 0], pc_b[:, 0])[0, 1])
    b = pc_b * (1 if r >= 0 else -1)
    rg, se = he.rg(pc_a, b)
    return {**_agreement(hits_a, hits_b), "r_t1_t2": abs(r), "rg_t1_t2": float(rg[0]), "rg_t1_t2_se": float(se[0])}


def _untrained(run: Path, eids: np.ndarray, split: np.ndarray, seed: int) -> pl.DataFrame:
    """The run's architecture at its initial weights (the seed's), embedding the same subjects."""
    import torch

    from comical.distributed.task import get_task

    spec = json.loads((run / "model" / "model.json").read_text())
    task = get_task(spec["task"]).bind(spec["input"])
    torch.manual_seed(seed)
    model = task.build_model(task.model_config.from_dict(spec["model"]), spec["input"])
    stored, embeddings = task.embed(model, eids)
    at = _positions(stored, eids)
    columns = {f"{prefix}_{k}": v[at, k] for prefix, v in embeddings.items() for k in range(v.shape[1])}
    return pl.DataFrame({"eid": eids, "split": split, **columns})


def _raw_voxels(run: Path, eids: np.ndarray, split: np.ndarray, seed: int, components: int = 64) -> pl.DataFrame:
    """The top PCs of the raw T1 and T2 voxels: PCA fitted on at most RAW_PCA_SUBJECTS training subjects, every
    subject projected batch by batch (memory that of the fit sample, whatever the cohort's size)."""
    from sklearn.decomposition import PCA

    from comical.data_io.images import open_image_store
    from comical.distributed.tasks.momentum import _paired_batches

    spec = json.loads((run / "model" / "model.json").read_text())
    store = open_image_store(spec["input"]["images"])
    train = eids[split == "train"]
    fit = np.sort(np.random.default_rng(seed).choice(train, min(len(train), RAW_PCA_SUBJECTS), replace=False))
    sample, row = np.empty((len(fit), 2 * int(np.prod(store.shape))), np.float32), 0
    for volumes, batch_eids in _paired_batches(store, ["t1", "t2"], fit):
        sample[row:row + len(batch_eids)] = np.column_stack([volumes[m].reshape(len(batch_eids), -1)
                                                             for m in ("t1", "t2")])
        row += len(batch_eids)
    pca = PCA(components, random_state=seed).fit(sample)
    del sample
    scores, stored = [], []
    for volumes, batch_eids in _paired_batches(store, ["t1", "t2"], eids):
        x = np.column_stack([volumes[m].reshape(len(batch_eids), -1) for m in ("t1", "t2")])
        scores.append(pca.transform(x))
        stored.append(batch_eids)
    scores = np.concatenate(scores)[_positions(np.concatenate(stored), eids)]
    return pl.DataFrame({"eid": eids, "split": split, **{f"raw_{k}": scores[:, k] for k in range(components)}})


def _positions(stored: np.ndarray, eids: np.ndarray) -> np.ndarray:
    """Rows of `stored` holding each of `eids`."""
    order = np.argsort(stored)
    return order[np.searchsorted(stored[order], eids)]


def _agreement(a: set, b: set) -> dict:
    return {"variants_both_sides": len(a & b), "variants_either_side": len(a | b),
            "side_agreement": len(a & b) / len(a | b) if a | b else None}


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
             "Age, AD and the planted latent: 5-fold out-of-fold on the runs' test subjects (in brackets: the mean "
             "age; age + sex alone). GWAS and heritability: every subject, top 10 PCs of each side's embedding "
             "(T1 / T2 side; z: the autoencoder; raw: PCs of the voxels). `untrained`: the joint architecture at its "
             "initial weights. Sides compared: variants at 5e-8 on both / either, the phenotypic and the genetic "
             "correlation of the two sides' first PCs (T1 and T2 show the same simulated anatomy, so any "
             "anatomical summary correlates across them).", "",
             "| model | age MAE (mean age) | AD AUC (age + sex) | planted latent R^2 | loci at 5e-8 per side | "
             "planted latent variants found per side | PCs with h2 > 2 se per side (mean h2) | variants both / "
             "either side | r, rg (se) of the sides' first PCs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        sides = [s for s in ("t1", "t2", "z", "raw") if r.get(f"{s}_loci") is not None]
        cells = [r["model"]]
        if r.get("age_mae") is not None:
            cells += [f"{_fmt(r['age_mae'], 2)} ({_fmt(r['age_mae_mean_predictor'], 2)})",
                      f"{_fmt(r.get('ad_auc'))} ({_fmt(r.get('ad_covariates_auc'))})", _fmt(r.get("latent_r2"))
                      + (f" (T2-only latent {_fmt(r['t2_latent_r2'])})" if r.get("t2_latent_r2") is not None else "")]
        else:
            cells += ["", "", ""]
        cells += [" / ".join(str(r[f"{s}_loci"]) for s in sides),
                  " / ".join(str(r[f"{s}_latent_variants_at_5e-8"]) for s in sides),
                  " / ".join(f"{r[f'{s}_pcs_h2_above_2se']} ({_fmt(r[f'{s}_mean_h2'], 2)})" for s in sides),
                  f"{r['variants_both_sides']} / {r['variants_either_side']}" if r.get("variants_either_side")
                  is not None else "",
                  f"{_fmt(r.get('r_t1_t2'), 2)}, {_rg_cell(r)}" if r.get("r_t1_t2") is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(table: pl.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = table.filter(pl.col("age_mae").is_not_null())
    names = models["model"].to_list()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(names, models["age_mae"].to_list())
    axes[0].axhline(models["age_mae_mean_predictor"][0], color="grey", ls="--", label="mean age")
    axes[0].set_title("age MAE (years)")
    axes[0].legend()
    axes[1].bar(names, [a if a is not None else 0 for a in models["ad_auc"].to_list()])
    axes[1].axhline(models["ad_covariates_auc"][0] or 0.5, color="grey", ls="--", label="age + sex")
    axes[1].set_title("AD AUC")
    axes[1].legend()
    if "latent_r2" in models.columns:
        axes[2].bar(names, models["latent_r2"].to_list())
    axes[2].set_title("planted genetic image latent, R^2")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
