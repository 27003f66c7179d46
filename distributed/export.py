"""Frozen encoders of any task: weights as safetensors + `model.json` (no pickle).

    run/model/model.safetensors   the best epoch's weights
    run/model/model.json          {"task": name, "model": the task's model config, "input": the task's input spec
                                   (`Task.check_inputs`: sizes, vocabularies, bin edges)}

`load_model` rebuilds the model through its task, so `comical embed` and downstream heads load any task's model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.distributed.task import get_task

MODEL_WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"


def save_model(folder: Path, weights: dict[str, torch.Tensor], config, info: dict) -> None:
    """Write `folder/model.safetensors` and `folder/model.json` for a run of `config` (a TrainConfig)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"task": config.task, "model": config.model.to_dict(), "input": info}
    write_atomic(folder / MODEL_WEIGHTS, save({k: v.contiguous() for k, v in weights.items()}))
    write_atomic(folder / MODEL_INFO, json.dumps(spec) + "\n")


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """The model saved by `save_model`, in eval mode, and its model.json."""
    folder = Path(folder)
    if not (folder / MODEL_WEIGHTS).is_file() or not (folder / MODEL_INFO).is_file():
        raise InputError(f"{folder}: no {MODEL_WEIGHTS} + {MODEL_INFO}; is this a `comical train` run's model/?")
    spec = json.loads((folder / MODEL_INFO).read_text())
    if "task" not in spec or "input" not in spec:
        raise InputError(f"{folder / MODEL_INFO}: made before models named their task; retrain the run")
    task = get_task(spec["task"])
    model = task.build_model(task.model_config.from_dict(spec["model"], source=str(folder / MODEL_INFO)),
                             spec["input"])
    model.load_state_dict(load_file(str(folder / MODEL_WEIGHTS)))
    return model.to(device).eval(), spec
