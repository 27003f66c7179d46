"""`comical bench positive-control --method comical`: does COMICAL find SNP-IDP associations that are planted, as
the planted signal grows?

    comical bench positive-control --method comical --signal 1,3,10,30 --seeds 3 --out DIR

Per signal K (`comical simulate --signal K`) and seed, one cell: the mini cohort, its pair store (`--top-n-perc`)
and a null store of the same cohort (`--permute-idps`: IDP values permuted across subjects), COMICAL trained on
each with the same settings, then `comical associate` on each. A cell's row (results.csv):
- within-bucket accuracy above its null, for the run and for the ceiling (the planted-truth model of
  pipelines/comical/ceiling.py on the same test batches), and the share of the ceiling's lift the run reaches;
- the test loss's share of the gap from the identity-only floor to the ceiling;
- AUPRC of the calibrated association test against the planted pairs, beside chance, the ceiling's and a GWAS of
  the same candidate pairs on the same test subjects; the share of the ceiling's AUPRC lift over chance;
- recall at FDR 5% of the run, the ceiling and that GWAS; the run's discoveries at FDR 5% on the null store.
results.md has the mean over seeds with a 95% percentile bootstrap interval over seeds (with at least 2 seeds);
results.png the shares of lift against K. A cell is written when it is done (cells/<K>_<seed>.json), so a
stopped run resumes where it was; its cohort and stores are deleted once scored.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

METHODS = ("comical",)  # the other papers' controls are not built yet (issue 32)
SHARES = {"within_bucket_share": "COMICAL: within-bucket accuracy", "loss_share": "COMICAL: test loss",
          "auprc_share": "COMICAL: AUPRC", "auprc_gwas_share": "GWAS on the same test subjects: AUPRC"}


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    signals: tuple[float, ...] = (1, 3, 10, 30)
    seeds: int = 3
    epochs: int = 5  # the demo's
    top_n_perc: float = 5.0
    workers: int = 1
    max_subjects: int | None = None  # `comical pairs --max-subjects`: a quicker, weaker control
    resamples: int = 2000


def run_positive_control(out: Path, settings: ControlSettings = ControlSettings(), *, say=print) -> pl.DataFrame:
    """Every (signal, seed) cell not yet in `out/cells`, then results.csv, results.md and results.png."""
    from comical.distributed.ray_session import init_ray, shutdown_ray

    from comical.data_io.errors import InputError

    cells = out / "cells"
    # cells made with other training settings must not mix in; more signals or seeds only add cells
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("signals", "seeds", "resamples")}
    recorded = out / "settings.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != kept:
        raise InputError(f"--out {out}: its cells were made with {json.loads(recorded.read_text())}, not {kept}; "
                         "choose another --out")
    cells.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(kept) + "\n")
    started = init_ray()
    try:
        for seed in range(settings.seeds):
            for signal in settings.signals:
                done = cells / f"{signal:g}_{seed}.json"
                if done.is_file():
                    continue
                row = _cell(out / "work" / f"{signal:g}_{seed}", signal, seed, settings)
                done.write_text(json.dumps(row, indent=1) + "\n")
                say(f"positive control: signal {signal:g}, seed {seed}: " + _cell_line(row))
    finally:
        if started:
            shutdown_ray()
    rows = [json.loads((cells / f"{k:g}_{s}.json").read_text()) for s in range(settings.seeds)
            for k in settings.signals]
    table = pl.DataFrame(rows).sort("signal", "seed")
    table.write_csv(out / "results.csv")
    summary = _summary(table, settings.resamples)
    (out / "results.md").write_text(_markdown(summary, settings) + "\n")
    (out / "results.png").write_bytes(_plot(summary))
    return table


def _cell(work: Path, signal: float, seed: int, settings: ControlSettings) -> dict:
    from comical.data_io.cohort import load_cohort
    from comical.data_io.simulate import write_cohort
    from comical.data_io.traits import load_trait_map
    from comical.distributed.config import TrainConfig
    from comical.distributed.run import train_and_evaluate
    from comical.pipelines.comical.associations import associate_run
    from comical.pipelines.comical.chain import write_pair_store
    from comical.pipelines.comical.pairs import PairsConfig

    shutil.rmtree(work, ignore_errors=True)  # a cell stopped half-way starts again
    (work / "cohort").mkdir(parents=True)
    write_cohort(work / "cohort", preset="mini", seed=seed, signal=signal)
    cohort = load_cohort(work / "cohort")
    results = {}
    for name, permute in (("real", None), ("null", seed)):
        store = work / f"pairs_{name}"
        store.mkdir()
        write_pair_store(cohort, PairsConfig(top_n_perc=settings.top_n_perc, seed=seed, permute_idps=permute,
                                             max_subjects=settings.max_subjects),
                         load_trait_map(), store, qc_dir=work / "pairs_real" / "qc" if name == "null" else None,
                         phewas_dir=work / "pairs_real" / "phewas" if name == "null" else None, shown_as=store)
        config = TrainConfig.from_dict({"data": str(store), "seed": seed, "epochs": settings.epochs,
                                        "engine": {"workers": settings.workers, "engine": "ddp"}})
        train_and_evaluate(config, work / f"run_{name}", epoch_lines=False)
        results[name] = associate_run(work / f"run_{name}", cohort=work / "cohort")
    truth, null = results["real"]["truth"], results["null"]
    m, a, loss = truth["methods"], truth["ceiling"]["within_bucket_accuracy"], truth["ceiling"]["loss"]
    chance = m["comical"]["auprc_chance"]
    auprc_lift = (m["planted_truth"]["auprc"] or 0) - (chance or 0)
    share = lambda v: (v - chance) / auprc_lift if v is not None and auprc_lift > 1e-9 else None  # noqa: E731
    row = {"signal": signal, "seed": seed, "n_candidates": truth["n_candidates"],
           "n_planted": m["comical"]["n_planted"], "n_test_pairs": truth["ceiling"]["n_test_pairs"],
           "within_bucket_lift": a["model"] - a["model_null"], "within_bucket_lift_ceiling": a["ceiling"] - a["ceiling_null"],
           "within_bucket_share": a["share_of_lift"], "loss": loss["model"], "loss_floor": loss["floor"],
           "loss_ceiling": loss["ceiling"], "loss_share": loss["share_of_lift"],
           "auprc": m["comical"]["auprc"], "auprc_chance": chance, "auprc_ceiling": m["planted_truth"]["auprc"],
           "auprc_gwas_test_subjects": m["gwas_test_subjects"]["auprc"],
           "auprc_share": share(m["comical"]["auprc"]), "auprc_gwas_share": share(m["gwas_test_subjects"]["auprc"]),
           "recall_fdr05": m["comical"]["recall_at_fdr05"], "recall_fdr05_ceiling": m["planted_truth"]["recall_at_fdr05"],
           "recall_fdr05_gwas_test_subjects": m["gwas_test_subjects"]["recall_at_fdr05"],
           "null_store_calls_fdr05": null["n_fdr05"], "null_store_pairs": null["n_pairs"]}
    shutil.rmtree(work)
    return row


def _cell_line(row: dict) -> str:
    fmt = lambda v: "NA" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"share of the ceiling's lift: within-bucket accuracy {fmt(row['within_bucket_share'])}, loss "
            f"{fmt(row['loss_share'])}, AUPRC {fmt(row['auprc_share'])} (AUPRC {fmt(row['auprc'])}, ceiling "
            f"{fmt(row['auprc_ceiling'])}, GWAS on the test subjects {fmt(row['auprc_gwas_test_subjects'])}, chance "
            f"{fmt(row['auprc_chance'])}); recall at FDR 5% {fmt(row['recall_fdr05'])} (ceiling "
            f"{fmt(row['recall_fdr05_ceiling'])}); {row['null_store_calls_fdr05']} calls on the null store")


def _summary(table: pl.DataFrame, resamples: int) -> pl.DataFrame:
    """Per signal: the mean of each column over seeds, and for the shares a 95% bootstrap interval over seeds."""
    rng = np.random.default_rng(0)
    rows = []
    for signal, part in table.group_by("signal", maintain_order=True):
        row = {"signal": signal[0], "seeds": part.height}
        for column in table.columns:
            if column in ("signal", "seed"):
                continue
            values = part[column].cast(pl.Float64).drop_nulls().to_numpy()
            row[column] = float(values.mean()) if values.size else None
            if column in SHARES:
                low = high = None
                if values.size >= 2:
                    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(1)
                    low, high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
                row[f"{column}_low"], row[f"{column}_high"] = low, high
        rows.append(row)
    return pl.DataFrame(rows)


def _markdown(summary: pl.DataFrame, settings: ControlSettings) -> str:
    fmt = lambda v: "NA" if v is None else f"{v:.3f}"  # noqa: E731
    interval = lambda r, c: (f"{fmt(r[c])} ({fmt(r[c + '_low'])} to {fmt(r[c + '_high'])})"  # noqa: E731
                             if r[f"{c}_low"] is not None else fmt(r[c]))
    lines = [f"COMICAL positive control: mini cohort, --top-n-perc {settings.top_n_perc:g}, {settings.epochs} epochs, "
             f"{settings.workers} worker(s) (DDP); mean over seeds (95% bootstrap interval over seeds). Share of lift = "
             "(run - floor) / (ceiling - floor); the ceiling knows the planted effects (pipelines/comical/ceiling.py).",
             "", "| signal K | seeds | planted / candidates | within-bucket share | loss share | AUPRC share (GWAS's) | "
             "AUPRC (chance, ceiling, GWAS test subjects) | recall FDR 5% (ceiling, GWAS) | null-store calls |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        lines.append(f"| {r['signal']:g} | {r['seeds']} | {r['n_planted']:.1f} / {r['n_candidates']:.0f} | "
                     f"{interval(r, 'within_bucket_share')} | {interval(r, 'loss_share')} | "
                     f"{interval(r, 'auprc_share')} ({interval(r, 'auprc_gwas_share')}) | {fmt(r['auprc'])} ({fmt(r['auprc_chance'])}, "
                     f"{fmt(r['auprc_ceiling'])}, {fmt(r['auprc_gwas_test_subjects'])}) | {fmt(r['recall_fdr05'])} "
                     f"({fmt(r['recall_fdr05_ceiling'])}, {fmt(r['recall_fdr05_gwas_test_subjects'])}) | "
                     f"{r['null_store_calls_fdr05']:.1f} |")
    return "\n".join(lines)


def _plot(summary: pl.DataFrame) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    k = summary["signal"].to_numpy()
    for column, label in SHARES.items():
        ax.plot(k, summary[column].cast(pl.Float64).to_numpy(), marker="o", label=label,
                ls=":" if "gwas" in column else "-")
    ax.axhline(1, color="grey", ls="--", lw=1, label="ceiling (planted truth)")
    ax.axhline(0, color="black", lw=0.8, label="floor")
    ax.set(xscale="log", xlabel="signal K (comical simulate --signal)", ylabel="share of the ceiling's lift",
           title="Positive control (mini cohort)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
