"""`comical predict` and `comical riskscore`: outcomes and risk scores from a trained run's frozen encoders
(paper 000 section 2.4, Figs. 4-6, Table 3, Algorithm 2).

    comical predict   --run RUN/ --cohort COHORT/ --out OUT/ [--outcomes all]
    comical riskscore --run RUN/ --cohort COHORT/ --out OUT/

A subject's features (both commands):
- `embedding`: the frozen SNP encoder's output for each of the model's SNPs (at the subject's genotype token) and
  the IDP encoder's for each of its bucket IDPs (at the subject's PLE value), concatenated: Algorithm 2's E_i,
  flattened to (n_snps + n_idps) x embed_dim values, then projected on its principal components (fitted on the
  head-training rows) up to 99% of its variance (EMBEDDING_VARIANCE); plus age, sex and PC1-PC40 (paper: the
  covariates of the heads). Why the projection: with Adam, a first layer's function moves in proportion to its fan-in,
  so a head on ~5,000 concatenated values overfits within its first epoch while the baseline's (~100 values) is still
  learning; on the same number of epochs that compares learning speeds, not features. A linear map of the input
  changes nothing an MLP can represent; the 1% of variance left out is the price, stated with the results;
- `baseline` (Fig. 5's dashed lines): the same SNPs' raw allele counts and the same IDPs' raw values, plus the same
  covariates. Every column is standardised with the head-training rows' mean and sd; a missing call is that mean.
A GEMCONT run (paper 001) works too: its image embedding is the `embedding`, the 154 IDPs (the image's own
summary) the `baseline`, and its subject split (among subjects with images) the split.
The heads (distributed/tasks/heads.py: one hidden layer, as the paper) train through the engine with Ray Train: one
job per command, holding a separate head for every feature set and outcome side by side.

Which subjects each step saw (`subjects.parquet` in --out lists every subject's encoder split and head role): the
heads train on the encoder's training subjects, pick their epoch on its validation subjects and are scored on its
test subjects, which neither the encoder nor the heads saw. Cohort subjects outside the run's pair store (QC-removed,
or not sampled by `pairs --max-subjects`) are not used.

predict: 11 outcomes (the 8 pair-making diseases, Stroke and SZ, unseen in pair-making, and `meta`, the logical AND
of those ten indicators as the paper defines it). An outcome with fewer than MIN_CASES cases among the training
subjects, none among validation subjects or fewer than MIN_TEST_CASES among test subjects, is not fitted: NA and a
note. Rare outcomes are weighted in the loss (positives by controls / cases of the training rows). Outputs: auc.csv
and auc.md (per outcome: AUC with 95% bootstrap interval for both feature sets, the NRI of the paper (AUC
difference, paired interval), a covariates-only reference, and on simulated cohorts the squared correlation of the
test logits with the planted genetic liability), roc.png (Fig. 5), nri.png (Fig. 6), predictions.parquet.

riskscore: the ePRS of AD, BD, MS, PD and SZ, the paper's design: a disease's head trains on its cases among the
encoder's training subjects and as many healthy controls (no diagnosis of any of the 11), at most the paper's 1,280
(640 + 640), validates on the same from the validation subjects (at most 320), and is tested on healthy controls
among the test subjects (at most the paper's 4,992; the same test subjects for every disease, none a case, none seen
in training). Outputs: r2.csv (out-of-sample R^2 of each head on its disease's ePRS, both feature sets; the mean's
R^2 is 0), cross_disorder.csv (Table 3: the squared Pearson correlation of disease D's risk score with disease D''s
ePRS on the test subjects, and its p-value), ols.csv (statsmodels OLS of each risk score on its ePRS with age, sex,
smoking, BMI, height and PC1-PC40: every coefficient with its SE and p, and the R^2 beside the covariates' alone),
riskscore.md, predictions.parquet.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError
from comical.data_io.ukb_fields import DISEASES, EPRS_DISEASES, N_PCS, PAIR_DISEASES
from comical.pipelines.downstream import stats as st

OUTCOMES = [*PAIR_DISEASES, "Stroke", "SZ", "meta"]
META_OF = [*PAIR_DISEASES, "Stroke", "SZ"]  # the meta outcome: all ten at once (paper 000 section 2.4)
MIN_CASES = 10  # training cases an outcome needs to be fitted
MIN_TEST_CASES = 5  # test cases an AUC needs: a bootstrap of 2-3 cases gives intervals that mean nothing
MIN_OLS_DF = 20  # residual degrees of freedom the risk-score OLS needs (it has 48 terms)
EMBEDDING_VARIANCE = 0.99  # of the concatenated embedding's variance kept by its principal components
HEAD_COVARIATES = ["age", "sex", *[f"PC{i + 1}" for i in range(N_PCS)]]
OLS_COVARIATES = ["age", "sex", "smoking", "bmi", "height", *[f"PC{i + 1}" for i in range(N_PCS)]]
PAPER_TRAIN, PAPER_VAL, PAPER_TEST = 1280, 320, 4992  # paper 000's risk-score split sizes
FEATURE_SETS = ("embedding", "baseline")


@dataclasses.dataclass(frozen=True)
class HeadSettings:
    epochs: int = 15
    batch_size: int = 128
    workers: int = 1
    use_gpu: bool = False
    seed: int = 0
    epoch_lines: bool = True  # each head epoch's line on the console (the demo keeps them in the runs' train.log)


@dataclasses.dataclass
class Subjects:
    """The run's subjects (the pair store's, in cohort order) and their two feature sets, unstandardised."""

    rows: np.ndarray  # cohort row of each subject
    eid: np.ndarray
    encoder_split: np.ndarray  # train / val / test, as the encoder's pair store split them
    features: dict[str, np.ndarray]  # embedding and baseline, each with the head covariates appended
    covariates: pl.DataFrame  # the cohort's covariates.csv rows of these subjects
    diagnoses: pl.DataFrame
    eprs: pl.DataFrame | None  # None where the cohort has no eprs.csv
    liability: pl.DataFrame | None  # planted genetic liabilities (simulated cohorts: truth/samples.parquet)
    description: str
    used: dict = dataclasses.field(default_factory=dict)  # the columns each feature set's heads read


def _described(subjects: Subjects) -> str:
    used = subjects.used.get("embedding")
    if not used:
        return subjects.description
    return (subjects.description + f"; the heads read the embedding as {used - len(HEAD_COVARIATES)} principal "
            f"components ({EMBEDDING_VARIANCE:.0%} of its variance) + covariates")


def _covariates_only(subjects: Subjects, y: np.ndarray, train: np.ndarray, kind: str) -> np.ndarray:
    """The trivial reference: age, sex and PC1-PC40 alone, a regularised linear model per target fitted on the
    training rows (scikit-learn: class-balanced L2 logistic regression, or ridge with its penalty by leave-one-out;
    a plain least squares on 42 covariates overfits a few dozen rows); every row's score (rows x targets)."""
    from sklearn.linear_model import LogisticRegression, RidgeCV

    x = standardise(subjects.covariates.select(HEAD_COVARIATES).to_numpy().astype(np.float64), train)
    out = np.zeros((len(x), y.shape[1]))
    for k in range(y.shape[1]):
        rows = train & ~np.isnan(y[:, k])
        if kind == "classify":
            model = LogisticRegression(class_weight="balanced", max_iter=2000).fit(x[rows], y[rows, k])
            out[:, k] = model.decision_function(x)
        else:
            out[:, k] = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x[rows], y[rows, k]).predict(x)
    return out


def load_subjects(run: Path, cohort_dir: Path, pairs: Path | None = None) -> Subjects:
    """The run's model, its subject split, and each subject's features; errors before any compute. COMICAL: the
    pair store's split and the SNP + IDP embeddings (baseline: the same SNPs and IDPs raw); GEMCONT: its inputs'
    split among subjects with images and the image embedding (baseline: the 154 IDPs, the image's own summary)."""
    from comical.distributed.export import load_model

    run = Path(run)
    from comical.pipelines.registry import heads_subjects

    model, spec = load_model(run / "model")
    return heads_subjects(spec["task"])(run, Path(cohort_dir), model, spec, pairs)


def comical_subjects(run: Path, cohort_dir: Path, model, spec: dict, pairs: Path | None) -> Subjects:
    from comical.data_io.cohort import load_cohort
    from comical.pipelines.comical.embed import model_idps, model_snp_columns, subject_embeddings

    if pairs is None:
        pairs = Path(json.loads((run / "run.json").read_text())["config"]["data"])
    split_file = Path(pairs) / "subjects.parquet"
    if not split_file.is_file():
        raise InputError(f"--run {run}: its pair store {pairs} has no subjects.parquet (moved or deleted?); pass "
                         "--pairs with the store the run trained on")
    manifest = json.loads((Path(pairs) / "manifest.json").read_text())
    info = spec["input"]
    if manifest.get("snps") != info["snps"] or manifest.get("ple_bin_edges") != info["ple_bin_edges"]:
        raise InputError(f"--pairs {pairs}: not the store run {run} trained on (its SNPs or PLE bin edges differ), so "
                         "its subject split is not the encoder's; pass the store the run trained on")
    cohort = load_cohort(cohort_dir)
    order = _cohort_order(cohort, pl.read_parquet(split_file), f"the pair store {pairs}", cohort_dir)
    rows = order["row"].to_numpy()
    table = subject_embeddings(model, info, cohort, rows=rows)
    embedding = np.hstack([np.stack(table["snp_embedding"].to_numpy()), np.stack(table["idp_embedding"].to_numpy())])
    raw = np.hstack([cohort.genotypes.read(cohort.sample_index[rows], model_snp_columns(info, cohort),
                                           dtype=np.float32),
                     cohort.idps[rows].select(model_idps(info)).to_numpy().astype(np.float32)])
    dim = spec["model"]["embed_dim"]
    description = (f"{len(rows)} subjects; embedding {len(info['snps'])} SNPs + {len(model_idps(info))} IDPs x {dim} "
                   f"= {embedding.shape[1]} values, baseline {raw.shape[1]} raw values, each + {len(HEAD_COVARIATES)} "
                   "covariates (age, sex, PC1-PC40)")
    if manifest.get("config", {}).get("buckets_from") == "all":
        description += ("; NOTE: the store's buckets came from a PheWAS of all subjects, so the test subjects' "
                        "diagnoses chose which IDPs the features hold")
    return _subjects(cohort, cohort_dir, order, embedding, raw, description)


def gemcont_subjects(run: Path, cohort_dir: Path, model, spec: dict, pairs: Path | None = None) -> Subjects:
    from comical.data_io.cohort import load_cohort
    from comical.distributed.tasks.gemcont import embed_cohort

    table = pl.from_arrow(embed_cohort(model, spec["input"], run, cohort_dir))
    cohort = load_cohort(cohort_dir)
    order = _cohort_order(cohort, table.select("eid", "split"), f"run {run}'s inputs", cohort_dir)
    image = table.with_columns(pl.col("eid").cast(pl.String)).select("eid", pl.col("^image_.*$"))
    embedding = order.select("eid").join(image, on="eid", how="left", maintain_order="left").drop("eid").to_numpy()
    raw = cohort.idps[order["row"].to_numpy()].drop("eid").to_numpy()
    description = (f"{order.height} subjects with images; embedding: the GEMCONT image embedding ({embedding.shape[1]} "
                   f"values), baseline: the {raw.shape[1]} IDPs, each + {len(HEAD_COVARIATES)} covariates (age, sex, "
                   "PC1-PC40)")
    return _subjects(cohort, cohort_dir, order, embedding.astype(np.float32), raw.astype(np.float32), description)


def _cohort_order(cohort, split: pl.DataFrame, source: str, cohort_dir: Path) -> pl.DataFrame:
    """`row` (cohort row), `eid`, `split` of the subjects `split` lists, in cohort order; all must be in the cohort."""
    split = split.select(pl.col("eid").cast(pl.String), "split")
    eids = cohort.eids.cast(pl.String)
    known = split["eid"].is_in(eids.implode())
    if not known.all():
        raise InputError(f"--cohort {cohort_dir}: {int((~known).sum())} subjects of {source} are not in the cohort "
                         f"(e.g. eid {split.filter(~known)['eid'][0]}); is it the cohort the run came from?")
    return pl.DataFrame({"eid": eids}).with_row_index("row").join(split, on="eid", how="inner", maintain_order="left")


def _subjects(cohort, cohort_dir: Path, order: pl.DataFrame, embedding: np.ndarray, raw: np.ndarray,
              description: str) -> Subjects:
    rows = order["row"].to_numpy()
    covariates = cohort.covariates[rows]
    head_cov = covariates.select(HEAD_COVARIATES).to_numpy().astype(np.float32)
    liability = None
    truth = Path(cohort_dir) / "truth" / "samples.parquet"
    if truth.is_file():
        planted = pl.read_parquet(truth).select(pl.col("eid").cast(pl.String), pl.col("^liability_.*$"))
        liability = order.select("eid").join(planted, on="eid", how="left", maintain_order="left")
    return Subjects(rows, order["eid"].to_numpy(), order["split"].to_numpy(),
                    {"embedding": np.hstack([embedding, head_cov]), "baseline": np.hstack([raw, head_cov])},
                    covariates, cohort.diagnoses[rows], None if cohort.eprs is None else cohort.eprs[rows], liability,
                    description)


def head_features(subjects: Subjects, name: str, train: np.ndarray) -> np.ndarray:
    """A feature set as the heads read it: standardised on the `train` rows; the embedding first projected on its
    principal components up to EMBEDDING_VARIANCE of the training rows' variance (module docstring)."""
    x = subjects.features[name]
    if name == "embedding":
        n_cov = len(HEAD_COVARIATES)
        embedding = x[:, :-n_cov].astype(np.float64)
        centre = embedding[train].mean(0)
        _, singular, axes = np.linalg.svd(embedding[train] - centre, full_matrices=False)
        keep = int(np.searchsorted(np.cumsum(singular ** 2) / np.sum(singular ** 2), EMBEDDING_VARIANCE)) + 1
        x = np.hstack([(embedding - centre) @ axes[:keep].T, x[:, -n_cov:]])
    return standardise(x, train)


def standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Columns centred and scaled by the training rows' mean and sd (sd 0: scale 1); missing values become 0 (the
    training mean)."""
    mean = np.nanmean(x[train], axis=0)
    sd = np.nanstd(x[train], axis=0)
    out = (x - mean) / np.where(sd > 0, sd, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def outcome_table(diagnoses: pl.DataFrame) -> pl.DataFrame:
    """The 11 outcomes of paper 000 as 0/1 columns: ten diagnoses and `meta`, their logical AND."""
    return diagnoses.select(*[pl.col(d).cast(pl.Int8) for d in OUTCOMES[:-1]],
                            pl.all_horizontal([pl.col(d) == 1 for d in META_OF]).cast(pl.Int8).alias("meta"))


def _train_heads(stage: Path, kind: str, targets: list[str], features: dict[str, np.ndarray], y: np.ndarray,
                 mask: np.ndarray, head_split: np.ndarray, settings: HeadSettings, verbose: bool) -> dict:
    """One heads job through the engine, a head per feature set and target; returns each feature set's test-row
    outputs (test rows x targets, in row order)."""
    from comical.distributed.config import TrainConfig
    from comical.distributed.run import train_and_evaluate
    from comical.distributed.tasks.heads import write_heads_inputs

    folder = stage / "inputs"
    write_heads_inputs(folder, kind=kind, targets=targets, features=features, y=y, mask=mask, split=head_split)
    train_rows = int((head_split == "train").sum())
    config = TrainConfig.from_dict({
        "task": "heads", "data": str(folder), "epochs": settings.epochs, "seed": settings.seed,
        "batch_size": max(2 * settings.workers, min(settings.batch_size, train_rows // 2)), "eval_batch_size": 4096,
        "engine": {"workers": settings.workers, "use_gpu": settings.use_gpu}})
    train_and_evaluate(config, stage / "run", verbose=verbose, epoch_lines=settings.epoch_lines)
    out = pl.read_parquet(stage / "run" / "test_predictions.parquet").sort("row")
    return {name: out.select([f"{name}:{t}" for t in targets]).to_numpy() for name in features}


# ---------------------------------------------------------------- predict


def predict_outcomes(run: Path, cohort_dir: Path, out: Path, *, outcomes: list[str] | None = None,
                     pairs: Path | None = None, settings: HeadSettings = HeadSettings(), force: bool = False,
                     verbose: bool = False, say=print) -> dict:
    """`comical predict` (module docstring): writes --out, returns the summary (also in summary.json)."""
    from comical.data_io.output_dir import check_output_dir, staged_output_dir, write_atomic

    outcomes = list(outcomes or OUTCOMES)
    unknown = [o for o in outcomes if o not in OUTCOMES]
    if unknown:
        raise InputError(f"--outcomes {','.join(outcomes)}: {unknown} unknown; expected some of {','.join(OUTCOMES)}")
    run_record = {"command": "predict", "run": str(Path(run).resolve()), "cohort": str(Path(cohort_dir).resolve()),
                  "outcomes": outcomes, "settings": dataclasses.asdict(settings)}
    out = check_output_dir(out, run_record, force=force, inputs=(Path(run), Path(cohort_dir)))
    subjects = load_subjects(run, cohort_dir, pairs)
    labels = outcome_table(subjects.diagnoses).select(outcomes)
    split = subjects.encoder_split
    counts = {o: {s: int(labels[o].to_numpy()[split == s].sum()) for s in ("train", "val", "test")} for o in outcomes}
    fitted = [o for o in outcomes if counts[o]["train"] >= MIN_CASES and counts[o]["val"]
              and counts[o]["test"] >= MIN_TEST_CASES]
    notes = {o: (f"too few cases to fit: {counts[o]['train']} training, {counts[o]['val']} validation, "
                 f"{counts[o]['test']} test (needs {MIN_CASES} training, 1 validation, {MIN_TEST_CASES} test)")
             for o in outcomes if o not in fitted}
    say(f"predict: {subjects.description}; {len(fitted)} of {len(outcomes)} outcomes fitted")
    test = split == "test"
    scores = {}
    with staged_output_dir(out, run_record) as stage:
        if fitted:
            y = labels.select(fitted).to_numpy().astype(np.float32)
            features = {name: head_features(subjects, name, split == "train") for name in FEATURE_SETS}
            subjects.used.update({name: x.shape[1] for name, x in features.items()})
            scores = _train_heads(stage, "classify", fitted, features, y, np.ones_like(y, dtype=np.int8), split,
                                  settings, verbose)
            scores["covariates"] = _covariates_only(subjects, y, split == "train", "classify")[test]
        rows = [_outcome_row(o, counts[o], labels[o].to_numpy()[test],
                             {n: s[:, fitted.index(o)] for n, s in scores.items()} if o in fitted else None,
                             _liability(subjects, o, test), notes.get(o), settings.seed) for o in outcomes]
        table = pl.DataFrame(rows)
        table.write_csv(stage / "auc.csv")
        write_atomic(stage / "auc.md", _auc_markdown(table, _described(subjects)))
        _subject_roles(subjects, {"train": "train", "val": "select epoch", "test": "test"}).write_parquet(
            stage / "subjects.parquet")
        if fitted:
            frame = {"eid": subjects.eid[test]}
            for name, s in scores.items():
                frame |= {f"{o}_{name}": s[:, k] for k, o in enumerate(fitted)}
            pl.DataFrame({**frame, **{o: labels[o].to_numpy()[test] for o in fitted}}).write_parquet(
                stage / "predictions.parquet")
            _roc_figure(labels.filter(pl.Series(test)), scores, fitted, stage / "roc.png")
            _nri_figure(table.filter(pl.col("nri").is_not_nan()), stage / "nri.png")
        summary = {"outcomes": rows, "fitted": fitted, "n_test": int(test.sum()), "description": _described(subjects)}
        write_atomic(stage / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _liability(subjects: Subjects, outcome: str, test: np.ndarray) -> np.ndarray | None:
    column = f"liability_{outcome}"
    if subjects.liability is None or column not in subjects.liability.columns:
        return None
    return subjects.liability[column].to_numpy()[test]


def _outcome_row(outcome: str, counts: dict, y: np.ndarray, scores: dict | None, liability, note, seed) -> dict:
    row = {"outcome": outcome, "train_cases": counts["train"], "val_cases": counts["val"], "test_cases": counts["test"],
           "test_controls": int(len(y) - y.sum())}
    values = {f"{k}{s}": np.nan for k in ("auc_embedding", "auc_baseline", "nri") for s in ("", "_lo", "_hi")}
    values["auc_covariates"] = np.nan
    values |= {"liability_r2_embedding": np.nan, "liability_r2_baseline": np.nan}
    if scores is not None:
        result = st.auc_interval(y, {"embedding": scores["embedding"], "baseline": scores["baseline"]}, seed=seed)
        for key, name in (("auc_embedding", "embedding"), ("auc_baseline", "baseline"), ("nri", "difference")):
            values[key], values[f"{key}_lo"], values[f"{key}_hi"] = result[name]
        values["auc_covariates"] = st.auc(y, scores["covariates"])
        if liability is not None:
            for name in FEATURE_SETS:
                values[f"liability_r2_{name}"] = st.pearson(scores[name], liability)[0]
    return {**row, **values, "note": note or ""}


def _auc_markdown(table: pl.DataFrame, description: str) -> str:
    lines = [f"Outcome prediction from frozen encoders ({description}); test subjects: the encoder's test split. "
             "AUC with 95% bootstrap intervals (1,000 stratified resamples); chance 0.5. NRI (paper 000 Fig. 6): "
             "embedding AUC minus baseline AUC, paired interval. Liability r^2: squared correlation of the test "
             "logits with the planted genetic liability (simulated cohorts only). Covariates only: age, sex and "
             "PC1-PC40 in a class-balanced logistic regression (the trivial reference). Outcomes need "
             f"{MIN_CASES} training cases, 1 validation and {MIN_TEST_CASES} test cases to be fitted.", "",
             "| outcome | cases train/val/test | test controls | AUC embedding | AUC baseline | NRI | liability r^2 "
             "embedding / baseline | AUC covariates only | note |", "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, k: "NA" if np.isnan(r[k]) else f"{r[k]:.3f} ({r[k + '_lo']:.3f}-{r[k + '_hi']:.3f})"  # noqa: E731
    num = lambda v: "NA" if np.isnan(v) else f"{v:.3f}"  # noqa: E731
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['outcome']} | {r['train_cases']}/{r['val_cases']}/{r['test_cases']} | {r['test_controls']} "
                     f"| {fmt(r, 'auc_embedding')} | {fmt(r, 'auc_baseline')} | {fmt(r, 'nri')} | "
                     f"{num(r['liability_r2_embedding'])} / {num(r['liability_r2_baseline'])} | "
                     f"{num(r['auc_covariates'])} | {r['note']} |")
    return "\n".join(lines) + "\n"


def _subject_roles(subjects: Subjects, roles: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"eid": subjects.eid, "encoder_split": subjects.encoder_split,
                         "heads": [roles.get(s, "not used") for s in subjects.encoder_split]})


def _roc_figure(labels: pl.DataFrame, scores: dict, fitted: list[str], path: Path) -> None:
    """Fig. 5: per outcome, the ROC of the embedding heads (solid) and the baseline heads (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    cols, rows = 4, (len(fitted) + 3) // 4
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, (k, outcome) in zip(axes.flat, enumerate(fitted)):
        y = labels[outcome].to_numpy()
        for name, style in zip(FEATURE_SETS, ("-", "--")):
            fpr, tpr, _ = roc_curve(y, scores[name][:, k])
            ax.plot(fpr, tpr, style, label=f"{name} {st.auc(y, scores[name][:, k]):.2f}")
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.set_title(f"{outcome} ({int(y.sum())} cases)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(fitted):]:
        ax.axis("off")
    fig.supxlabel("false positive rate")
    fig.supylabel("true positive rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _nri_figure(table: pl.DataFrame, path: Path) -> None:
    """Fig. 6: the NRI (AUC difference) per outcome with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.6 * max(table.height, 1), 3.5))
    nri = table["nri"].to_numpy()
    error = np.vstack([nri - table["nri_lo"].to_numpy(), table["nri_hi"].to_numpy() - nri])
    ax.bar(table["outcome"].to_list(), nri, yerr=error, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("NRI: AUC embedding - baseline")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- riskscore


def riskscore_design(diagnoses: pl.DataFrame, encoder_split: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The paper's risk-score design on the encoder's split (module docstring): each row's head split (train / val /
    test / None) and, per ePRS disease, the 0/1 mask of the rows its head trains and validates on."""
    rng = np.random.default_rng(seed)
    healthy = ~diagnoses.select(pl.any_horizontal([pl.col(d) == 1 for d in DISEASES])).to_series().to_numpy()
    n = len(encoder_split)
    head_split = np.full(n, None, dtype=object)
    test = np.flatnonzero(healthy & (encoder_split == "test"))
    test = np.sort(rng.choice(test, min(test.size, PAPER_TEST), replace=False))
    head_split[test] = "test"
    masks = {d: np.zeros(n, np.int8) for d in EPRS_DISEASES}
    for split, cap in (("train", PAPER_TRAIN // 2), ("val", PAPER_VAL // 2)):
        for d in EPRS_DISEASES:
            cases = np.flatnonzero((diagnoses[d].to_numpy() == 1) & (encoder_split == split))
            cases = rng.choice(cases, min(cases.size, cap), replace=False)
            controls = np.flatnonzero(healthy & (encoder_split == split))
            controls = rng.choice(controls, min(cases.size, controls.size), replace=False)
            chosen = np.concatenate([cases, controls])
            masks[d][chosen] = 1
            head_split[chosen] = split
    for d in EPRS_DISEASES:
        masks[d][test] = 1
    return head_split, masks


def risk_scores(run: Path, cohort_dir: Path, out: Path, *, pairs: Path | None = None,
                settings: HeadSettings = HeadSettings(), force: bool = False, verbose: bool = False, say=print) -> dict:
    """`comical riskscore` (module docstring): writes --out, returns the summary (also in summary.json)."""
    from comical.data_io.output_dir import check_output_dir, staged_output_dir, write_atomic

    run_record = {"command": "riskscore", "run": str(Path(run).resolve()), "cohort": str(Path(cohort_dir).resolve()),
                  "settings": dataclasses.asdict(settings)}
    out = check_output_dir(out, run_record, force=force, inputs=(Path(run), Path(cohort_dir)))
    subjects = load_subjects(run, cohort_dir, pairs)
    if subjects.eprs is None:
        raise InputError(f"--cohort {cohort_dir}: no eprs.csv; riskscore regresses each disease's ePRS "
                         f"({', '.join(EPRS_DISEASES)}) from the encoders (docs/cohort.md)")
    lacking = subjects.eprs.filter(pl.any_horizontal(pl.col(EPRS_DISEASES).is_null()))
    if lacking.height:
        raise InputError(f"{Path(cohort_dir) / 'eprs.csv'}: no ePRS for {lacking.height} of the run's subjects "
                         f"(first: eid {lacking['eid'][0]}); expected a row for every subject")
    head_split, masks = riskscore_design(subjects.diagnoses, subjects.encoder_split, seed=settings.seed)
    train_cases = {d: int(((subjects.diagnoses[d].to_numpy() == 1) & (masks[d] == 1) & (head_split == "train")).sum())
                   for d in EPRS_DISEASES}
    test = head_split == "test"
    val_rows = {d: int(((masks[d] == 1) & (head_split == "val")).sum()) for d in EPRS_DISEASES}
    fitted = [d for d in EPRS_DISEASES if train_cases[d] >= MIN_CASES and val_rows[d] and test.any()]
    say(f"riskscore: {subjects.description}; {len(fitted)} of {len(EPRS_DISEASES)} ePRS heads fitted, "
        f"{int(test.sum())} healthy test subjects")
    eprs = subjects.eprs.select(EPRS_DISEASES).to_numpy().astype(np.float32)
    scores = {}
    with staged_output_dir(out, run_record) as stage:
        if fitted:
            y = eprs[:, [EPRS_DISEASES.index(d) for d in fitted]]
            mask = np.column_stack([masks[d] for d in fitted])
            features = {name: head_features(subjects, name, head_split == "train") for name in FEATURE_SETS}
            subjects.used.update({name: x.shape[1] for name, x in features.items()})
            scores = _train_heads(stage, "regress", fitted, features, y, mask, head_split, settings, verbose)
            masked = np.where((mask == 1) & (head_split == "train")[:, None], y, np.nan)
            scores["covariates"] = _covariates_only(subjects, masked, head_split == "train", "regress")[test]
        tables = _riskscore_tables(subjects, fitted, scores, eprs[test], test, train_cases, masks, head_split)
        for key in ("r2", "cross_disorder", "ols"):
            tables[key].write_csv(stage / f"{key}.csv")
        write_atomic(stage / "riskscore.md", _riskscore_markdown(tables, _described(subjects)))
        _subject_roles(subjects, {}).with_columns(heads=pl.Series(
            [s or "not used" for s in head_split])).write_parquet(stage / "subjects.parquet")
        if scores:
            pl.DataFrame({"eid": subjects.eid[test],
                          **{f"{d}_{name}": s[:, k] for name, s in scores.items() for k, d in enumerate(fitted)},
                          **{f"ePRS_{d}": eprs[test, EPRS_DISEASES.index(d)] for d in fitted}}).write_parquet(
                stage / "predictions.parquet")
        summary = {"r2": tables["r2"].to_dicts(), "fitted": fitted, "n_test": int(test.sum()),
                   "description": _described(subjects)}
        write_atomic(stage / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _riskscore_tables(subjects, fitted, scores, eprs_test, test, train_cases, masks, head_split) -> dict:
    r2_rows, cross, ols = [], [], []
    covariates = {c: subjects.covariates[c].to_numpy().astype(float)[test] for c in OLS_COVARIATES}
    for d in EPRS_DISEASES:
        row = {"disease": d, "train_cases": train_cases[d],
               "train_rows": int(((masks[d] == 1) & (head_split == "train")).sum()),
               "val_rows": int(((masks[d] == 1) & (head_split == "val")).sum()), "test_rows": int(test.sum())}
        target = eprs_test[:, EPRS_DISEASES.index(d)]
        for name in FEATURE_SETS:
            values = {f"r2_{name}": np.nan, f"liability_r2_{name}": np.nan, f"ols_eprs_p_{name}": np.nan,
                      f"ols_r2_adj_{name}": np.nan, f"ols_r2_adj_covariates_{name}": np.nan}
            if d in fitted:
                score = scores[name][:, fitted.index(d)]
                values[f"r2_{name}"] = st.r2(target, score)
                liability = _liability(subjects, d, test)
                if liability is not None:
                    values[f"liability_r2_{name}"] = st.pearson(score, liability)[0]
                if test.sum() - len(OLS_COVARIATES) - 2 >= MIN_OLS_DF:
                    fit = st.ols_on(score, target, covariates, "ePRS")
                    values[f"ols_eprs_p_{name}"] = fit["terms"]["ePRS"][2]
                    values[f"ols_r2_adj_{name}"] = fit["r2_adj"]
                    values[f"ols_r2_adj_covariates_{name}"] = fit["r2_adj_covariates"]
                    row["ols_df_resid"] = fit["df_resid"]
                    ols += [{"features": name, "disease": d, "term": term, "coef": c, "se": se, "p": p, "n": fit["n"]}
                            for term, (c, se, p) in fit["terms"].items()]
                for other in EPRS_DISEASES:
                    r2, p = st.pearson(score, eprs_test[:, EPRS_DISEASES.index(other)])
                    cross.append({"features": name, "trained_on": d, "evaluated_on": other, "r2": r2, "p": p})
            row |= values
        row["r2_covariates"] = st.r2(target, scores["covariates"][:, fitted.index(d)]) if d in fitted else np.nan
        row.setdefault("ols_df_resid", None)
        row["note"] = ("" if d in fitted else "no healthy test subject" if not test.any() else
                       f"too few cases to fit: {train_cases[d]} training cases (needs {MIN_CASES}) and "
                       f"{row['val_rows']} validation rows (needs 1)")
        if d in fitted and row["ols_df_resid"] is None:
            row["note"] = (f"OLS not fitted: {int(test.sum())} test subjects leave under {MIN_OLS_DF} residual degrees "
                           f"of freedom for {len(OLS_COVARIATES) + 2} terms")
        r2_rows.append(row)
    schema = {"features": pl.String, "trained_on": pl.String, "evaluated_on": pl.String, "r2": pl.Float64,
              "p": pl.Float64}
    ols_schema = {"features": pl.String, "disease": pl.String, "term": pl.String, "coef": pl.Float64,
                  "se": pl.Float64, "p": pl.Float64, "n": pl.Int64}
    return {"r2": pl.DataFrame(r2_rows), "cross_disorder": pl.DataFrame(cross, schema=schema),
            "ols": pl.DataFrame(ols, schema=ols_schema)}


def _riskscore_markdown(tables: dict, description: str) -> str:
    num = lambda v: "NA" if v is None or np.isnan(v) else f"{v:.3f}"  # noqa: E731
    lines = [f"Risk scores from frozen encoders ({description}); heads trained on a disease's cases and as many "
             "healthy controls, tested on healthy test subjects. R^2: out-of-sample, of the head's ePRS prediction "
             "(predicting the test mean gives 0; a head trained on case-enriched rows may also be off in its mean on "
             "healthy subjects, which R^2 counts). Covariates only: ridge regression on age, sex and PC1-PC40 (the "
             "trivial reference). OLS: the risk score on its ePRS with age, sex, smoking, BMI, height and PC1-PC40; "
             "adjusted R^2 beside the same model without the ePRS, and the residual degrees of freedom.", "",
             "| disease | train cases / rows | val rows | test rows | R^2 embedding | R^2 baseline | R^2 covariates "
             "only | liability r^2 embedding / baseline | OLS ePRS p embedding / baseline | OLS adj. R^2 embedding "
             "(without ePRS) / baseline (without) | OLS df | note |", "|---" * 12 + "|"]
    for r in tables["r2"].iter_rows(named=True):
        lines.append(f"| {r['disease']} | {r['train_cases']} / {r['train_rows']} | {r['val_rows']} | "
                     f"{r['test_rows']} | {num(r['r2_embedding'])} | {num(r['r2_baseline'])} | "
                     f"{num(r['r2_covariates'])} | {num(r['liability_r2_embedding'])} / "
                     f"{num(r['liability_r2_baseline'])} | {_p(r['ols_eprs_p_embedding'])} / "
                     f"{_p(r['ols_eprs_p_baseline'])} | {num(r['ols_r2_adj_embedding'])} "
                     f"({num(r['ols_r2_adj_covariates_embedding'])}) / {num(r['ols_r2_adj_baseline'])} "
                     f"({num(r['ols_r2_adj_covariates_baseline'])}) | {r['ols_df_resid'] or 'NA'} | {r['note']} |")
    cross = tables["cross_disorder"]
    for name in FEATURE_SETS:
        part = cross.filter(pl.col("features") == name)
        if not part.height:
            continue
        lines += ["", f"Table 3 ({name} features): squared Pearson correlation of the risk score of the row's disease "
                  "with the ePRS of the column's, on the test subjects; * p < 0.05 uncorrected (as the paper), ** p < "
                  f"0.05/{len(EPRS_DISEASES) ** 2} (Bonferroni over the table). The cells share test subjects, and "
                  "ePRS of genetically related diseases correlate, so cells are not independent tests.", "",
                  "| trained on | " + " | ".join(EPRS_DISEASES) + " |", "|---|" + "---|" * len(EPRS_DISEASES)]
        for d in part["trained_on"].unique(maintain_order=True):
            cells = part.filter(pl.col("trained_on") == d)
            lines.append(f"| {d} | " + " | ".join(f"{num(r['r2'])}{_stars(r['p'])}"
                                                   for r in cells.iter_rows(named=True)) + " |")
    return "\n".join(lines) + "\n"


def _stars(p) -> str:
    if p is None or np.isnan(p):
        return ""
    return "**" if p < 0.05 / len(EPRS_DISEASES) ** 2 else "*" if p < 0.05 else ""


def _p(p) -> str:
    return "NA" if p is None or np.isnan(p) else f"{p:.2g}"


def predict_line(summary: dict) -> str:
    """One line: the AUCs of the fitted outcomes (embedding vs baseline, chance 0.5) and the NRI's direction."""
    rows = [r for r in summary["outcomes"] if r["outcome"] in summary["fitted"]]
    skipped = [r["outcome"] for r in summary["outcomes"] if r["outcome"] not in summary["fitted"]]
    if not rows:
        return f"no outcome had enough cases to fit ({', '.join(skipped)})"
    median = lambda k: float(np.median([r[k] for r in rows]))  # noqa: E731
    up = sum(r["nri_lo"] > 0 for r in rows)
    down = sum(r["nri_hi"] < 0 for r in rows)
    return (f"{len(rows)} outcomes on {summary['n_test']} test subjects: median AUC embedding "
            f"{median('auc_embedding'):.3f}, baseline {median('auc_baseline'):.3f} (covariates only "
            f"{median('auc_covariates'):.3f}, chance 0.5); NRI interval above 0 "
            f"in {up}, below 0 in {down}" + (f"; not fitted (too few cases): {', '.join(skipped)}" if skipped else ""))


def riskscore_line(summary: dict) -> str:
    """One line: the heads' out-of-sample R^2 per ePRS disease, embedding vs baseline (the mean's R^2 is 0)."""
    rows = [r for r in summary["r2"] if r["disease"] in summary["fitted"]]
    if not rows:
        return "no ePRS disease had enough training cases to fit"
    cells = ", ".join(f"{r['disease']} {r['r2_embedding']:.2f}/{r['r2_baseline']:.2f}/{r['r2_covariates']:.2f}"
                      for r in rows)
    return (f"R^2 of the ePRS on {summary['n_test']} healthy test subjects, embedding/baseline/covariates only "
            f"(predicting the mean: 0): {cells}")
