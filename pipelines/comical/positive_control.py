"""`comical bench positive-control --method comical`: does COMICAL find SNP-IDP associations that are planted, as
the planted signal grows?

    comical bench positive-control --method comical --signal 1,3,10,30 --seeds 3 --out DIR

Per signal K (`comical simulate --signal K`) and seed, one cell: the mini cohort, its pair store (`--top-n-perc`)
and a null store of the same cohort (`--permute-idps`: IDP values permuted across subjects), COMICAL trained on
each with the same settings, then `comical associate` on each. A cell's row (results.csv):
- within-bucket accuracy above its null, for the run and for the ceiling (the planted-truth model of
  pipelines/comical/ceiling.py on the same test batches), and the share of the ceiling's lift the run reaches;
- the test loss's share of the gap from the identity-only floor to the ceiling;
- AUPRC of the calibrated association test against the planted pairs, beside chance and a GWAS of the same
  candidate pairs on the same test subjects, and the share of the GWAS's lift over chance that COMICAL reaches (the
  planted-truth model has no AUPRC: ceiling.py says why);
- recall at FDR 5% of the run, of the planted effects themselves and of that GWAS; the run's discoveries at FDR 5%
  on the null store.
results.md has the mean over seeds with a 95% t interval over seeds (with at least 2 seeds, and the number of
seeds whose share is defined); results.png the shares against K. A cell is written when it is done (cells/<K>_<seed>.json), so a
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
SHARES = {"within_bucket_share": "within-bucket accuracy (of the ceiling's lift)",
          "loss_share": "test loss (of the floor-to-ceiling gap)",
          "auprc_share": "AUPRC (of a GWAS's lift over chance, same test subjects)"}


@dataclasses.dataclass(frozen=True)
class ControlSettings:
    signals: tuple[float, ...] = (1, 3, 10, 30)
    seeds: int = 3
    epochs: int = 10  # 3 epochs left COMICAL above its identity-only loss floor at K = 30, 10 did not (SCIENCE.md)
    top_n_perc: float = 5.0
    workers: int = 1
    max_subjects: int | None = None  # `comical pairs --max-subjects`: a quicker, weaker control
    layout: str = "paper"  # COMICAL's token layout (`comical train --layout`)


def run_positive_control(out: Path, settings: ControlSettings = ControlSettings(), *, say=print) -> pl.DataFrame:
    """Every (signal, seed) cell not yet in `out/cells`, then results.csv, results.md and results.png."""
    from comical.distributed.ray_session import init_ray, shutdown_ray

    from comical.data_io.errors import InputError

    out = Path(out).resolve()  # Ray Train workers read the stores from their own working directory
    cells = out / "cells"
    # cells made with other training settings must not mix in; more signals or seeds only add cells
    kept = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("signals", "seeds")}
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
    summary = _summary(table)
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
                                        "model": {"layout": settings.layout},
                                        "engine": {"workers": settings.workers, "engine": "ddp"}})
        train_and_evaluate(config, work / f"run_{name}", epoch_lines=False)
        results[name] = associate_run(work / f"run_{name}", cohort=work / "cohort")
    truth, null = results["real"]["truth"], results["null"]
    m, ceiling = truth["methods"], truth["ceiling"]
    a, loss, power = ceiling["within_bucket_accuracy"], ceiling["loss"], ceiling["association"]
    chance, gwas = m["comical"]["auprc_chance"], m["gwas_test_subjects"]["auprc"]
    row = {"signal": signal, "seed": seed, "n_candidates": truth["n_candidates"],
           "n_planted": m["comical"]["n_planted"], "n_test_pairs": ceiling["n_test_pairs"],
           "within_bucket_lift": a["model_lift"], "within_bucket_lift_se": a["model_lift_se"],
           "within_bucket_lift_ceiling": a["ceiling_lift"], "within_bucket_lift_ceiling_se": a["ceiling_lift_se"],
           "within_bucket_share": a["share_of_lift"], "loss": loss["model"], "loss_floor": loss["floor"],
           "loss_ceiling": loss["ceiling"], "loss_share": loss["share_of_lift"],
           "auprc": m["comical"]["auprc"], "auprc_chance": chance, "auprc_gwas_test_subjects": gwas,
           "auprc_share": ((m["comical"]["auprc"] - chance) / (gwas - chance)
                           if None not in (m["comical"]["auprc"], gwas, chance) and gwas - chance > 1e-9 else None),
           "recall_fdr05": m["comical"]["recall_at_fdr05"], "recall_fdr05_ceiling": power["recall_at_fdr05"],
           "recall_fdr05_gwas_test_subjects": m["gwas_test_subjects"]["recall_at_fdr05"],
           "null_store_calls_fdr05": null["n_fdr05"], "null_store_pairs": null["n_pairs"]}
    shutil.rmtree(work)
    return row


def _cell_line(row: dict) -> str:
    fmt = lambda v: "NA" if v is None else f"{v:.2f}"  # noqa: E731
    return (f"shares: within-bucket accuracy {fmt(row['within_bucket_share'])}, loss {fmt(row['loss_share'])}, "
            f"AUPRC {fmt(row['auprc_share'])} (AUPRC {fmt(row['auprc'])}, GWAS on the test subjects "
            f"{fmt(row['auprc_gwas_test_subjects'])}, chance {fmt(row['auprc_chance'])}); recall at FDR 5% "
            f"{fmt(row['recall_fdr05'])} (planted truth {fmt(row['recall_fdr05_ceiling'])}); "
            f"{row['null_store_calls_fdr05']} calls on the null store")


def _summary(table: pl.DataFrame) -> pl.DataFrame:
    """Per signal: the mean of each column over seeds; for the shares also a 95% t interval over the seeds where
    the share is defined (`<share>_n` of them)."""
    from scipy import stats

    rows = []
    for signal, part in table.group_by("signal", maintain_order=True):
        row = {"signal": signal[0], "seeds": part.height}
        for column in table.columns:
            if column in ("signal", "seed"):
                continue
            values = part[column].cast(pl.Float64).drop_nulls().to_numpy()
            row[column] = float(values.mean()) if values.size else None
            if column in SHARES:
                half = (stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
                        if values.size >= 2 else None)
                row[f"{column}_n"] = int(values.size)
                row[f"{column}_low"] = row[column] - half if half is not None else None
                row[f"{column}_high"] = row[column] + half if half is not None else None
        rows.append(row)
    return pl.DataFrame(rows)


def _markdown(summary: pl.DataFrame, settings: ControlSettings) -> str:
    fmt = lambda v, d=3: "NA" if v is None else f"{v:.{d}f}"  # noqa: E731

    def share(r, c):
        interval = f" ({fmt(r[c + '_low'], 2)} to {fmt(r[c + '_high'], 2)})" if r[f"{c}_low"] is not None else ""
        return f"{fmt(r[c], 2)}{interval} [{r[c + '_n']}/{r['seeds']}]"

    lines = [f"COMICAL positive control: mini cohort, --top-n-perc {settings.top_n_perc:g}"
             + (f", --max-subjects {settings.max_subjects}" if settings.max_subjects else "")
             + f", layout {settings.layout}, {settings.epochs} epochs, {settings.workers} worker(s) (DDP). Mean over seeds, 95% t interval over "
             "seeds, [seeds where the share is defined / seeds]. Within-bucket share: the run's lift above its null "
             "over the planted-truth model's (defined where that is 3 SE above 0); loss share: of the gap from the "
             "identity-only floor to the planted-truth model; AUPRC share: of a GWAS's lift over chance on the same "
             "test subjects.", "",
             "| signal K | planted / candidates | within-bucket lift: run, planted truth | within-bucket share | "
             "loss share (gap, nats) | AUPRC: run, GWAS test subj., chance | AUPRC share | recall FDR 5%: run, "
             "planted truth, GWAS | null-store calls |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary.iter_rows(named=True):
        lines.append(f"| {r['signal']:g} | {fmt(r['n_planted'], 1)} / {fmt(r['n_candidates'], 0)} | "
                     f"{fmt(r['within_bucket_lift'], 4)}, {fmt(r['within_bucket_lift_ceiling'], 4)} | "
                     f"{share(r, 'within_bucket_share')} | {share(r, 'loss_share')} "
                     f"({fmt(r['loss_floor'] - r['loss_ceiling'], 4)}) | {fmt(r['auprc'])}, "
                     f"{fmt(r['auprc_gwas_test_subjects'])}, {fmt(r['auprc_chance'])} | {share(r, 'auprc_share')} | "
                     f"{fmt(r['recall_fdr05'], 2)}, {fmt(r['recall_fdr05_ceiling'], 2)}, "
                     f"{fmt(r['recall_fdr05_gwas_test_subjects'], 2)} | {fmt(r['null_store_calls_fdr05'], 1)} |")
    return "\n".join(lines)


def _plot(summary: pl.DataFrame) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    k = summary["signal"].to_numpy()
    for column, label in SHARES.items():
        ax.plot(k, summary[column].cast(pl.Float64).to_numpy(), marker="o", label=label)
    ax.axhline(1, color="grey", ls="--", lw=1, label="reference (planted truth; GWAS for AUPRC)")
    ax.axhline(0, color="black", lw=0.8, label="floor")
    ax.set(xscale="log", xlabel="signal K (comical simulate --signal)", ylabel="share of the ceiling's lift",
           title="Positive control (mini cohort)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
