"""Model weights as safetensors + a JSON of the model config and the pair store's vocabularies (no pickle)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.distributed.models import ContrastiveModel, ModelConfig

MODEL_WEIGHTS = "model.safetensors"
MODEL_INFO = "model.json"


def save_model(folder: Path, weights: dict[str, torch.Tensor], config: ModelConfig, manifest: dict) -> None:
    """Write `folder/model.safetensors` and `folder/model.json` (config, sizes, the store's index lists)."""
    folder.mkdir(parents=True, exist_ok=True)
    info = {"model": dataclasses.asdict(config), "n_bins": manifest["n_bins"], "snps": manifest["snps"],
            "idps": manifest["idps"], "vocabulary": manifest["vocabulary"],
            "snp_token_table": manifest["snp_token_table"], "ple_bin_edges": manifest["ple_bin_edges"],
            "diseases": manifest["diseases"], "buckets": manifest["buckets"]}
    write_atomic(folder / MODEL_WEIGHTS, save({k: v.contiguous() for k, v in weights.items()}))
    write_atomic(folder / MODEL_INFO, json.dumps(info) + "\n")


def load_model(folder: str | Path, device: torch.device | str = "cpu") -> tuple[ContrastiveModel, dict]:
    """The model saved by `save_model`, in eval mode, and its info."""
    from comical.distributed.train import build_model

    folder = Path(folder)
    if not (folder / MODEL_WEIGHTS).is_file() or not (folder / MODEL_INFO).is_file():
        raise InputError(f"{folder}: no {MODEL_WEIGHTS} + {MODEL_INFO}; is this a `comical train` run's model/?")
    info = json.loads((folder / MODEL_INFO).read_text())
    model = build_model(ModelConfig.from_dict(info["model"]), info)
    model.load_state_dict(load_file(str(folder / MODEL_WEIGHTS)))
    return model.to(device).eval(), info
