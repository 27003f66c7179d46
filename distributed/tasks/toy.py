"""A toy task that checks the engine end to end: two noisy views of one Gaussian latent, streamed by Ray Data.

    z ~ N(0, I_k);  a = tanh(z A) + noise;  b = z B + noise   (A, B: k x d, fixed by the seed)

Each view has its own MLP tower; the CLIP loss pulls a row's two views together. The latent is never shown to the
model; the test split reports how well a ridge regression recovers it from the `a` embeddings (5-fold R^2), beside
the same for an untrained encoder of the same shape and for the raw `a` view. Rows are written as Parquet with
fixed-size list columns, the layout image volumes will use.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn import functional as F

from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.distributed.losses import LOSSES
from comical.distributed.metrics import paired_epoch_line, paired_top1, ridge_r2
from comical.distributed.task import STREAMED, Task

SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def write_toy_data(folder: Path, *, n: int = 8192, latent_dim: int = 2, view_dim: int = 32, noise: float = 1.0,
                   seed: int = 0) -> dict:
    """The toy data set in `folder` (train/val/test Parquet + manifest.json); returns the manifest."""
    rng = np.random.default_rng(seed)
    a_map, b_map = rng.normal(size=(2, latent_dim, view_dim)) / math.sqrt(latent_dim)
    z = rng.normal(size=(n, latent_dim))
    a = np.tanh(z @ a_map) + noise * rng.normal(size=(n, view_dim))
    b = z @ b_map + noise * rng.normal(size=(n, view_dim))
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.cumsum([0] + [round(f * n) for f in SPLITS.values()])
    bounds[-1] = n
    for split, start, stop in zip(SPLITS, bounds[:-1], bounds[1:]):
        columns = {name: pa.FixedSizeListArray.from_arrays(pa.array(x[start:stop].astype(np.float32).ravel()), x.shape[1])
                   for name, x in (("a", a), ("b", b), ("z", z))}
        (folder / split).mkdir(exist_ok=True)
        pq.write_table(pa.table(columns), folder / split / "part-00000.parquet", row_group_size=1024)
    manifest = {"task": "toy", "n": n, "latent_dim": latent_dim, "view_dim": view_dim, "noise": noise, "seed": seed,
                "splits": {s: int(stop - start) for s, start, stop in zip(SPLITS, bounds[:-1], bounds[1:])}}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclasses.dataclass(frozen=True)
class ToyConfig(Config):
    hidden: int = 64
    embed_dim: int = 8
    init_temperature: float = 0.07


class ToyModel(nn.Module):
    def __init__(self, config: ToyConfig, view_dim: int):
        super().__init__()
        self.towers = nn.ModuleDict({view: nn.Sequential(nn.Linear(view_dim, config.hidden), nn.GELU(),
                                                         nn.Linear(config.hidden, config.embed_dim))
                                     for view in ("a", "b")})
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / config.init_temperature)))  # [1]: DeepSpeed

    def encode(self, view: str, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.towers[view](x), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.encode("a", batch["a"]), self.encode("b", batch["b"]), self.logit_scale.clamp(max=math.log(100)).exp()


class ToyTask(Task):
    name = "toy"
    model_config = ToyConfig
    input_path = STREAMED
    columns = ("a", "b")

    def check_inputs(self, config) -> dict:
        path = Path(config.data) / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if manifest.get("task") != "toy":
            raise InputError(f"{config.data}: not a toy data set (no manifest.json of task toy)")
        if config.worker_batch_size > manifest["splits"]["train"] // config.engine.workers:
            raise InputError(f"--batch-size {config.batch_size}: larger than a worker's share of the training rows")
        return {**{k: manifest[k] for k in ("latent_dim", "view_dim")}, "n_train": manifest["splits"]["train"]}

    def datasets(self, config) -> dict:
        from comical.data_io.ray_parquet import read_parquet

        return {split: read_parquet(str(Path(config.data) / split)).select_columns(list(self.columns))
                for split in ("train", "val")}

    def build_model(self, model_config: ToyConfig, info: dict) -> nn.Module:
        return ToyModel(model_config, info["view_dim"])

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {view: batch[view].to(dtype) for view in self.columns}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        a, b, scale = (x.float() for x in outputs)
        return LOSSES["onehot"](a, b, scale, rank=rank, world_size=world_size)

    def batch_metrics(self, outputs, batch: dict):
        """Top-1 retrieval of a row's other view among the batch's rows (both ways), and its chance (1/B)."""
        a, b, _ = (x.float() for x in outputs)
        return paired_top1(a, b), {}

    def epoch_line(self, m: dict) -> str:
        return paired_epoch_line(m)

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """Ridge R^2 of the latent from the test split's `a` embeddings, beside an untrained encoder and raw `a`."""
        table = pq.read_table(Path(config.data) / "test")
        a, z = (np.stack(table.column(c).to_numpy(zero_copy_only=False)) for c in ("a", "z"))
        torch.manual_seed(config.seed)
        untrained = self.build_model(config.model, info).eval()
        device = next(model.parameters()).device
        embed = lambda m: m.encode("a", torch.from_numpy(a).to(device)).float().cpu().numpy()  # noqa: E731
        return {"latent_r2": ridge_r2(embed(model), z), "latent_r2_untrained_encoder": ridge_r2(embed(untrained.to(device)), z),
                "latent_r2_raw_view": ridge_r2(a, z), "n_test": len(a)}

    def summary(self, m: dict) -> str:
        return (f"latent R^2 from the embeddings {m['latent_r2']:.3f} (untrained encoder "
                f"{m['latent_r2_untrained_encoder']:.3f}, raw view {m['latent_r2_raw_view']:.3f}), {m['n_test']} test rows")

