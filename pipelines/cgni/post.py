"""CGNI's post-analysis (paper 002 section II.F): sparse CCA between the embeddings, occlusion contributions, the
selected SNPs and brain regions, and how they compare with the planted ones.

- Sparse CCA: cca-zoo's iterative penalised least squares (Mai & Zhang 2019, the method the paper uses) between
  the main model's fold-0 image and genetic embeddings (z_v, z_g), standardised on fold 0's training rows; the
  number of components (1-5) and the L1 penalty chosen by cca-zoo's GridSearchCV, 5-fold on those rows (score: the
  mean canonical correlation of the held-out rows). Each component's correlation on the training rows, fold 0's
  validation rows and the hold-out (Table 3's shape).
- Occlusion (eq. 6): contribution_k = mean over subjects of u(x) - u(x with feature k occluded), u a component's
  canonical score: a SNP is occluded by setting its dosage to 0 (the paper codes 0/1/2; occluding to the mean would
  leave the signed mean of eq. 6 near 0 for every SNP), a region by setting its voxels to fold 0's mean training
  image before the CNN (zeros would be out of distribution and favour large regions; regions: the cohort's atlas,
  images/atlas.nii.gz, one parcel per IDP). Subjects: fold 0's validation rows and the hold-out, at most
  `occlusion_subjects`. Canonical signs are arbitrary: read contributions by size, not direction.
- Selection: features whose contribution lies more than 2.5 (regions) or 3 (SNPs) SDs from the mean contribution,
  in any component. Scored against truth/wm_regions.parquet and truth/wm_snp_effects.parquet when present (the
  SNPs also split into AD's causal variants, which drive the image latent too, and those acting on working memory
  only): precision and recall beside a random selection of the same size (its expected precision = the planted
  share of the candidates, recall = the selected share, and the 95% range of planted features it would hold).
- Sparse CCA beside a null: each component's validation correlation with the validation subjects' pairing
  shuffled (95th percentile of |r|).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch

REGION_SD, SNP_SD = 2.5, 3.0  # paper 002: the selection thresholds
CCA_COMPONENTS = (1, 2, 3, 4, 5)
CCA_ALPHAS = (1e-3, 1e-2, 3e-2)
NULL_PERMUTATIONS = 200  # validation correlations of the fitted components with the pairing shuffled


def sparse_cca(zv: np.ndarray, zg: np.ndarray, train: np.ndarray, splits: dict[str, np.ndarray], seed: int):
    """(fitted model, table: component, <split> correlation for each split, chosen n_components and alpha)."""
    import warnings

    from cca_zoo.model_selection import GridSearchCV
    from cca_zoo.sparse import IPLSCCA

    views = [_standardise(v, train) for v in (zv, zg)]
    search = GridSearchCV(IPLSCCA(random_state=seed, max_iter=200),
                          param_grid={"n_components": list(CCA_COMPONENTS), "alpha": list(CCA_ALPHAS)}, cv=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of the grid's weakest settings
        search.fit([v[train] for v in views])
    model = search.best_estimator_
    rows = []
    rng = np.random.default_rng(seed)
    shuffles = [rng.permutation(int(splits["validation"].sum())) for _ in range(NULL_PERMUTATIONS)]
    for c in range(model.n_components):
        row = {"component": c + 1}
        for name, where in splits.items():
            u, w = (s[:, c] for s in model.transform([v[where] for v in views]))
            row[name] = _correlation(u, w)
            if name == "validation":  # the same subjects with their genetic scores shuffled
                row["validation_null_95"] = float(np.percentile([abs(_correlation(u, w[p])) for p in shuffles], 95))
        rows.append(row)
    table = pl.DataFrame(rows).with_columns(pl.lit(model.n_components).alias("n_components"),
                                            pl.lit(float(search.best_params_["alpha"])).alias("alpha"))
    return model, views, table


def _correlation(u: np.ndarray, w: np.ndarray) -> float:
    return float(np.corrcoef(u, w)[0, 1]) if u.std() > 0 and w.std() > 0 else float("nan")


def _standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    sd = x[train].std(0)
    return (x - x[train].mean(0)) / np.where(sd > 0, sd, 1)


def occlusion_contributions(score, x: np.ndarray, features: list[np.ndarray], fill: np.ndarray) -> np.ndarray:
    """Eq. 6: (features x components) mean over rows of score(x) - score(x with feature k occluded): its entries
    (`features[k]` indexes them in a flattened row of `x`: a SNP's column, a region's voxels) replaced by `fill`'s
    (one flattened row: a SNP's dosage 0 as the paper codes it, a region's mean training image)."""
    base = score(x)
    out = np.zeros((len(features), base.shape[1]))
    flat = x.reshape(len(x), -1)
    fill = np.asarray(fill).reshape(-1)
    for k, entries in enumerate(features):
        occluded = flat.copy()
        occluded[:, entries] = fill[entries]
        out[k] = (base - score(occluded.reshape(x.shape))).mean(0)
    return out


def selected(contributions: np.ndarray, sds: float) -> np.ndarray:
    """Features more than `sds` SDs from the mean contribution, in any component."""
    z = (contributions - contributions.mean(0)) / contributions.std(0).clip(min=1e-12)
    return (np.abs(z) > sds).any(1)


def truth_score(names: list[str], chosen: np.ndarray, planted: set[str]) -> dict:
    """Precision and recall of a selection against the planted set, beside a random selection of its size: its
    expected precision and recall, and the 95% range of planted features it would hold (hypergeometric)."""
    from scipy.stats import hypergeom

    planted_here = np.array([n in planted for n in names])
    hits = int((chosen & planted_here).sum())
    n, k, p = len(names), int(chosen.sum()), int(planted_here.sum())
    low, high = hypergeom(n, p, k).ppf([0.025, 0.975]) if n else (float("nan"),) * 2
    return {"candidates": n, "planted": p, "selected": k, "selected_planted": hits,
            "random_planted_low": float(low), "random_planted_high": float(high),
            "precision": hits / k if k else float("nan"), "precision_random": p / n if n else float("nan"),
            "recall": hits / p if p else float("nan"), "recall_random": k / n if n else float("nan")}


def post_analysis(stage: Path, cohort_dir: Path, rows: dict, z: dict, settings) -> dict:
    """Sparse CCA, occlusion, selection and truth scores of the main model's fold-0 networks; writes cca.csv,
    contributions_{regions,snps}.csv, selected_{regions,snps}.csv, truth_scores.csv; returns the tables and the
    markdown."""
    from comical.distributed.export import load_model

    fold = rows["fold"]
    train, val, holdout = (fold >= 0) & (fold != 0), fold == 0, fold == -1
    zv, zg = z["cgni_f0"]
    model, views, cca = sparse_cca(zv, zg, train, {"train": train, "validation": val, "holdout": holdout},
                                   settings.seed)
    cca.write_csv(stage / "cca.csv")
    scale = [(v[train].mean(0), np.where(v[train].std(0) > 0, v[train].std(0), 1)) for v in (zv, zg)]

    def canonical(view: int, embedding: np.ndarray) -> np.ndarray:
        """Canonical scores of one view's embeddings (standardised as the CCA's inputs were)."""
        both = [np.zeros((len(embedding), v.shape[1])) for v in views]
        both[view] = (embedding - scale[view][0]) / scale[view][1]
        return model.transform(both)[view]

    bank, _ = load_model(stage / "runs" / "contrastive" / "model")
    cnn, _ = load_model(stage / "runs" / "cnn" / "model")
    net = bank.nets["cgni_f0"]
    h_mean, h_sd = rows["hv_scale"][0]
    who = np.flatnonzero(val | holdout)[:settings.occlusion_subjects]

    @torch.no_grad()
    def genetic_score(g: np.ndarray) -> np.ndarray:
        return canonical(1, net.genetic(torch.from_numpy(g.astype(np.float32))).numpy())

    @torch.no_grad()
    def image_score(volumes: np.ndarray) -> np.ndarray:
        parts = []
        for i in range(0, len(volumes), 32):
            h = cnn.features(torch.from_numpy(volumes[i:i + 32, None].astype(np.float32)))[0].numpy()
            parts.append(net.image(torch.from_numpy(((h - h_mean) / h_sd).astype(np.float32))).numpy())
        return canonical(0, np.concatenate(parts))

    panel = pl.read_csv(stage / "inputs" / "panel.tsv", separator="\t")
    snp_names = panel["variant_id"].to_list()
    dosage_zero = (-panel["dosage_mean"] / panel["dosage_sd"]).to_numpy()  # a dosage of 0, standardised
    snp_contrib = occlusion_contributions(genetic_score, rows["g"][who], [np.array([j]) for j in range(len(snp_names))],
                                          dosage_zero)
    volumes, atlas, region_names = _volumes_and_atlas(stage, cohort_dir, rows["eid"][who])
    mean_image = _volumes_and_atlas(stage, cohort_dir, rows["eid"][train])[0].mean(0)
    present = [r for r in range(len(region_names)) if (atlas == r).any()]
    region_contrib = occlusion_contributions(image_score, volumes, [np.flatnonzero(atlas.ravel() == r)
                                                                     for r in present], mean_image)
    region_names = [region_names[r] for r in present]

    snp_chosen, region_chosen = selected(snp_contrib, SNP_SD), selected(region_contrib, REGION_SD)
    _contribution_table(snp_names, snp_contrib, snp_chosen, "variant_id").write_csv(stage / "contributions_snps.csv")
    _contribution_table(region_names, region_contrib, region_chosen, "region").write_csv(
        stage / "contributions_regions.csv")
    planted = _planted(cohort_dir)
    scores = []
    for what, names, chosen in (("SNPs", snp_names, snp_chosen), ("regions", region_names, region_chosen)):
        truth = planted.get(what)
        (pl.DataFrame({"feature": [n for n, c in zip(names, chosen) if c]})
         .with_columns(pl.col("feature").is_in(list(truth or [])).alias("planted"))
         .write_csv(stage / f"selected_{what.lower()}.csv"))
        for label, subset in ([(what, truth)] + ([(f"{what}: AD's (also the image latent)", planted["ad"]),
                                                  (f"{what}: working memory only", truth - planted["ad"])]
                                                 if what == "SNPs" and "ad" in planted else [])):
            if subset is not None:
                scores.append({"features": label, **truth_score(names, chosen, subset)})
    table = pl.DataFrame(scores) if scores else pl.DataFrame({"features": []})
    table.write_csv(stage / "truth_scores.csv")
    return {"cca": cca.to_dicts(), "truth": scores, "occlusion_subjects": int(len(who)),
            "markdown": _markdown(cca, scores, len(who), planted)}


def _volumes_and_atlas(stage: Path, cohort_dir: Path, eids: np.ndarray):
    """The subjects' volumes (in `eids` order), the atlas labels on the volume grid and the label names."""
    import json

    import nibabel

    from comical.data_io.images import open_image_store

    manifest = json.loads((stage / "inputs" / "manifest.json").read_text())
    images = Path(manifest["images"])
    volumes, stored = open_image_store(images).read(manifest["modality"], eids)
    volumes = volumes[np.argsort(stored)][np.argsort(np.argsort(eids))]
    atlas = np.asarray(nibabel.load(images / "atlas.nii.gz").dataobj)
    names = pl.read_csv(images / "atlas_labels.csv").sort("label")["idp"].to_list()
    return volumes, atlas, names


def _planted(cohort_dir: Path) -> dict[str, set[str]]:
    truth = cohort_dir / "truth"
    out = {}
    if (truth / "wm_snp_effects.parquet").is_file():
        effects = pl.read_parquet(truth / "wm_snp_effects.parquet")
        out["SNPs"] = set(effects.filter(pl.col("causal"))["variant_id"])
        if "ad_causal" in effects.columns:
            out["ad"] = set(effects.filter(pl.col("ad_causal"))["variant_id"])
    if (truth / "wm_regions.parquet").is_file():
        out["regions"] = set(pl.read_parquet(truth / "wm_regions.parquet")["idp"])
    return out


def _contribution_table(names, contributions: np.ndarray, chosen: np.ndarray, key: str) -> pl.DataFrame:
    return pl.DataFrame({key: names, **{f"component_{c + 1}": contributions[:, c]
                                        for c in range(contributions.shape[1])}, "selected": chosen})


def _markdown(cca: pl.DataFrame, scores: list[dict], n_subjects: int, planted: dict) -> str:
    lines = [f"## Sparse CCA of the fold-0 embeddings (Table 3's shape; {cca['n_components'][0]} components and "
             f"alpha {cca['alpha'][0]:g} by 5-fold grid search)", "",
             "Validation null: the 95th percentile of |r| over 200 shufflings of the validation subjects' pairing.", "",
             "| component | training | validation | validation null 95% | hold-out |", "|---|---|---|---|---|"]
    for row in cca.iter_rows(named=True):
        lines.append(f"| {row['component']} | {row['train']:.2f} | {row['validation']:.2f} | "
                     f"{row['validation_null_95']:.2f} | {row['holdout']:.2f} |")
    lines += ["", f"## Occlusion (eq. 6, {n_subjects} subjects): selected features against the planted ones", ""]
    if not scores:
        lines.append("No truth/ in the cohort: selections in selected_snps.csv and selected_regions.csv, unscored.")
        return "\n".join(lines)
    lines += ["| features | candidates | planted | selected | of them planted (random: 95% range) | "
              "precision (random) | recall (random) |", "|---|---|---|---|---|---|---|"]
    for s in scores:
        lines.append(f"| {s['features']} | {s['candidates']} | {s['planted']} | {s['selected']} | "
                     f"{s['selected_planted']} ({s['random_planted_low']:.0f}-{s['random_planted_high']:.0f}) | "
                     f"{s['precision']:.2f} ({s['precision_random']:.2f}) | {s['recall']:.2f} "
                     f"({s['recall_random']:.2f}) |")
    return "\n".join(lines)
