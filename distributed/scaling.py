"""`comical bench scaling`: training throughput as the number of Ray Train workers grows.

    comical bench scaling --pairs pairs/ --workers 1,2,4,8 --use-gpu --out scaling/

Each worker count is a real `comical train` fit (`run_training`, the same driver) on the same pair store with
the same global batch. Per epoch the workers report pairs/s over the training part of the epoch; the first epoch
holds warm-up (allocator, DeepSpeed set-up, caches), so a point is the median of the later epochs. Outputs:
`scaling.csv`, `scaling.md` (speed-up and efficiency against the smallest worker count) and `scaling.png`.
"""

from __future__ import annotations

import io
import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from comical.data_io.output_dir import write_atomic
from comical.distributed.config import TrainConfig
from comical.distributed.train import check_cluster_fits, run_training

if TYPE_CHECKING:
    import polars as pl


def measure(base: TrainConfig, info: dict, workers: list[int]) -> pl.DataFrame:
    """One fit per worker count; a row each: samples/s and seconds per epoch (median of the epochs after the first).

    `info`: the task's input spec (`check_train_inputs`)."""
    configs = {n: TrainConfig.from_dict({**base.to_dict(), "engine": {**base.engine.to_dict(), "workers": n}})
               for n in workers}
    for config in configs.values():  # all before the first fit
        check_cluster_fits(config, driver_cpus=0.0)
    rows = []
    for n, config in configs.items():
        with tempfile.TemporaryDirectory(prefix="comical-scaling-") as storage:
            result = run_training(config, Path(storage), info, name=f"workers-{n}")
            if result.error is not None:
                raise result.error
            epochs = sorted((m for _, m in result.best_checkpoints), key=lambda m: m["epoch"])
        steady = epochs[1:] or epochs
        rows.append({"workers": n, "device": "GPU" if config.engine.use_gpu else "CPU",
                     "samples_per_s": statistics.median(m["samples_per_s"] for m in steady),
                     "epoch_seconds": statistics.median(m["epoch_seconds"] for m in steady),
                     "epochs_measured": len(steady)})
    import polars as pl  # driver-side only: the engine's import-time dependencies stay those of a Ray worker

    table = pl.DataFrame(rows)
    first = table.row(0, named=True)
    return table.with_columns(
        speedup=pl.col("samples_per_s") / first["samples_per_s"],
        efficiency=pl.col("samples_per_s") / first["samples_per_s"] / (pl.col("workers") / first["workers"]))


def write_outputs(table: pl.DataFrame, out: Path, title: str) -> None:
    """scaling.csv, scaling.md and scaling.png in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "scaling.csv", table.write_csv())
    lines = [f"{title}\n", "| workers | device | samples/s | s/epoch | speed-up | efficiency |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['device']} | {r['samples_per_s']:,.0f} | {r['epoch_seconds']:.2f} | "
              f"{r['speedup']:.2f}x | {r['efficiency']:.0%} |" for r in table.iter_rows(named=True)]
    write_atomic(out / "scaling.md", "\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    first = table.row(0, named=True)
    ax.plot(table["workers"], table["samples_per_s"], "o-", label="measured")
    ax.plot(table["workers"], first["samples_per_s"] * table["workers"] / first["workers"], "--", color="grey",
            label="linear")
    ax.set(xlabel="Ray Train workers", ylabel="training samples/s", xticks=table["workers"].to_list())
    ax.set_title(title, fontsize=8)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    write_atomic(out / "scaling.png", buffer.getvalue())
