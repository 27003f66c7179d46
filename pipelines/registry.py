"""The registry of models: one row per trained task, saying how its inputs are made from a cohort, how it embeds
subjects, how it is evaluated, which heads read it, and which command trains it; and each paper's positive control
(`bench positive-control --method`).

The CLI, `comical embed`, `predict`/`riskscore`, the demo and `tune` read these rows; outside this module and the
task modules (`distributed/tasks/`), no code compares a task's name (tests/test_layers.py). Adding a paper is a task
file, a `pipelines/` package and rows here. Functions are named by import path and imported only when used, so
reading the registry costs nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from pathlib import Path
from typing import Callable

from comical.data_io.errors import InputError


@dataclasses.dataclass(frozen=True)
class Model:
    task: str  # the engine's task (distributed/tasks/__init__.py)
    paper: str  # its paper in ../shared/papers ("000".."003"); "" for the engine's own test task
    verb: str  # the command that trains it (`train` with --task TASK where it is not the default)
    # "module:function(cohort, out, *, seed[, disease])": `train --cohort` makes the inputs with it
    inputs: str = ""
    inputs_options: tuple[str, ...] = ()  # keyword options of `inputs` beyond seed (e.g. disease)
    embedder: str = ""  # "module:function(model, spec, run, cohort) -> (Arrow table, line)": `comical embed`
    evaluation: str = ""  # the `comical evaluate NAME` that reads its runs
    heads: str = ""  # "module:function(run, cohort, model, spec, pairs) -> Subjects": predict and riskscore
    table1: bool = False  # a Tune sweep of it writes the paper's Table 1 (COMICAL's hyperparameters)


_P = "comical.pipelines"
_MOMENTUM = dict(paper="003", verb="train --cohort", inputs=f"{_P}.momentum.inputs:prepare_momentum_inputs",
                 embedder=f"{_P}.momentum.embed:embed_momentum", evaluation="momentum")
MODELS = {m.task: m for m in (
    Model("comical", "000", "train --pairs", embedder=f"{_P}.comical.embed:embed_comical",
          heads=f"{_P}.downstream.heads:comical_subjects", table1=True),
    Model("heads", "000", "predict, riskscore"),
    Model("gemcont", "001", "train --cohort", inputs=f"{_P}.gemcont.inputs:prepare_gemcont_inputs",
          inputs_options=("disease",), embedder=f"{_P}.gemcont.embed:embed_gemcont", evaluation="gemcont",
          heads=f"{_P}.downstream.heads:gemcont_subjects"),
    *(Model(f"sim-{m}", "001", "bench gemcont-sim") for m in ("gemcont", "simclr", "vae", "supervised")),
    *(Model(f"cgni-{stage}", "002", "cgni") for stage in ("age", "cnn", "bank")),
    *(Model(task, **_MOMENTUM) for task in ("momentum-t1t2", "momentum-t1", "momentum-t2", "autoencoder-t1t2")),
    Model("toy", "", "train --data"),
)}
EVALUATIONS = {  # `comical evaluate NAME`: the function, and whether it reads one run or named runs
    "gemcont": (f"{_P}.gemcont.evaluate:evaluate_gemcont", "run"),
    "momentum": (f"{_P}.momentum.evaluate:evaluate_momentum", "runs"),
}

# `comical bench positive-control --method NAME`: its paper's control (pipelines/positive_control.py)
CONTROLS = {
    "comical": f"{_P}.comical.positive_control:CONTROL",
    "gemcont": f"{_P}.gemcont.positive_control:GEMCONT",
    "rotation": f"{_P}.gemcont.positive_control:ROTATION",
    "cgni": f"{_P}.cgni.positive_control:CONTROL",
    "momentum": f"{_P}.momentum.positive_control:CONTROL",
}


def model(task: str) -> Model:
    """The registry row of `task`; an error naming the registered ones."""
    if task not in MODELS:
        raise InputError(f"task {task!r}: expected one of {', '.join(sorted(MODELS))}")
    return MODELS[task]


def load(reference: str) -> Callable:
    """The function a "module:function" reference names."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


def cohort_tasks() -> list[str]:
    """The tasks whose inputs `train --cohort` makes."""
    return [m.task for m in MODELS.values() if m.inputs]


def inputs_maker(task: str, cohort: Path, *, seed: int, **options) -> tuple[Callable, dict]:
    """`train --cohort`: the function making `task`'s inputs into a folder, and what it was given (run.json)."""
    row = model(task)
    if not row.inputs:
        raise InputError(f"--cohort makes the inputs of {', '.join(cohort_tasks())}; --task {task} reads --data")
    chosen = {k: options[k] for k in row.inputs_options}
    return (functools.partial(load(row.inputs), cohort, seed=seed, **chosen),
            {"cohort": str(Path(cohort).resolve()), **chosen})


def embedder(task: str) -> Callable:
    """`comical embed`: the function embedding a run of `task`'s subjects, or one line saying none does."""
    row = model(task)
    if not row.embedder:
        with_embeddings = ", ".join(m.task for m in MODELS.values() if m.embedder)
        raise InputError(f"a {task!r} run has no per-subject embeddings; `comical embed` reads runs of "
                         f"{with_embeddings}")
    return load(row.embedder)


def heads_subjects(task: str) -> Callable:
    """predict and riskscore: the function giving a run's subjects and their embedding and raw-input features."""
    row = model(task)
    if not row.heads:
        readable = ", ".join(m.task for m in MODELS.values() if m.heads)
        raise InputError(f"a {task!r} model; predict and riskscore read runs of {readable} (their frozen encoders)")
    return load(row.heads)


def check_evaluation(task: str, evaluation: str, run: Path | str) -> None:
    """One line if a run of `task` is not one that `comical evaluate EVALUATION` reads."""
    if model(task).evaluation != evaluation:
        readable = ", ".join(m.task for m in MODELS.values() if m.evaluation == evaluation)
        raise InputError(f"--run {run}: a {task} run; `evaluate {evaluation}` takes runs of {readable}")
