"""Paper 001's evaluation of a GEMCONT run on its held-out (test) subjects, each metric beside a trivial model's.

    comical evaluate gemcont --run RUN/ --cohort COHORT/ --out DIR/

1. Embedding GWAS: the test subjects' image embeddings projected on all their principal components and rank-
   normalised (paper 001 section 2.2), one joint test per variant (`comical gwas --multi-trait`: Wilks' exact F),
   adjusted for age, sex and the top 20 genetic PCs; hits clumped into loci (r^2 < 0.05 within 5 Mb). Reported: the
   fraction of the run's panel (the disease's catalog hits, clumped) at 5e-8 and at 0.05/K. On a simulated cohort,
   split by the truth: the panel's causal variants and its false catalog hits (a negative control), and the planted
   image latent's variants with and without direct IDP effects (the latter reachable only through the latent); an
   exact McNemar test of GEMCONT against the random encoder on the planted variants.
2. The planted image latent's recovery: 5-fold ridge R^2, every method on the same (at most 2,000) test subjects.
3. Disease AUC from the image embeddings: out-of-fold L2 logistic regression (5 stratified folds), a bootstrap 95%
   interval; NA with fewer than 5 cases.
Beside GEMCONT: an untrained (random-initialised, seeded) encoder of the same architecture through the same steps,
the raw voxels (R^2), and for the AUC the PRS (the panel's effects x the run's genotype features, no fit), the same
logistic regression on the genotype features and on age and sex, and on simulated cohorts the planted latent.
Writes evaluation.tsv, evaluation.json, evaluation.png and the GWAS tables under gwas/.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError

GENOME_WIDE = 5e-8


def evaluate_gemcont(run: Path, cohort: Path, stage: Path, *, workers: int = 1, seed: int = 0) -> dict:
    """Writes the evaluation into `stage` (the CLI's staged output folder); returns its summary."""
    from comical.data_io.cohort import load_cohort
    from comical.distributed.export import load_model
    from comical.distributed.tasks.gemcont import R2_SUBJECTS, embed_cohort, r2_subset
    from comical.pipelines.registry import check_evaluation

    model, spec = load_model(Path(run) / "model")
    check_evaluation(spec["task"], "gemcont", run)
    cohort_data = load_cohort(cohort)
    test = pl.from_arrow(embed_cohort(model, spec["input"], run, cohort, split="test"))
    random_test = pl.from_arrow(embed_cohort(_untrained(spec), spec["input"], run, cohort, split="test"))
    eids = test["eid"].to_numpy()
    assert np.array_equal(eids, random_test["eid"].to_numpy())  # one store read in one order: rows pair up
    image_cols = [c for c in test.columns if c.startswith("image_")]
    test_x, random_x = test.select(image_cols).to_numpy(), random_test.select(image_cols).to_numpy()
    panel = pl.read_csv(_inputs(run, spec) / "panel.tsv", separator="\t")
    truth_dir = Path(cohort) / "truth"
    truth = _truth(truth_dir, spec["input"]["disease"])

    rows = {}
    for name, frame in (("gemcont", test), ("random_encoder", random_test)):
        gwas = _embedding_gwas(frame.select("eid", *image_cols), cohort, stage / "gwas" / name, workers)
        rows[name] = _recovery(gwas, panel["variant_id"].to_list(), truth)
    comparison = (_mcnemar(rows["gemcont"].pop("_planted_found"), rows["random_encoder"].pop("_planted_found"))
                  if truth is not None else None)
    disease = spec["input"]["disease"]
    y = _labels(cohort_data, disease, eids)
    rows["gemcont"] |= _auc(y, _oof_scores(test_x, y, seed), seed)
    rows["random_encoder"] |= _auc(y, _oof_scores(random_x, y, seed), seed)
    rows["prs"] = _auc(y, _prs(run, spec, eids), seed)
    rows["genotype_features"] = _auc(y, _oof_scores(_features(run, spec, eids), y, seed), seed)
    rows["age_sex"] = _auc(y, _oof_scores(_covariates(cohort_data, eids, ["age", "sex"]), y, seed), seed)
    latent = _latent(truth_dir, eids)
    if latent is not None:
        from comical.data_io.images import open_image_store
        from comical.distributed.metrics import ridge_r2

        pick = r2_subset(len(eids), spec["input"].get("seed", 0))  # the subjects training's test used
        volumes, stored = open_image_store(Path(cohort) / "images").read(spec["input"]["modality"], eids[pick])
        if not np.array_equal(stored, eids[pick]):
            raise InputError(f"{cohort}/images: subjects not in eid order; expected the order `comical simulate` "
                             "writes")
        rows["gemcont"]["latent_r2"] = ridge_r2(test_x[pick], latent[pick])
        rows["random_encoder"]["latent_r2"] = ridge_r2(random_x[pick], latent[pick])
        rows["raw_voxels"] = {"latent_r2": ridge_r2(volumes.reshape(len(volumes), -1), latent[pick])}
        rows["planted_latent"] = _auc(y, latent, seed)
    summary = {"run": str(run), "cohort": str(cohort), "disease": disease, "n_test": int(len(eids)),
               "n_test_cases": int(y.sum()), "panel_variants": panel.height,
               "planted_variants": None if truth is None else truth["planted"].height,
               "latent_r2_subjects": int(min(len(eids), R2_SUBJECTS)),
               "planted_gemcont_vs_random_encoder": comparison,
               "bonferroni": 0.05 / panel.height, "methods": rows,
               "notes": ["random_encoder: the same architecture, untrained, seeded; its embeddings go through the "
                         "same GWAS, ridge and logistic steps",
                         "prs: the panel's effect sizes x the run's genotype features (PC-regressed, "
                         "standardised); no fit. genotype_features, age_sex: the same out-of-fold logistic "
                         "regression as the embeddings, on those inputs",
                         "AUC intervals: bootstrap of the subjects given their out-of-fold scores (the refits' "
                         "variance is not in them)",
                         "planted_also_on_idps: planted latent variants that the simulator also gives direct IDP "
                         "effects; planted_latent_only: the rest, reachable only through the latent"]}
    _write_table(summary, stage / "evaluation.tsv")
    (stage / "evaluation.json").write_text(json.dumps(summary, indent=1) + "\n")
    _figure(summary, stage / "evaluation.png")
    return summary


def summary_line(summary: dict) -> str:
    m = summary["methods"]

    def f(method, key, digits=3):
        value = m.get(method, {}).get(key)
        return "NA" if value is None else f"{value:.{digits}f}"

    line = (f"{summary['n_test']} held-out subjects: disease-panel hits at 5e-8 {f('gemcont', 'panel_at_5e-8', 2)} "
            f"(random encoder {f('random_encoder', 'panel_at_5e-8', 2)})")
    if "planted_at_5e-8" in m["gemcont"]:
        only = "planted_latent_only_at_5e-8"
        line += (f", planted latent variants without direct IDP effects {f('gemcont', only, 2)} "
                 f"({f('random_encoder', only, 2)}); latent R^2 {f('gemcont', 'latent_r2')} "
                 f"({f('random_encoder', 'latent_r2')}, raw voxels {f('raw_voxels', 'latent_r2')})")
    return line + (f"; {summary['disease']} AUC {f('gemcont', 'auc')} [95% {f('gemcont', 'auc_low', 2)}-"
                   f"{f('gemcont', 'auc_high', 2)}] (random encoder {f('random_encoder', 'auc')}, age+sex "
                   f"{f('age_sex', 'auc')}, PRS {f('prs', 'auc')}; {summary['n_test_cases']} cases)")


def _inputs(run: Path, spec: dict) -> Path:
    inputs = Path(run) / "inputs"
    return inputs if (inputs / "manifest.json").is_file() else Path(spec["input"]["data"])


def _untrained(spec: dict):
    import torch

    from comical.distributed.tasks.gemcont import GemcontConfig, GemcontTask

    torch.manual_seed(spec["input"].get("seed", 0))
    return GemcontTask().build_model(GemcontConfig.from_dict(spec["model"]), spec["input"]).eval()


def _embedding_gwas(frame, cohort: Path, folder: Path, workers: int) -> pl.DataFrame:
    from comical.pipelines.statgen.gwas import run_gwas, tables_from_cohort

    folder.mkdir(parents=True)
    traits = folder / "embeddings.parquet"
    frame.write_parquet(traits)
    dims = frame.width - 1
    covariates = ["age", "sex"] + [f"PC{i}" for i in range(1, 21)]
    reader = functools.partial(tables_from_cohort, Path(cohort), binary=False, pheno_names=None,
                               covar_names=covariates, multi_trait=traits, mt_pcs=dims, rank_normalise=True)
    summary = run_gwas(reader, folder / "gwas", workers=workers, plots=False,
                       clump={"p1": GENOME_WIDE, "p2": 1e-2, "r2": 0.05, "window_kb": 5000})
    table = pl.read_csv(folder / "gwas.multi_trait.tsv", separator="\t", null_values="NA")
    info = summary["phenotypes"]["multi_trait"]
    return table.with_columns(pl.lit(info["lambda_gc"]).alias("lambda_gc"), pl.lit(info["clumps"]).alias("loci"))


def _recovery(gwas: pl.DataFrame, panel: list[str], truth: dict | None) -> dict:
    """Fractions of variant sets at 5e-8. With the simulator's truth: the panel split into AD's causal variants and
    its false catalog hits (a negative control: only LD can carry them), and the planted latent's variants split into
    those that also act on IDPs directly (reachable without the latent) and those that act only through it."""
    p = dict(zip(gwas["variant_id"].to_list(), gwas["p_value"].fill_null(1.0).to_list()))
    missing = [v for v in panel if v not in p]
    if missing:
        raise InputError(f"the run's panel variants {missing[:3]} are not in the cohort's genotypes")

    def fraction(variants):
        variants = [v for v in variants if v in p]
        return float(np.mean([p[v] < GENOME_WIDE for v in variants])) if variants else None

    out = {"panel_at_5e-8": fraction(panel), "panel_at_bonferroni": float(np.mean([p[v] < 0.05 / len(panel)
                                                                                   for v in panel])),
           "lambda_gc": float(gwas["lambda_gc"][0]), "loci_at_5e-8": int(gwas["loci"][0]),
           "variants_at_5e-8": int(sum(v < GENOME_WIDE for v in p.values()))}
    if truth is not None:
        planted, direct, causal = truth["planted"], truth["direct"], truth["causal"]
        found = np.array([p.get(v, 1.0) < GENOME_WIDE for v in planted["variant_id"]])
        weight2 = planted["weight"].to_numpy() ** 2
        out |= {"panel_causal_at_5e-8": fraction([v for v in panel if v in causal]),
                "panel_false_hits_at_5e-8": fraction([v for v in panel if v not in causal]),
                "planted_at_5e-8": float(found.mean()),
                "planted_weight2_share_at_5e-8": float(weight2[found].sum() / weight2.sum()),
                "planted_latent_only_at_5e-8": fraction([v for v in planted["variant_id"] if v not in direct]),
                "planted_also_on_idps_at_5e-8": fraction([v for v in planted["variant_id"] if v in direct]),
                "_planted_found": found}
    return out


def _truth(truth_dir: Path, disease: str) -> dict | None:
    """The simulator's truth for the recovery split (None for a cohort without it)."""
    files = {name: truth_dir / f"{name}.parquet" for name in ("image_latent_variants", "snp_idp_effects",
                                                               "disease_snp_effects")}
    if not all(f.is_file() for f in files.values()):
        return None
    effects = pl.read_parquet(files["disease_snp_effects"]).filter((pl.col("disease") == disease) & pl.col("causal"))
    return {"planted": pl.read_parquet(files["image_latent_variants"]),
            "direct": set(pl.read_parquet(files["snp_idp_effects"])["variant_id"]),
            "causal": set(effects["variant_id"])}


def _mcnemar(a: np.ndarray, b: np.ndarray) -> dict:
    """Exact McNemar test of two methods on the same variants: the discordant counts and the two-sided p."""
    from scipy import stats

    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"gemcont_only": only_a, "random_encoder_only": only_b, "p": float(p)}


def _labels(cohort, disease: str, eids: np.ndarray) -> np.ndarray:
    d = cohort.diagnoses.select(pl.col("eid").cast(pl.Int64), disease)
    y = pl.DataFrame({"eid": eids.astype(np.int64)}).join(d, on="eid", how="left")[disease]
    if y.null_count():
        raise InputError(f"diagnoses: {y.null_count()} test subjects have no {disease} status")
    return y.to_numpy().astype(int)


def _auc(y: np.ndarray, score: np.ndarray | None, seed: int = 0) -> dict:
    """AUC with a 95% bootstrap interval (2,000 resamples of subjects, cases and controls resampled apart: the
    heads' vectorised statistic); NA (None) with fewer than 5 cases or controls."""
    from comical.pipelines.downstream.stats import auc_interval

    if score is None or min(y.sum(), len(y) - y.sum()) < 5:
        return {"auc": None, "auc_low": None, "auc_high": None}
    auc, low, high = auc_interval(y, {"score": score}, resamples=2000, seed=seed)["score"]
    return {"auc": float(auc), "auc_low": float(low), "auc_high": float(high)}


def _oof_scores(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray | None:
    """Out-of-fold probabilities of an L2 logistic regression on standardised features (5 stratified folds)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if min(y.sum(), len(y) - y.sum()) < 5:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced"))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return cross_val_predict(model, x, y, cv=folds, method="predict_proba")[:, 1]


def _prs(run: Path, spec: dict, eids: np.ndarray) -> np.ndarray:
    return _features(run, spec, eids) @ np.asarray(spec["input"]["effects"])


def _features(run: Path, spec: dict, eids: np.ndarray) -> np.ndarray:
    """The run's genotype features (PC-regressed, standardised) of `eids`, as training saw them."""
    from comical.distributed.tasks.gemcont import GemcontTask, _rows

    all_eids, g = GemcontTask().bind({"data": str(_inputs(run, spec))}).genotype_features()
    return g[_rows(all_eids, eids)].numpy()


def _covariates(cohort, eids: np.ndarray, names: list[str]) -> np.ndarray:
    table = cohort.covariates.select(pl.col("eid").cast(pl.Int64), *names)
    return pl.DataFrame({"eid": eids.astype(np.int64)}).join(table, on="eid", how="left").drop("eid").to_numpy()


def _latent(truth_dir: Path, eids: np.ndarray, name: str = "image_latent") -> np.ndarray | None:
    """A planted latent (truth/NAME.parquet: eid, latent) for `eids`; None on a cohort without it."""
    path = truth_dir / f"{name}.parquet"
    if not path.is_file():
        return None
    latent = pl.read_parquet(path).sort("eid")
    return latent["latent"].to_numpy()[np.searchsorted(latent["eid"].to_numpy(), eids)]


METRICS = [("panel_at_5e-8", "disease panel hits at 5e-8"), ("panel_at_bonferroni", "disease panel hits at 0.05/K"),
           ("panel_causal_at_5e-8", "disease panel: causal variants at 5e-8"),
           ("panel_false_hits_at_5e-8", "disease panel: false catalog hits at 5e-8 (negative control)"),
           ("planted_at_5e-8", "planted latent variants at 5e-8"),
           ("planted_latent_only_at_5e-8", "planted latent variants without direct IDP effects at 5e-8"),
           ("planted_also_on_idps_at_5e-8", "planted latent variants with direct IDP effects at 5e-8"),
           ("planted_weight2_share_at_5e-8", "planted latent: share of its sum of squared weights at 5e-8"),
           ("loci_at_5e-8", "independent loci at 5e-8 (clumped r^2 < 0.05, 5 Mb)"),
           ("variants_at_5e-8", "variants at 5e-8"),
           ("lambda_gc", "lambda_GC"), ("latent_r2", "planted latent ridge R^2 (same subjects for all)"),
           ("auc", "disease AUC"),
           ("auc_low", "disease AUC, 95% bootstrap low"), ("auc_high", "disease AUC, 95% bootstrap high")]


def _write_table(summary: dict, path: Path) -> None:
    methods = summary["methods"]
    rows = [{"metric": label, **{m: methods[m].get(key) for m in methods}} for key, label in METRICS]
    pl.DataFrame(rows).write_csv(path, separator="\t", null_value="NA")


def _figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("panel_at_5e-8", "disease hits recovered (5e-8)"), ("latent_r2", "planted latent R^2"),
              ("auc", f"{summary['disease']} AUC (test)")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, title) in zip(axes, panels):
        names = [m for m, v in summary["methods"].items() if v.get(key) is not None]
        ax.bar(names, [summary["methods"][m][key] for m in names], color="#4c72b0")
        if key == "auc":
            ax.axhline(0.5, color="grey", ls="--", lw=1)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"GEMCONT on {summary['n_test']} held-out subjects ({summary['n_test_cases']} "
                 f"{summary['disease']} cases)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
