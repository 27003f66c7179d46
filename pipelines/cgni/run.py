"""`comical cgni`: paper 002's three-stage imaging-guided SNP representation for working-memory classification.

    comical cgni --cohort COHORT --out cgni/ [--loss-terms] [--loss-weights 0.7,0.3,0,0.4]

Stages, each a Ray Train fit through the engine (distributed/tasks/cgni.py), one local Ray session for all:
1. `runs/age`: the 3-D CNN pre-trained for brain age on the subjects with an image outside the two groups;
   `runs/cnn`: transferred to low vs high working memory, one network per cross-validation fold (first two blocks
   frozen); its flattened last block is h_v.
2. `runs/contrastive[_TERMS]`: the imaging (h_v) and genetic (SNP panel) encoders per fold, loss of eq. 5.
3. `runs/classify`: per fold, the classifier on z_g + h_v and the neural baselines (the sparse genetic NN on the
   panel, the NN on h_v + panel), side by side; the linear SVM on h_v + panel and the covariates-only reference
   (age and sex, logistic) are fitted here with scikit-learn.
Balanced accuracy (scikit-learn) of every model on each fold's training rows, its held-out fold and the 10%
hold-out: mean +- SD over the folds (paper 002 Tables 1 and 2). Post-analysis (pipelines/cgni/post.py): sparse CCA
between the main model's fold-0 embeddings, occlusion contributions, selected SNPs and regions against the truth.

Outputs: table1.csv/md, table2.csv/md (with --loss-terms), cca.csv, contributions_{regions,snps}.csv,
selected_{regions,snps}.csv, truth_scores.csv, cgni.md (all tables), summary.json, inputs/, runs/ (each fit's run
folder without its per-epoch checkpoints: model/ keeps the best epoch).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from comical.data_io.arrow_lists import from_fixed_list
from comical.data_io.errors import InputError, RunFailed

TERMS = ("L(v,g)", "L(g,v)", "L(v,v)", "L(g,g)")
PAPER_WEIGHTS = (0.7, 0.3, 0.0, 0.4)  # paper 002's best: terms (1), (2), (4)
L1 = 1e-5  # the sparse baselines' L1 weight on the summed absolute weights (paper: applied, value not stated)
CLASSIFIER_HIDDEN = {"cgni": [250, 200, 150], "genetic": [800, 600, 400], "concat": [500, 200]}
# paper 002 Table 1, balanced accuracy % (training / validation / hold-out), and the Table 2 rows it states
PAPER_TABLE1 = {"Imaging CNN": (81.34, 75.32, 87.02), "Sparse genetic NN": (59.80, 59.35, 59.28),
                "Imaging-genetic SVM (linear)": (95.5, 65.08, 65.23),
                "Imaging-genetic NN": (87.47, 87.08, 87.02), "CGNI": (91.37, 90.39, 88.91)}
COVARIATES = "Covariates only (age, sex)"
TRUE_FEATURES = "True features (age, sex, planted regions)"  # the ceiling, on a simulated cohort only
# ... with the planted SNP effects too: the ceiling of a model that also reads the panel (the liability's every part)
TRUE_ALL = "True features + planted SNP score"
PAPER_TABLE2 = {"L(v,g) + L(g,v) + L(g,g)": (91.37, 90.39, 88.91), "L(v,g)": (None, None, 88.31),
                "L(g,g)": (None, None, 88.10)}


@dataclasses.dataclass(frozen=True)
class CgniSettings:
    weights: tuple[float, ...] = PAPER_WEIGHTS  # lambda, sigma, gamma, theta of the main model
    grid: bool = False  # --loss-terms: also every non-empty subset of the four terms (weight 1 each)
    folds: int = 5
    age_epochs: int = 8
    cnn_epochs: int = 8
    contrastive_epochs: int = 30
    classify_epochs: int = 30
    age_subjects: int | None = None  # brain-age pre-training on at most this many (None: every subject it may use)
    image_batch: int = 16  # volumes a step (paper: 25)
    bank_batch: int = 64
    workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    occlusion_subjects: int = 64
    epoch_lines: bool = True

    def __post_init__(self):
        if len(self.weights) != 4 or min(self.weights) < 0 or not any(self.weights):
            raise InputError(f"--loss-weights {self.weights}: expected four weights >= 0, not all 0")
        if self.folds < 2:
            raise InputError(f"--folds {self.folds}: expected at least 2")
        if self.age_subjects is not None and self.age_subjects < 20:
            raise InputError(f"--age-subjects {self.age_subjects}: expected at least 20")


def combos(settings: CgniSettings) -> dict[str, tuple[float, ...]]:
    """Model name -> the four loss weights: the main model, and with --loss-terms every subset of the terms."""
    out = {"cgni": tuple(settings.weights)}
    if settings.grid:
        for k in range(1, 5):
            for subset in itertools.combinations(range(4), k):
                name = "cgni_" + "".join(str(t + 1) for t in subset)
                out[name] = tuple(1.0 if t in subset else 0.0 for t in range(4))
    return out


def terms_label(weights) -> str:
    return " + ".join(t for t, w in zip(TERMS, weights) if w)


def run_cgni(cohort_dir: str | Path, out: str | Path, *, settings: CgniSettings = CgniSettings(),
             panel: str | Path | None = None, force: bool = False, verbose: bool = False, say=print) -> dict:
    """`comical cgni` (module docstring): writes --out, returns the summary (also summary.json)."""
    from comical.data_io.output_dir import check_output_dir, staged_output_dir
    from comical.distributed.ray_session import init_ray, shutdown_ray

    run = {"command": "cgni", "cohort": str(Path(cohort_dir).resolve()),
           "panel": str(Path(panel).resolve()) if panel else None, "settings": dataclasses.asdict(settings)}
    out = check_output_dir(out, run, force=force, inputs=(Path(cohort_dir),))
    started = init_ray()
    try:
        with staged_output_dir(out, run) as stage:
            summary = _stages(Path(cohort_dir), stage, settings, panel, verbose, say)
    finally:
        if started:
            shutdown_ray()
    return summary


def _fit(stage: Path, name: str, spec: dict, settings: CgniSettings, verbose: bool) -> dict:
    """One stage through the engine; its per-epoch checkpoints are dropped once model/ holds the best epoch."""
    from comical.distributed.config import TrainConfig
    from comical.distributed.run import train_and_evaluate

    config = TrainConfig.from_dict(spec | {"seed": settings.seed, "engine": {"workers": settings.workers,
                                                                               "use_gpu": settings.use_gpu}})
    try:
        metrics = train_and_evaluate(config, stage / "runs" / name, verbose=verbose, epoch_lines=settings.epoch_lines)
    except (InputError, RunFailed):
        raise
    except Exception as err:  # a worker's crash (native ones too) reaches the user as one line naming the stage
        jobs = "brain-age pre-training" if name == "age" else f"all {settings.folds} folds in one job"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise RunFailed(f"stage {name} ({jobs}) failed: {lines[0] if lines else type(err).__name__}") from err
    shutil.rmtree(stage / "runs" / name / "checkpoints", ignore_errors=True)
    return metrics


def _stages(cohort_dir: Path, stage: Path, settings: CgniSettings, panel, verbose: bool, say) -> dict:
    from comical.distributed.tasks.cgni import read_cgni_inputs, write_bank_inputs
    from comical.pipelines.cgni.inputs import prepare_cgni_inputs
    from comical.pipelines.cgni.post import post_analysis

    inputs = stage / "inputs"
    manifest = prepare_cgni_inputs(cohort_dir, inputs, panel=panel, folds=settings.folds, seed=settings.seed,
                                   age_subjects=settings.age_subjects)
    n = manifest["subjects"]
    say(f"cgni: {n['low']} low (2-5) and {n['high']} high (9-12) working-memory subjects with images: "
        f"{n['cross_validation']} in {settings.folds} folds, {n['holdout']} held out; "
        f"{manifest['panel']['after_call_rate_and_maf']} panel SNPs")
    age = _fit(stage, "age", {"task": "cgni-age", "data": str(inputs), "epochs": settings.age_epochs,
                              "batch_size": settings.image_batch, "eval_batch_size": settings.image_batch}, settings,
               verbose)
    say(f"cgni stage 1: brain age MAE {age['mae_test']:.2f} y on the {age['n_test']} working-memory subjects, "
        f"unseen in pre-training (mean-age predictor {age['mae_mean_predictor_test']:.2f} y)")
    _fit(stage, "cnn", {"task": "cgni-cnn", "data": str(inputs), "epochs": settings.cnn_epochs,
                        "batch_size": settings.image_batch, "eval_batch_size": settings.image_batch,
                        "model": {"pretrained": str(stage / "runs" / "age" / "model")}}, settings, verbose)

    _, subjects = read_cgni_inputs(inputs)
    features = pq.read_table(stage / "runs" / "cnn" / "features.parquet")
    rows = _rows(subjects, features, settings.folds)
    bank = {"folds": settings.folds, "eid": rows["eid"], "label": rows["label"], "fold": rows["fold"]}
    models = combos(settings)
    z = {}
    for model, weights in models.items():
        name = "contrastive" if model == "cgni" else f"contrastive_{model[len('cgni_'):]}"
        members = [{"name": f"{model}_f{k}", "model": model, "fold": k, "image": f"hv_{k}", "genetic": "g",
                    "weights": list(weights)} for k in range(settings.folds)]
        write_bank_inputs(stage / "inputs" / name, kind="contrastive", members=members,
                          blocks={"g": rows["g"], **rows["hv"]}, **bank)
        _fit(stage, name, {"task": "cgni-bank", "data": str(stage / "inputs" / name),
                           "epochs": settings.contrastive_epochs, "batch_size": settings.bank_batch}, settings, verbose)
        outputs = pq.read_table(stage / "runs" / name / "member_outputs.parquet")
        for m in members:
            z[m["name"]] = (from_fixed_list(outputs.column(f"zv:{m['name']}"), np.float32),
                            from_fixed_list(outputs.column(f"zg:{m['name']}"), np.float32))
    say(f"cgni stage 2: {len(models)} contrastive model(s) x {settings.folds} folds "
        f"({', '.join(terms_label(w) for w in models.values())})")

    members, blocks = [], {"g": rows["g"], **rows["hv"]}
    for k in range(settings.folds):
        for model in models:
            blocks[f"zg_{model}_f{k}"] = z[f"{model}_f{k}"][1]
            members.append({"name": f"{model}_f{k}", "model": model, "fold": k,
                            "inputs": [f"zg_{model}_f{k}", f"hv_{k}"], "hidden": CLASSIFIER_HIDDEN["cgni"], "l1": 0})
        members.append({"name": f"genetic_f{k}", "model": "genetic", "fold": k, "inputs": ["g"],
                        "hidden": CLASSIFIER_HIDDEN["genetic"], "l1": L1})
        members.append({"name": f"concat_f{k}", "model": "concat", "fold": k, "inputs": [f"hv_{k}", "g"],
                        "hidden": CLASSIFIER_HIDDEN["concat"], "l1": L1})
    write_bank_inputs(stage / "inputs" / "classify", kind="classify", members=members, blocks=blocks, **bank)
    _fit(stage, "classify", {"task": "cgni-bank", "data": str(stage / "inputs" / "classify"),
                             "epochs": settings.classify_epochs, "batch_size": settings.bank_batch}, settings, verbose)
    outputs = pq.read_table(stage / "runs" / "classify" / "member_outputs.parquet")

    logits = {"Imaging CNN": rows["cnn_logit"]}
    logits["Sparse genetic NN"] = _by_fold(outputs, "genetic", settings.folds)
    logits["Imaging-genetic SVM (linear)"] = _svm(rows, settings)
    logits["Imaging-genetic NN"] = _by_fold(outputs, "concat", settings.folds)
    for model in models:
        logits[model] = _by_fold(outputs, model, settings.folds)
    logits[COVARIATES] = _logistic(np.column_stack([rows["age"], rows["sex"]]), rows, settings)
    planted = _planted_regions(cohort_dir, rows["eid"])
    if planted is not None:
        logits[TRUE_FEATURES] = _logistic(np.column_stack([rows["age"], rows["sex"], planted]), rows, settings)
        score = _planted_score(cohort_dir, inputs / "panel.tsv", rows["g"])
        logits[TRUE_ALL] = _logistic(np.column_stack([rows["age"], rows["sex"], planted, score]), rows, settings)
    table1 = accuracy_table(logits, rows["label"], rows["fold"], [m for m in logits if not m.startswith("cgni_")],
                            seed=settings.seed)
    table1 = table1.with_columns(pl.col("model").replace({"cgni": "CGNI"}))
    table1.write_csv(stage / "table1.csv")
    text = ["# CGNI on a simulated cohort (paper 002)", "", _table1_markdown(table1, settings), ""]
    summary = {"subjects": n, "panel": manifest["panel"], "brain_age": age,
               "table1": table1.to_dicts()}
    if planted is not None:  # issue 32's bar is CGNI within 5 points of this model: the paired difference
        versus = accuracy_table(logits, rows["label"], rows["fold"], ["cgni"], reference=TRUE_FEATURES,
                                seed=settings.seed).row(0, named=True)
        summary["cgni_minus_true_features"] = {k: versus[f"cv_minus_reference{s}"]
                                               for k, s in (("cv", ""), ("low", "_low"), ("high", "_high"))}
    if settings.grid:
        table2 = accuracy_table(logits, rows["label"], rows["fold"], list(models), seed=settings.seed)
        table2 = table2.with_columns(pl.Series("terms", [terms_label(models[m]) for m in table2["model"]]),
                                     pl.Series("weights", [",".join(f"{w:g}" for w in models[m])
                                                           for m in table2["model"]]))
        table2.write_csv(stage / "table2.csv")
        text += [_table2_markdown(table2), ""]
        summary["table2"] = table2.to_dicts()
    say(f"cgni stage 3: {table1_line(summary)}")

    post = post_analysis(stage, cohort_dir, rows, z, settings)
    text += [post["markdown"]]
    summary["post"] = {k: v for k, v in post.items() if k != "markdown"}
    (stage / "cgni.md").write_text("\n".join(text) + "\n")
    (stage / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _rows(subjects, features, folds: int) -> dict:
    """The two groups' rows in the CNN features' order: eid, label, fold, age, sex, g, cnn_logit (rows x folds),
    hv (fold k -> h_v standardised on fold k's training rows), hv_scale (fold k -> that mean and SD)."""
    eid = features.column("eid").to_numpy()
    all_eids = subjects.column("eid").to_numpy()
    order = np.argsort(all_eids)
    at = order[np.searchsorted(all_eids[order], eid)]
    pick = lambda c: subjects.column(c).to_numpy(zero_copy_only=False)[at]  # noqa: E731
    fold = pick("fold").astype(np.int64)
    hv, scale = {}, {}
    for k in range(folds):
        h = from_fixed_list(features.column(f"hv_{k}"), np.float32)
        fit = (fold >= 0) & (fold != k)
        scale[k] = h[fit].mean(0), np.where(h[fit].std(0) > 0, h[fit].std(0), 1)
        hv[f"hv_{k}"] = ((h - scale[k][0]) / scale[k][1]).astype(np.float32)
    return {"eid": eid, "label": pick("label").astype(np.int64), "fold": fold, "age": pick("age"),
            "sex": pick("sex"), "g": from_fixed_list(subjects.column("g"), np.float32)[at],
            "cnn_logit": from_fixed_list(features.column("logit"), np.float32), "hv": hv, "hv_scale": scale}


def _by_fold(outputs, model: str, folds: int) -> np.ndarray:
    return np.column_stack([outputs.column(f"logit:{model}_f{k}").to_numpy() for k in range(folds)])


def _svm(rows: dict, settings: CgniSettings) -> np.ndarray:
    """Paper 002's linear SVM on h_v + the panel (scikit-learn SVC, C = 1, standardised on each fold's training
    rows: the panel already is, h_v per fold)."""
    from sklearn.svm import SVC

    out = np.zeros((len(rows["eid"]), settings.folds))
    for k in range(settings.folds):
        x = np.hstack([rows["hv"][f"hv_{k}"], rows["g"]])
        fit = (rows["fold"] >= 0) & (rows["fold"] != k)
        out[:, k] = SVC(kernel="linear", C=1.0).fit(x[fit], rows["label"][fit]).decision_function(x)
    return out


def _logistic(x: np.ndarray, rows: dict, settings: CgniSettings) -> np.ndarray:
    """Per fold, a logistic regression on the columns `x` fitted on the fold's training rows: the covariates-only
    reference (age, sex), and on a simulated cohort the true-feature ceiling (age, sex and the planted regions)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=float)
    out = np.zeros((len(x), settings.folds))
    for k in range(settings.folds):
        fit = (rows["fold"] >= 0) & (rows["fold"] != k)
        model = make_pipeline(StandardScaler(), LogisticRegression()).fit(x[fit], rows["label"][fit])
        out[:, k] = model.decision_function(x)
    return out


def _planted_regions(cohort_dir: Path, eids: np.ndarray) -> np.ndarray | None:
    """The planted working-memory regions as the simulator scores them (truth/wm_regions.parquet; data_io/
    simulate_wm.py): each region's standardised log volume minus the subject's mean over all IDPs, for `eids`.
    None without that truth file (a real cohort has no ceiling)."""
    from comical.data_io.simulate_wm import relative_volumes
    from comical.data_io.tables import read_table
    from comical.data_io.ukb_fields import IDPS

    truth = Path(cohort_dir) / "truth" / "wm_regions.parquet"
    if not truth.is_file():
        return None
    regions = pl.read_parquet(truth)["idp"].to_list()
    table = read_table(Path(cohort_dir) / "idps.csv", columns=IDPS)
    relative = relative_volumes(table.select(IDPS).to_numpy())
    at = {str(e): i for i, e in enumerate(table["eid"])}
    return relative[[at[str(e)] for e in eids]][:, [IDPS.index(r) for r in regions]]


def _planted_score(cohort_dir: Path, panel: Path, g: np.ndarray) -> np.ndarray:
    """The planted genetic part of the trait from the panel's standardised dosages `g` (columns in panel.tsv's
    order) and truth/wm_snp_effects.parquet's betas (a causal variant the panel QC dropped counts 0)."""
    effects = pl.read_parquet(Path(cohort_dir) / "truth" / "wm_snp_effects.parquet").filter(pl.col("causal"))
    beta = dict(zip(effects["variant_id"].to_list(), effects["beta"].to_list()))
    ids = pl.read_csv(panel, separator="\t", columns=["variant_id"])["variant_id"].to_list()
    return g @ np.array([beta.get(v, 0.0) for v in ids])


def accuracy_table(logits: dict[str, np.ndarray], label: np.ndarray, fold: np.ndarray, models: list[str], *,
                   reference: str = COVARIATES, seed: int = 0, resamples: int = 1000):
    """Balanced accuracy (scikit-learn) of each model; chance is 0.5.

    Paper-style columns (mean over folds, *_sd its SD over folds): train (fold k's model on its training rows),
    validation (on its held-out fold: the rows its epoch was selected on, so optimistic), holdout (on the 10%
    hold-out; the SD is the spread of 5 models on the same subjects, not sampling error).
    Pooled columns, with 95% stratified bootstrap intervals (`resamples`, seeded): cv (every cross-validation
    subject scored by the fold model that held it out), cv_minus_reference (paired difference from `reference`,
    the covariates-only model), holdout_mean (the hold-out scored by the mean of the fold models' logits)."""
    from sklearn.metrics import balanced_accuracy_score as bacc

    rng = np.random.default_rng(seed)
    cv_rows, held = np.flatnonzero(fold >= 0), np.flatnonzero(fold == -1)
    # stratified resamples as (resamples, n) row matrices: each class drawn with replacement within itself
    draws = {name: np.hstack([rng.choice(r[label[r] == c], (resamples, int((label[r] == c).sum()))) for c in (0, 1)])
             for name, r in (("cv", cv_rows), ("holdout", held))}

    def out_of_fold(model: str) -> np.ndarray:
        hit = np.zeros(len(label), bool)  # indexed by row, like the draws
        hit[cv_rows] = logits[model][cv_rows, fold[cv_rows]] > 0
        return hit

    def resampled(hit: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Balanced accuracy of each resample (rows: resamples x n), vectorised (equal to scikit-learn's)."""
        y, h = label[rows] == 1, hit[rows]
        return ((h & y).sum(1) / y.sum(1) + (~h & ~y).sum(1) / (~y).sum(1)) / 2

    def interval(values) -> tuple[float, float]:
        return tuple(float(v) for v in np.percentile(values, [2.5, 97.5]))

    base = out_of_fold(reference) if reference in logits else None
    out = []
    for model in models:
        scores = {"train": [], "validation": [], "holdout": []}
        for k in range(logits[model].shape[1]):
            hit = logits[model][:, k] > 0
            for split, rows in (("train", (fold >= 0) & (fold != k)), ("validation", fold == k),
                                ("holdout", fold == -1)):
                scores[split].append(bacc(label[rows], hit[rows]))
        row = {"model": model, **{s: float(np.mean(v)) for s, v in scores.items()},
               **{f"{s}_sd": float(np.std(v)) for s, v in scores.items()}}
        hit = out_of_fold(model)
        row["cv"] = float(bacc(label[cv_rows], hit[cv_rows]))
        row["cv_low"], row["cv_high"] = interval(resampled(hit, draws["cv"]))
        if base is not None:
            row["cv_minus_reference"] = row["cv"] - float(bacc(label[cv_rows], base[cv_rows]))
            row["cv_minus_reference_low"], row["cv_minus_reference_high"] = interval(
                resampled(hit, draws["cv"]) - resampled(base, draws["cv"]))
        mean_hit = logits[model].mean(1) > 0
        row["holdout_mean"] = float(bacc(label[held], mean_hit[held]))
        row["holdout_mean_low"], row["holdout_mean_high"] = interval(resampled(mean_hit, draws["holdout"]))
        out.append(row)
    return pl.DataFrame(out)


def _cell(row: dict, split: str) -> str:
    return f"{100 * row[split]:.1f} ± {100 * row[f'{split}_sd']:.1f}"


def _paper(values) -> str:
    return " / ".join("–" if v is None else f"{v:.1f}" for v in values) if values else "–"


def _interval(row: dict, name: str) -> str:
    return f"{100 * row[name]:.1f} ({100 * row[name + '_low']:.1f} to {100 * row[name + '_high']:.1f})"


def _table1_markdown(table: pl.DataFrame, settings: CgniSettings) -> str:
    lines = ["## Table 1: balanced accuracy (%) on the simulated cohort (chance 50)", "",
             f"CGNI: loss {terms_label(settings.weights)}, weights {','.join(f'{w:g}' for w in settings.weights)}. "
             "Paper-style columns: mean ± SD over the folds' models; validation is the fold each model's epoch was "
             "selected on (optimistic); the hold-out SD is the 5 models' spread on the same subjects.", "",
             "| model | training | validation | hold-out | paper 002 (train / val / hold-out) |",
             "|---|---|---|---|---|"]
    for row in table.iter_rows(named=True):
        lines.append(f"| {row['model']} | {_cell(row, 'train')} | {_cell(row, 'validation')} | "
                     f"{_cell(row, 'holdout')} | {_paper(PAPER_TABLE1.get(row['model']))} |")
    lines += ["", "Pooled, with 95% stratified bootstrap intervals: every cross-validation subject scored by the "
              "model that held it out, its paired difference from the covariates-only model, and the hold-out "
              "scored by the mean of the fold models' logits.", "",
              "| model | cross-validated | minus covariates only | hold-out |", "|---|---|---|---|"]
    for row in table.iter_rows(named=True):
        lines.append(f"| {row['model']} | {_interval(row, 'cv')} | {_interval(row, 'cv_minus_reference')} | "
                     f"{_interval(row, 'holdout_mean')} |")
    return "\n".join(lines)


def _table2_markdown(table: pl.DataFrame) -> str:
    lines = ["## Table 2: loss-term combinations (weight 1 each), balanced accuracy (%)", "",
             "| terms | training | validation | hold-out | paper 002 | cross-validated (95% CI) | "
             "minus covariates only |",
             "|---|---|---|---|---|---|---|"]
    for row in table.iter_rows(named=True):
        lines.append(f"| {row['terms']} | {_cell(row, 'train')} | {_cell(row, 'validation')} | "
                     f"{_cell(row, 'holdout')} | {_paper(PAPER_TABLE2.get(row['terms']))} | {_interval(row, 'cv')} | "
                     f"{_interval(row, 'cv_minus_reference')} |")
    return "\n".join(lines)


def table1_line(summary: dict) -> str:
    """One line: each Table 1 model's cross-validated balanced accuracy (pooled out-of-fold), chance 0.5."""
    return "cross-validated balanced accuracy " + ", ".join(f"{r['model']} {r['cv']:.3f}" for r in summary["table1"]) \
        + " (chance 0.5)"
