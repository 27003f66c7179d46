"""`comical train`: checks, the Ray Train fit, then the run folder's outputs.

    run/
      run.json, config.yaml     what ran (the resolved config)
      checkpoints/              Ray Train storage (one checkpoint per epoch; or --storage-path on a cluster)
      metrics.jsonl             one line per epoch: losses, accuracies, pairs/s
      tensorboard/              the same as TensorBoard events
      model/                    the best epoch's weights (safetensors) + model.json
      test_metrics.json         best model on the test split: pair_accuracy, top1_accuracy, chances, loss
      test_pair_counts.parquet  per (snp, idp, disease): test occurrences and strict top-1 correct retrievals
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from comical.data_io.errors import InputError
from comical.data_io.output_dir import RUN_FILE, check_output_dir, write_atomic
from comical.distributed.config import TrainConfig
from comical.distributed.export import load_model, save_model
from comical.distributed.train import RUN_NAME, WEIGHTS, check_cluster_fits, check_train_inputs, evaluate, load_split, run_training


def train_and_evaluate(config: TrainConfig, out: str | Path, *, resume: bool = False, force: bool = False) -> dict:
    """Train (or resume) into `out`, keep the best epoch, evaluate it on the test split; returns test metrics."""
    out = Path(out).resolve()
    manifest = check_train_inputs(config)
    storage = Path(config.storage_path) if config.storage_path else out / "checkpoints"
    run = {"command": "train", "config": config.to_dict()}
    if resume:
        previous = out / RUN_FILE
        if not previous.is_file() or not list((storage / RUN_NAME).glob("checkpoint_*")):
            raise InputError(f"--resume: no checkpoint of a run in {out} ({storage / RUN_NAME}); start without --resume")
        if json.loads(previous.read_text())["config"] != json.loads(json.dumps(run["config"])):
            raise InputError(f"--resume: {out} holds a run with another config; resume with the same settings")
    else:
        check_output_dir(out, run, force=force, inputs=(Path(config.pairs),))
        if out.exists():  # same run again or --force: start afresh, or Ray would resume the old checkpoints
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / RUN_FILE, json.dumps(run, indent=2, sort_keys=True) + "\n")
    write_atomic(out / "config.yaml", config.to_yaml())

    from comical.ray_init import init_ray

    init_ray()
    check_cluster_fits(config, driver_cpus=0.0)
    result = run_training(config, storage)
    if result.error is not None:
        raise result.error
    epochs = sorted((metrics for _, metrics in result.best_checkpoints), key=lambda m: m["epoch"])
    checkpoints = {m["epoch"]: c for c, m in result.best_checkpoints}
    _write_epoch_logs(epochs, out)
    best = epochs[-1]["best_epoch"]
    with checkpoints[best].as_directory() as folder:
        from safetensors.torch import load_file

        save_model(out / "model", load_file(str(Path(folder) / WEIGHTS)), config.model, manifest)
    return evaluate_on_test(config, out, best_epoch=best)


def evaluate_on_test(config: TrainConfig, out: Path, *, best_epoch: int) -> dict:
    """The saved best model on the test split (driver side), plus the per-pair counts for `associate`."""
    device = torch.device("cuda" if config.engine.use_gpu and torch.cuda.is_available() else "cpu")
    model, info = load_model(out / "model", device=device)
    test = load_split(config.pairs, "test", device)
    metrics, correct = evaluate(model, test, config, info["n_bins"], seed=config.seed, pair_counts=True)
    metrics = {"best_epoch": best_epoch, **metrics, "n_test_pairs": int(len(test["snp"]))}
    write_atomic(out / "test_metrics.json", json.dumps(metrics, indent=2) + "\n")
    keys = torch.stack([test["snp"].long(), test["idp"].long(), test["disease"].long()], 1).cpu().numpy()
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    seen = np.bincount(inverse.ravel(), minlength=len(unique))
    hits = np.bincount(inverse.ravel(), weights=correct.cpu().numpy(), minlength=len(unique))
    table = pa.table({"snp": unique[:, 0].astype(np.int16), "idp": unique[:, 1].astype(np.int16),
                      "disease": unique[:, 2].astype(np.int8), "n_test": seen.astype(np.int64),
                      "n_correct": hits.astype(np.int64)})
    tmp = out / ".test_pair_counts.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out / "test_pair_counts.parquet")
    return metrics


def _write_epoch_logs(epochs: list[dict], out: Path) -> None:
    from tensorboardX import SummaryWriter

    lines = "".join(json.dumps({k: v for k, v in m.items() if not k.startswith("_")}) + "\n" for m in epochs)
    write_atomic(out / "metrics.jsonl", lines)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for m in epochs:
            for key, value in m.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "best_epoch"):
                    writer.add_scalar(key, value, m["epoch"])
