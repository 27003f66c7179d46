"""`comical bench positive-control`: does a method find what is planted, as the planted signal grows?

    comical bench positive-control --method comical|gemcont|rotation|cgni|momentum --signal 1,3,10,30 --out DIR

One cell per (signal, seed): a cohort simulated at that signal and seed, the method trained and scored on it, each
metric beside its floor (a model without the signal) and its ceiling (a model that knew the planted truth), and the
share of the ceiling's lift over the floor the method reaches. The cells are the papers' own (`CONTROL` of
pipelines/<paper>/positive_control.py, named in pipelines/registry.py `CONTROLS`); this module runs them, keeps
each finished cell in `cells/<K>_<seed>.json` so a stopped bench resumes, and writes results.csv (a row per cell),
results.md (the mean over seeds with a 95% t interval over seeds) and results.png (the shares against the
signal).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from comical.data_io.errors import InputError



@dataclasses.dataclass(frozen=True)
class ControlSettings:
    """What a bench runs; each method reads the fields its docs name (`Control.reads`)."""

    signals: tuple[float, ...] = (1, 3, 10, 30)
    seeds: int = 3
    epochs: int | None = None  # None: the method's default (`Control.epochs`)
    workers: int = 1
    top_n_perc: float = 5.0  # COMICAL: the pair stores' --top-n-perc
    max_subjects: int | None = None  # COMICAL: the pair stores' --max-subjects (a quicker, weaker control)
    layout: str = "paper"  # COMICAL's token layout (`comical train --layout`)
    voxel_mm: float = 8.0  # the image methods' volumes (12 mm hides CGNI's regions: SCIENCE.md)
    preset: str = "mini"  # CGNI's cohort (`comical simulate --preset`): its CNN needs the paper's thousands
    n_train: int = 5000  # the rotation benchmark's training subjects (its supervised reference grows with them)
    learning_rate: float | None = None  # the rotation benchmark's, for both methods; None: the tasks' (3e-4)


@dataclasses.dataclass(frozen=True)
class Control:
    name: str
    cell: Callable  # (work folder, signal, seed, settings, epochs) -> the cell's row (a dict)
    shares: dict[str, str]  # share column -> its label (summarised with intervals, plotted)
    markdown: Callable  # (summary frame, settings, epochs) -> results.md's text
    epochs: int  # default epochs per training
    reads: tuple[str, ...] = ()  # the settings beyond signals, seeds, epochs and workers that change its cells
    signal_label: str = "signal K (comical simulate --signal)"
    check: Callable | None = None  # (settings) -> None, or raises InputError naming what does not fit


def control(method: str) -> Control:
    """The paper's control that `--method` names (pipelines/registry.py CONTROLS)."""
    from comical.pipelines.registry import CONTROLS, load

    if method not in CONTROLS:
        raise InputError(f"--method {method}: expected one of {', '.join(CONTROLS)}")
    return load(CONTROLS[method])


def run_positive_control(out: Path, method: str = "comical", settings: ControlSettings = ControlSettings(), *,
                         say=print) -> pl.DataFrame:
    """Every (signal, seed) cell not yet in `out/cells`, then results.csv, results.md and results.png."""
    from comical.distributed.ray_session import init_ray, shutdown_ray

    spec = control(method)
    if spec.check is not None:
        spec.check(settings)
    epochs = settings.epochs or spec.epochs
    out = Path(out).resolve()  # Ray Train workers read their inputs from their own working directory
    cells = out / "cells"
    # cells made with other settings must not mix in; more signals or seeds only add cells
    kept = {"method": method, "epochs": epochs, "workers": settings.workers,
            **{k: getattr(settings, k) for k in spec.reads}}
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
                row = spec.cell(out / "work" / f"{signal:g}_{seed}", signal, seed, settings, epochs)
                done.write_text(json.dumps({"signal": signal, "seed": seed, **row}, indent=1) + "\n")
                say(f"positive control ({method}): signal {signal:g}, seed {seed}: " + _shares_line(row, spec))
    finally:
        if started:
            shutdown_ray()
    rows = [json.loads((cells / f"{k:g}_{s}.json").read_text()) for s in range(settings.seeds)
            for k in settings.signals]
    table = pl.DataFrame(rows, infer_schema_length=None).sort("signal", "seed")
    table.write_csv(out / "results.csv")
    summary = summarise(table, spec.shares)
    (out / "results.md").write_text(spec.markdown(summary, settings, epochs) + "\n")
    (out / "results.png").write_bytes(_plot(summary, spec))
    return table


def _shares_line(row: dict, spec: Control) -> str:
    return "shares of the ceiling's lift: " + ", ".join(
        f"{label.split(' (')[0]} {'NA' if row.get(c) is None else format(row[c], '.2f')}"
        for c, label in spec.shares.items())


def summarise(table: pl.DataFrame, shares) -> pl.DataFrame:
    """Per signal: the mean of each column over seeds; for the share columns also a 95% t interval over the seeds
    where the share is defined (`<share>_n` of them)."""
    from scipy import stats

    rows = []
    for signal, part in table.group_by("signal", maintain_order=True):
        row = {"signal": signal[0], "seeds": part.height}
        for column in table.columns:
            if column in ("signal", "seed") or not part[column].dtype.is_numeric() and part[column].dtype != pl.Null:
                continue
            values = part[column].cast(pl.Float64).drop_nulls().to_numpy()
            row[column] = float(values.mean()) if values.size else None
            if column in shares:
                half = (stats.t.ppf(0.975, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size)
                        if values.size >= 2 else None)
                row[f"{column}_n"] = int(values.size)
                row[f"{column}_low"] = row[column] - half if half is not None else None
                row[f"{column}_high"] = row[column] + half if half is not None else None
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def fmt(value, digits: int = 3) -> str:
    return "NA" if value is None else f"{value:.{digits}f}"


def share_cell(row: dict, column: str) -> str:
    """'0.42 (0.30 to 0.55) [3/3]': the mean, its t interval over seeds, and the seeds where it is defined."""
    interval = (f" ({fmt(row[column + '_low'], 2)} to {fmt(row[column + '_high'], 2)})"
                if row.get(f"{column}_low") is not None else "")
    return f"{fmt(row[column], 2)}{interval} [{row[column + '_n']}/{row['seeds']}]"


def _plot(summary: pl.DataFrame, spec: Control) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    k = summary["signal"].to_numpy()
    for column, label in spec.shares.items():
        ax.plot(k, summary[column].cast(pl.Float64).to_numpy(), marker="o", label=label)
    ax.axhline(1, color="grey", ls="--", lw=1, label="ceiling")
    ax.axhline(0, color="black", lw=0.8, label="floor")
    ax.set(xscale="log" if k.min() > 0 else "linear", xlabel=spec.signal_label, ylabel="share of the ceiling's lift",
           title=f"Positive control: {spec.name}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
