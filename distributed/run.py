"""`comical train`: checks, the Ray Train fit, then the run folder's outputs, for any task.

    run/
      run.json, config.yaml     what ran (the resolved config) and its state: running, failed (with the error)
                                or done; only `done` is a finished run
      train.log                 everything the run printed, Ray's worker logs and library warnings included (the
                                console shows one line per epoch unless --verbose)
      checkpoints/              Ray Train storage (one checkpoint per epoch; or --storage-path on a cluster)
      metrics.jsonl             one line per epoch (losses, the task's validation metrics, samples/s), written as
                                each epoch ends
      tensorboard/              the same as TensorBoard events, as each epoch ends
      model/                    the best epoch's frozen encoders: model.safetensors + model.json (task, config,
                                input spec)
      test_metrics.json         the best model on the test split (the task's metrics beside their chance levels)
    and the task's own test outputs (COMICAL: test_retrievals.parquet, which `comical associate` reads).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import torch

from comical.data_io.console import logged_console
from comical.data_io.errors import InputError
from comical.data_io.output_dir import RUN_FILE, check_output_dir, mark_run, write_atomic
from comical.distributed.config import TrainConfig
from comical.distributed.export import load_model, save_model
from comical.distributed.task import get_task
from comical.distributed.train import (EVENTS, RUN_NAME, WEIGHTS, EpochLog, check_cluster_fits, check_train_inputs,
                                      run_training)


def train_and_evaluate(config: TrainConfig, out: str | Path, *, resume: bool = False, force: bool = False,
                       verbose: bool = False, prepare=None, prepared_from: dict | None = None,
                       epoch_lines: bool = True) -> dict:
    """Train (or resume) into `out`, keep the best epoch, evaluate it on the test split; returns test metrics.
    Each epoch's line goes to the console, or with `epoch_lines=False` only to train.log (a small step of a longer
    command).

    `prepare(folder)` makes the task's inputs first, into `out/inputs` (which `config.data` names), from what
    `prepared_from` describes (GEMCONT: a cohort and a disease); a bad input leaves no run folder behind."""
    out = Path(out).resolve()
    info = check_train_inputs(config) if prepare is None else None
    storage = Path(config.storage_path) if config.storage_path else out / "checkpoints"
    run = {"command": "train", "config": config.to_dict(), **({"inputs_from": prepared_from} if prepare else {})}
    if resume:
        previous = out / RUN_FILE
        if not previous.is_file() or not list((storage / RUN_NAME).glob("checkpoint_*")):
            raise InputError(f"--resume: no checkpoint of a run in {out} ({storage / RUN_NAME}); start without --resume")
        before = json.loads(previous.read_text())
        now = json.loads(json.dumps(run))  # as run.json holds it (tuples as lists)
        if (before.get("config"), before.get("inputs_from")) != (now["config"], now.get("inputs_from")):
            raise InputError(f"--resume: {out} holds a run with another config; resume with the same settings")
    else:
        sources = (Path(prepared_from["cohort"]),) if prepare else (Path(config.data),)  # never inside --out
        check_output_dir(out, run, force=force, inputs=sources)
        if out.exists():  # same run again or --force: start afresh, or Ray would resume the old checkpoints
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if prepare is not None:
        try:
            if not (resume and (out / "inputs" / "manifest.json").is_file()):
                prepare(out / "inputs")
            info = check_train_inputs(config)
        except BaseException:
            if not resume:
                shutil.rmtree(out)
            raise
    mark_run(out, run, "running")
    write_atomic(out / "config.yaml", config.to_yaml())
    try:
        with logged_console(out / "train.log", verbose=verbose) as say:
            metrics = _train_and_evaluate(config, out, storage, info, say if epoch_lines else print)
    except BaseException as err:  # Ctrl-C too: the folder must not look finished
        mark_run(out, run, "failed", err)
        raise
    mark_run(out, run, "done")
    return metrics


def _train_and_evaluate(config: TrainConfig, out: Path, storage: Path, info: dict, say) -> dict:
    from comical.distributed.ray_session import init_ray, shutdown_ray

    started = init_ray()
    try:
        return _fit_and_test(config, out, storage, info, say)
    finally:
        if started:  # a local Ray this call started stops here, so its last log lines land in train.log too
            shutdown_ray()


def _fit_and_test(config: TrainConfig, out: Path, storage: Path, info: dict, say) -> dict:
    from comical.distributed.ray_session import check_nodes_see

    check_cluster_fits(config, driver_cpus=0.0)
    inputs = {"the training data": Path(config.data).resolve(),
              **({"the image store": info["images"]} if "images" in info else {})}
    outputs = {"the run folder": out}
    if config.storage_path and "://" not in config.storage_path:  # a bucket is Ray's to reach
        outputs["the folder above --storage-path"] = Path(config.storage_path).parent
    check_nodes_see(inputs, outputs)
    task = get_task(config.task).bind(info)
    restarts = f"Ray Train restarts from the last checkpoint if --max-failures ({config.engine.max_failures}) allows"
    with _EpochLines(out / "metrics.jsonl", lambda m: say(task.epoch_line(m))), \
            _EpochLines(out / EVENTS, lambda e: say(f"train: worker {e['rank']} failed ({e['error']}); {restarts}")):
        result = run_training(config, storage, info, callbacks=(EpochLog(out),))
    if result.error is not None:
        raise result.error
    epochs = sorted((metrics for _, metrics in result.best_checkpoints), key=lambda m: m["epoch"])
    checkpoints = {m["epoch"]: c for c, m in result.best_checkpoints}
    best = epochs[-1]["best_epoch"]
    with checkpoints[best].as_directory() as folder:
        from safetensors.torch import load_file

        save_model(out / "model", load_file(str(Path(folder) / WEIGHTS)), config, info)
    device = torch.device("cuda" if config.engine.use_gpu and torch.cuda.is_available() else "cpu")
    model, _ = load_model(out / "model", device=device)
    metrics = {"best_epoch": best, **task.test(model, info, config, out)}
    write_atomic(out / "test_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


class _EpochLines:
    """While training runs, a thread turns each new line of metrics.jsonl (written by `EpochLog` in the Train
    controller) into a console line."""

    def __init__(self, path: Path, show):
        self.path, self.show = path, show
        self.done = threading.Event()
        self.seen = path.stat().st_size if path.exists() else 0  # --resume: earlier epochs were shown before

    def _poll(self) -> None:
        if not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.seen)
            text = f.read()
        complete = text[:text.rfind("\n") + 1]
        self.seen += len(complete.encode())
        for line in complete.splitlines():
            self.show(json.loads(line))

    def _run(self) -> None:
        while not self.done.wait(0.5):
            self._poll()
        self._poll()

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
