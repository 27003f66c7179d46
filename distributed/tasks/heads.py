"""Downstream heads on frozen features (paper 000 section 2.4, Fig. 4, Algorithm 2): one small job per feature set.

A head is the paper's network with a single hidden layer: features -> hidden (ReLU, dropout) -> one output, a logit
(`classify`: an outcome, cross-entropy with the positive class weighted by its training rarity) or a value
(`regress`: a risk score, MSE). A job trains K heads side by side, one per outcome, as one module: the first layer
of all heads is one Linear to K x hidden units and each head's second layer reads only its own units, so the heads
share no parameter, AdamW updates each parameter on its own gradient, and gradient clipping is off (a global norm
would couple them): K separate networks in one Ray Train job instead of K jobs. Each head's loss counts only the
rows of its own design (`mask`: riskscore trains each disease's head on that disease's cases and as many controls);
the job's loss is the mean over heads, and the best epoch (all heads together) minimises it on validation.

Input folder (pipelines/downstream.py writes it):
    manifest.json                 {"format": "comical heads 1", "kind", "targets", "features", "n_features",
                                   "pos_weight"}
    {train,val,test}/part-00000.parquet   row (subject row in the cohort), x (features, standardised on the
                                   training rows), y (one target per head), mask (1 where the row counts for a head)
The test split's outputs go to `test_predictions.parquet` (row, one column per target).
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
from comical.distributed.task import RESIDENT, Task

FORMAT = "comical heads 1"
KINDS = ("classify", "regress")


@dataclasses.dataclass(frozen=True)
class HeadsConfig(Config):
    hidden: int = 64  # the single hidden layer's units, per head
    dropout: float = 0.2


class HeadBank(nn.Module):
    """K one-hidden-layer networks on the same input, as one module (see the module docstring)."""

    def __init__(self, n_features: int, n_heads: int, config: HeadsConfig):
        super().__init__()
        self.n_heads, self.width = n_heads, config.hidden
        self.hidden = nn.Linear(n_features, n_heads * config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        bound = 1 / math.sqrt(config.hidden)  # nn.Linear's initialisation of each head's output layer
        self.out_weight = nn.Parameter(torch.empty(n_heads, config.hidden).uniform_(-bound, bound))
        self.out_bias = nn.Parameter(torch.empty(n_heads).uniform_(-bound, bound))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.dropout(F.relu(self.hidden(batch["x"]))).view(-1, self.n_heads, self.width)
        return (h * self.out_weight).sum(-1) + self.out_bias  # (rows, K)


def head_losses(outputs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, kind: str,
                pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Each head's mean loss over its own rows of the batch (K values; 0 for a head with no row here)."""
    if kind == "classify":
        each = F.binary_cross_entropy_with_logits(outputs, y, pos_weight=pos_weight, reduction="none")
    else:
        each = (outputs - y) ** 2
    mask = mask.to(each.dtype)
    return (each * mask).sum(0) / mask.sum(0).clamp(min=1)


class HeadsTask(Task):
    name = "heads"
    model_config = HeadsConfig
    input_path = RESIDENT
    columns = ("row", "x", "y", "mask")
    row_order = ("row",)
    # a small network on a few thousand rows: no warm-up to speak of; no clipping (it would couple the heads)
    optim_defaults = {"learning_rate": 3e-3, "weight_decay": 1e-2, "warmup_steps": 0, "grad_clip": 0.0,
                      "betas": (0.9, 0.999)}

    def check_inputs(self, config) -> dict:
        path = Path(config.data) / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if manifest.get("format") != FORMAT:
            raise InputError(f"{config.data}: not a heads input folder (no manifest.json of format {FORMAT!r}; "
                             "`comical predict` and `comical riskscore` write it)")
        share = manifest["splits"]["train"] // config.engine.workers
        if config.worker_batch_size > share:
            raise InputError(f"--batch-size {config.batch_size}: each of {config.engine.workers} workers would need "
                             f"{config.worker_batch_size} training rows a step but holds about {share}")
        return {k: manifest[k] for k in ("kind", "targets", "features", "n_features", "pos_weight")}

    def read_split(self, data: str, split: str) -> dict:
        table = pq.read_table(f"{data}/{split}", columns=list(self.columns))
        return {"row": table.column("row").to_numpy(), "x": _fixed(table.column("x"), np.float32),
                "y": _fixed(table.column("y"), np.float32), "mask": _fixed(table.column("mask"), np.int8)}

    def build_model(self, model_config: HeadsConfig, info: dict) -> nn.Module:
        return HeadBank(info["n_features"], len(info["targets"]), model_config)

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {"x": batch["x"].to(dtype)}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        pos_weight = None
        if self.info["kind"] == "classify":
            pos_weight = torch.tensor(self.info["pos_weight"], device=outputs.device)
        return head_losses(outputs.float(), batch["y"].float(), batch["mask"], self.info["kind"], pos_weight).mean()

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f} (mean over "
                f"{len(self.info['targets'])} heads), {m['samples_per_s']:,.0f} rows/s")

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """Every test row's output of every head (`test_predictions.parquet`); the driver's pipeline scores them."""
        data = self.read_split(config.data, "test")
        model.eval()
        device = next(model.parameters()).device
        x = torch.from_numpy(data["x"].copy())  # arrow memory is read-only
        scores = np.concatenate([model({"x": x[i:i + 4096].to(device)}).float().cpu().numpy()
                                 for i in range(0, len(x), 4096)])
        frame = pa.table({"row": data["row"], **{t: scores[:, k] for k, t in enumerate(info["targets"])}})
        buffer = pa.BufferOutputStream()
        pq.write_table(frame, buffer)
        write_atomic(out / "test_predictions.parquet", buffer.getvalue().to_pybytes())
        return {"n_test": int(len(data["row"])), "heads": len(info["targets"])}

    def summary(self, m: dict) -> str:
        return f"{m['heads']} heads, {m['n_test']} test rows scored"


def write_heads_inputs(folder: Path, *, kind: str, targets: list[str], features: str, x: np.ndarray, y: np.ndarray,
                       mask: np.ndarray, split: np.ndarray) -> dict:
    """The input folder of one heads job (see the module docstring). `x` must already be standardised; rows whose
    `split` is not train/val/test (None) are left out. Returns the manifest."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    folder.mkdir(parents=True, exist_ok=True)
    train = (split == "train")[:, None] & (mask > 0)
    positives = (y * train).sum(0)
    negatives = ((1 - y) * train).sum(0)
    pos_weight = (negatives / np.maximum(positives, 1)).tolist() if kind == "classify" else None
    counts = {}
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(split == name)
        counts[name] = int(rows.size)
        columns = {"row": pa.array(rows.astype(np.int64)),
                   **{c: pa.FixedSizeListArray.from_arrays(pa.array(v[rows].astype(dtype).ravel()), v.shape[1])
                      for c, v, dtype in (("x", x, np.float32), ("y", y, np.float32), ("mask", mask, np.int8))}}
        (folder / name).mkdir(exist_ok=True)
        pq.write_table(pa.table(columns), folder / name / "part-00000.parquet")
    manifest = {"format": FORMAT, "kind": kind, "targets": list(targets), "features": features,
                "n_features": int(x.shape[1]), "pos_weight": pos_weight, "splits": counts}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _fixed(column: pa.ChunkedArray, dtype) -> np.ndarray:
    """A fixed-size list column as a 2-D array (rows x list size)."""
    column = column.combine_chunks()
    return column.flatten().to_numpy().astype(dtype, copy=False).reshape(len(column), -1)
