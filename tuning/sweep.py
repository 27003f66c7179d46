"""`comical tune`: Ray Tune with ASHA over the training driver, each trial a real Ray Train run.

    comical tune --pairs pairs/ --space table1 --num-samples 20 --out sweep/ --max-epochs 10

A trial is a function that builds and fits the same `TorchTrainer` as `comical train` (`run_training`), with
Tune's report callback (Train V2 inside Tune, as Ray 2.60 documents it): every epoch reports validation loss
(and within-bucket accuracy beside its null), and ASHA stops the trials that trail. ASHA counts `epochs_done` (not Tune's iteration counter, which
restarts at 0 in a resumed trial). Outputs: `results.parquet` (a row per trial: its settings under the config's
own key names, last and best metrics, epochs run, whether ASHA stopped it), `best_config.yaml` (a TrainConfig
for `comical train --config`), `table1.md` (the best settings laid out like the paper's Table 1).
"""

from __future__ import annotations

import copy
import io
import json
from importlib.resources import files
from pathlib import Path

import polars as pl
import ray.tune
import yaml

from comical.data_io.errors import InputError, RunFailed
from comical.data_io.output_dir import write_atomic
from comical.distributed.config import TrainConfig

SWEEP_NAME = "sweep"
# Trials are ranked by validation loss, the training run's own model-selection metric (distributed/train.py: the
# paper's pair accuracy saturates at 1.0 from identities alone, so ranking by it picks an arbitrary trial).
METRIC, MODE = "val_loss", "min"
_REPORTED = ("val_within_bucket_accuracy", "val_within_bucket_accuracy_null", "val_bucket_accuracy")
_TYPES = {"choice": ("values",), "grid": ("values",), "loguniform": ("low", "high"), "uniform": ("low", "high"),
          "randint": ("low", "high")}
_TABLE1_ROWS = [("Batch size", "batch_size"), ("Model dimensions", "width"), ("Number of Transformer layers", "layers"),
                ("Attention heads per layer", "heads"), ("Feed-forward dimensions", "ff_dim"),
                ("Learning rate", "learning_rate"), ("Warmup steps", "warmup_steps"), ("Weight decay", "weight_decay")]


def load_space(name: str) -> dict[str, dict]:
    """A search space by name (`table1`, shipped in tuning/) or YAML path; checked key by key."""
    path = files("comical.tuning") / f"{name}.yaml" if "/" not in name and not name.endswith(".yaml") else Path(name)
    try:
        space = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InputError(f"--space {name}: no such search space (shipped: table1; or a YAML file)") from None
    except yaml.YAMLError as err:
        raise InputError(f"--space {name}: not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(space, dict) or not space:
        raise InputError(f"--space {name}: expected a mapping of config keys to ranges")
    defaults = TrainConfig().to_dict()
    for key, spec in space.items():
        section, _, leaf = key.rpartition(".")
        holder = defaults.get(section) if section else defaults
        if not isinstance(holder, dict) or leaf not in holder:
            raise InputError(f"--space {name}: {key!r} is not a TrainConfig key (e.g. batch_size, optim.learning_rate)")
        if not isinstance(spec, dict) or spec.get("type") not in _TYPES or any(f not in spec for f in _TYPES[spec["type"]]):
            raise InputError(f"--space {name}: {key}: expected {{type: choice|grid|loguniform|uniform|randint, ...}} with "
                             f"{_TYPES.get(spec.get('type') if isinstance(spec, dict) else None, ('values',))}")
    return space


def _tune_space(space: dict[str, dict]) -> dict:
    from ray import tune

    nested: dict = {}
    for key, spec in space.items():
        section, _, leaf = key.rpartition(".")
        target = nested.setdefault(section, {}) if section else nested
        kind = spec["type"]
        target[leaf] = (tune.choice(spec["values"]) if kind == "choice" else
                        tune.grid_search(spec["values"]) if kind == "grid" else  # every value; --num-samples repeats
                        tune.loguniform(spec["low"], spec["high"]) if kind == "loguniform" else
                        tune.uniform(spec["low"], spec["high"]) if kind == "uniform" else
                        tune.randint(spec["low"], spec["high"]))
    return nested


def _merge(base: dict, overrides: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _trial(params: dict) -> None:
    """One Tune trial: the sampled settings over the base config, trained by the `comical train` driver."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from comical.distributed.train import check_train_inputs, run_training

    sampled = {k: v for k, v in params.items() if k not in ("base", "storage")}
    config = TrainConfig.from_dict(_merge(params["base"], sampled), source="tune trial")
    trial_id = ray.tune.get_context().get_trial_id()
    result = run_training(config, Path(params["storage"]), check_train_inputs(config), name=f"trial-{trial_id}",
                          callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


_CONSOLE = [print]  # the running sweep's console; a resumed sweep's callbacks come back from its saved state


class _Progress(ray.tune.Callback):
    """A Tune callback (it runs in this driver) that puts a line per trial event on the console."""

    def __init__(self, space: dict[str, dict], max_epochs: int):
        self.space, self.max_epochs = space, max_epochs
        self.epochs: dict[str, int] = {}  # epochs each trial reported

    @staticmethod
    def say(line: str) -> None:  # Tune saves its callbacks with the sweep's state: the console is looked up, not saved
        _CONSOLE[0](line)

    def _settings(self, trial) -> str:
        config = trial.config or {}
        values = []
        for key in self.space:
            section, _, leaf = key.rpartition(".")
            value = (config.get(section, {}) if section else config).get(leaf)
            values.append(f"{leaf} {value:.3g}" if isinstance(value, float) else f"{leaf} {value}")
        return ", ".join(values)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.say(f"tune: trial {trial.trial_id} started: {self._settings(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epochs[trial.trial_id] = int(result.get("epochs_done", 0) or 0)
        self.say(f"tune: trial {trial.trial_id} epoch {result.get('epoch')}: val loss "
                 f"{result.get(METRIC, float('nan')):.4f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epochs = self.epochs.get(trial.trial_id, 0)
        decision = "stopped early by ASHA" if epochs < self.max_epochs else "ran every epoch"
        self.say(f"tune: trial {trial.trial_id} ended after {epochs} epochs ({decision})")

    def on_trial_error(self, iteration, trials, trial, **info):
        why = _error_line(Path(trial.error_file).read_text()) if trial.error_file else "no error file"
        self.say(f"tune: trial {trial.trial_id} failed: {why}; the sweep goes on")


class Interrupted(Exception):
    """The sweep stopped (Ctrl-C) before every trial ended; Tune saved its state, so `--resume` continues it."""


def expected_trials(space: dict[str, dict], num_samples: int) -> int:
    """Trials a finished sweep has: --num-samples times each combination of the grid values."""
    total = num_samples
    for spec in space.values():
        total *= len(spec["values"]) if spec["type"] == "grid" else 1
    return total


def ended_trials(folder: Path) -> int:
    """Trials of the sweep saved in `folder` that ended (finished, stopped by ASHA or failed).

    Read from the state Tune saved: after a Ctrl-C, Tune's cleanup marks the running trial TERMINATED in the
    ResultGrid it returns, but the saved state still says RUNNING, and that is what a resume continues."""
    from ray.tune import ExperimentAnalysis
    from ray.tune.experiment import Trial

    return sum(trial.status in (Trial.TERMINATED, Trial.ERROR) for trial in ExperimentAnalysis(str(folder)).trials)


def _error_line(text: str) -> str:
    """One line for a failed trial: our own RunFailed/InputError message where the traceback holds one, else
    the traceback's last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    for marker in ("RunFailed: ", "InputError: "):
        for line in reversed(lines):
            if marker in line:
                return line.split(marker, 1)[1]
    return lines[-1] if lines else "unknown error"


def run_sweep(base: TrainConfig, space: dict[str, dict], *, num_samples: int, out: Path, resume: bool = False,
              say=print):
    """Fit (or resume) the sweep in `out`; return Tune's ResultGrid. `say` prints a line per trial event."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    # The trial's own driver needs little; its Train workers ask for their own CPUs/GPUs.
    trainable = tune.with_resources(_trial, {"CPU": 0.5})
    _CONSOLE[0] = say
    if resume:
        tuner = tune.Tuner.restore(str(out / SWEEP_NAME), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        # max_t one past the last epoch: ASHA never stops a trial at its final report, so the trial returns and
        # its Train controller shuts down cleanly. A trial Tune kills leaves its Train resource request with
        # Ray Data's AutoscalingCoordinator for 180 s, and on a 2-CPU machine two such leftovers starve the
        # next trial's Parquet reads.
        scheduler = ASHAScheduler(time_attr="epochs_done", metric=METRIC, mode=MODE, max_t=base.epochs + 1,
                                  grace_period=1, reduction_factor=2)
        param_space = {"base": base.to_dict(), "storage": str(out / "trials"), **_tune_space(space)}
        tuner = tune.Tuner(trainable, param_space=param_space,
                           # the config's seed fixes which settings are sampled, so a sweep can be rerun; one
                           # trial at a time (the generator's limit: with a search_alg, max_concurrent_trials is not
                           # applied to it, and all trials started at once and starved each other)
                           tune_config=tune.TuneConfig(scheduler=scheduler, num_samples=num_samples,
                                                       search_alg=BasicVariantGenerator(random_state=base.seed, max_concurrent=1)),
                           run_config=tune.RunConfig(name=SWEEP_NAME, storage_path=str(out),
                                                     # Ray Train already restarts a trial's failed workers
                                                     # (engine.max_failures); a trial that still fails is
                                                     # recorded and the sweep goes on
                                                     failure_config=tune.FailureConfig(max_failures=0),
                                                     callbacks=[_Progress(space, base.epochs)]))
    return tuner.fit()


def results_table(grid, space: dict[str, dict], max_epochs: int) -> pl.DataFrame:
    """One row per trial: trial_id, its sampled settings (leaf key names), last/best metrics, epochs, stopped."""
    rows = []
    for result in grid:
        config = result.config or {}
        row = {"trial_id": result.path.rsplit("/", 1)[-1] if result.path else None}
        for key in space:
            section, _, leaf = key.rpartition(".")
            row[leaf] = (config.get(section, {}) if section else config).get(leaf)
        history = result.metrics_dataframe
        last = result.metrics or {}
        epochs = int(last.get("epochs_done", 0) or 0)
        row.update({"epochs_run": epochs, "errored": result.error is not None,
                    "error": _error_line(result.error) if result.error is not None else None,
                    "stopped_by_asha": result.error is None and 0 < epochs < max_epochs,
                    f"best_{METRIC}": float(history[METRIC].min()) if history is not None and METRIC in history else None,
                    f"last_{METRIC}": last.get(METRIC), **{f"last_{k}": last.get(k) for k in _REPORTED}})
        rows.append(row)
    # finished trials first: a failed trial's settings are no recommendation, whatever its last metric
    return pl.DataFrame(rows).sort(["errored", f"best_{METRIC}"], descending=[False, MODE == "max"], nulls_last=True)


def write_sweep_outputs(table: pl.DataFrame, base: TrainConfig, space: dict, out: Path, top_n_perc, *,
                        table1: bool = False) -> dict:
    """results.parquet, best_config.yaml (a full TrainConfig), and with `table1` the best settings laid out as the
    paper's Table 1 (COMICAL's hyperparameters); returns the best row."""
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    write_atomic(out / "results.parquet", buffer.getvalue())
    best = table.row(0, named=True)
    if best["errored"] or best[f"best_{METRIC}"] is None:
        raise RunFailed(f"all {table.height} trials failed (results.parquet); the first: {best['error']}")
    overrides: dict = {}
    for key in space:
        section, _, leaf = key.rpartition(".")
        (overrides.setdefault(section, {}) if section else overrides)[leaf] = best[leaf]
    best_config = TrainConfig.from_dict(_merge(base.to_dict(), overrides))
    write_atomic(out / "best_config.yaml", best_config.to_yaml())
    if table1:
        flat = {**best_config.to_dict(), **best_config.model.to_dict(), **best_config.optim.to_dict()}
        lines = [f"| | Top {top_n_perc}% SNPs |", "|---|---|"]
        lines += [f"| **{label}** | {flat[key]:.4g} |" if isinstance(flat[key], float) else
                  f"| **{label}** | {flat[key]} |" for label, key in _TABLE1_ROWS]
        write_atomic(out / "table1.md", "\n".join(lines) + f"\n\nBest of {table.height} trials by validation loss "
                                       f"({best[f'best_{METRIC}']:.4f}).\n")
    write_atomic(out / "best_trial.json", json.dumps(best, indent=2, default=str) + "\n")
    return best


def new_request(pairs: Path | None, out: Path | None, *, space: str, num_samples: int, max_epochs: int,
                workers_per_trial: int, gpus_per_worker: int, config: Path | None) -> tuple[dict, Path]:
    """A new sweep's request (what `tune_request.json` records) and its folder, checked before Ray starts."""
    if pairs is None or out is None:
        raise InputError("give --pairs and --out (or --resume DIR)")
    if num_samples < 1:
        raise InputError(f"--num-samples {num_samples}: expected at least 1")
    if max_epochs < 1 or workers_per_trial < 1 or gpus_per_worker not in (0, 1):
        raise InputError("--max-epochs and --workers-per-trial must be >= 1, --gpus-per-worker 0 or 1")
    base = TrainConfig.from_yaml(config).to_dict() if config else TrainConfig().to_dict()
    base.update(data=str(Path(pairs).resolve()), epochs=max_epochs)
    base["engine"].update(workers=workers_per_trial, use_gpu=bool(gpus_per_worker))
    return {"command": "tune", "space": space, "num_samples": num_samples, "base": base}, Path(out).resolve()


def resumed_request(folder: Path) -> tuple[dict, Path]:
    """The request of the interrupted sweep in `folder`."""
    request_path = Path(folder) / "tune_request.json"
    if not request_path.is_file() or not (Path(folder) / SWEEP_NAME).is_dir():
        raise InputError(f"--resume {folder}: no interrupted sweep there (tune_request.json, sweep/)")
    return json.loads(request_path.read_text()), Path(folder).resolve()


def tune(request: dict, out: Path, *, resume: bool = False, force: bool = False, verbose: bool = False,
         table1: bool = False) -> tuple[pl.DataFrame, dict]:
    """`comical tune`: checks, then the sweep (new or resumed) and its outputs; `run.json` records its state.

    The console gets a line per trial event; Tune's tables, Ray's logs and warnings go to `out/tune.log` (and to the
    console too with `verbose`; `table1` adds the paper's Table 1 of the best settings). Returns the results table and
    the best trial's row.
    """
    import shutil

    from comical.data_io.console import logged_console
    from comical.data_io.output_dir import check_output_dir, mark_run
    from comical.distributed.ray_session import init_ray, shutdown_ray
    from comical.distributed.train import check_cluster_fits, check_train_inputs

    space = load_space(request["space"])
    base = TrainConfig.from_dict(request["base"], source="comical tune")
    check_train_inputs(base)
    started = init_ray()
    check_cluster_fits(base)
    if not resume:
        check_output_dir(out, request, force=force, inputs=(Path(base.data),))
        if out.exists():  # the same sweep again, or --force: start afresh
            shutil.rmtree(out)
        out.mkdir(parents=True)
        write_atomic(out / "tune_request.json", json.dumps(request, indent=2) + "\n")
    mark_run(out, request, "running")
    try:
        with logged_console(out / "tune.log", verbose=verbose) as say:
            grid = run_sweep(base, space, num_samples=request["num_samples"], out=out, resume=resume, say=say)
            expected, ended = expected_trials(space, request["num_samples"]), ended_trials(out / SWEEP_NAME)
            if ended < expected:  # no results yet: the interrupted trial's epochs would read as an ASHA stop
                raise Interrupted(f"interrupted with {ended} of {expected} trials ended; the sweep's state is saved: "
                                  f"comical tune --resume {out}")
            table = results_table(grid, space, base.epochs)
            manifest = json.loads((Path(base.data) / "manifest.json").read_text())
            best = write_sweep_outputs(table, base, space, out, manifest.get("config", {}).get("top_n_perc", "?"),
                                       table1=table1)
            if started:  # stopped while its last log lines still go to tune.log
                shutdown_ray()
                started = False
    except Interrupted:
        mark_run(out, request, "interrupted")
        raise
    except BaseException as err:
        mark_run(out, request, "failed", err)
        raise
    finally:
        if started:
            shutdown_ray()
    mark_run(out, request, "done")
    return table, best
