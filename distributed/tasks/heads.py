"""Downstream heads on frozen features (paper 000 section 2.4, Fig. 4, Algorithm 2): one small job per feature set.

A head is the paper's network with a single hidden layer: features -> hidden (ReLU, dropout) -> one output, a logit
(`classify`: an outcome, cross-entropy with the positive class weighted by its training rarity) or a value
(`regress`: a risk score, MSE). A job trains K heads side by side, one per outcome, as one module: the first layer
of all heads is one Linear to K x hidden units and each head's second layer reads only its own units, so the heads
share no parameter, AdamW updates each parameter on its own gradient, and gradient clipping is off (a global norm
would couple them): K separate networks in one Ray Train job instead of K jobs. Each head's loss counts only the
rows of its own design (`mask`: riskscore trains each disease's head on that disease's cases and as many controls);
the job's loss is the mean over heads. Model selection is per head: after each epoch's validation every head whose
own validation loss improved copies its weights into its `best_*` buffers (saved with the checkpoints); the test uses
each head's best weights. The heads still share the step count, the learning-rate schedule and the epochs run.

Input folder (pipelines/downstream/heads.py writes it):
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
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn import functional as F

from comical.data_io.arrow_lists import from_fixed_list, to_fixed_list
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
        # each head's best validation loss so far and its weights then (per-head model selection)
        self.register_buffer("best_loss", torch.full((n_heads,), math.inf))
        for name, value in self._head_tensors().items():
            self.register_buffer(f"best_{name}", value.detach().clone())

    def _head_tensors(self) -> dict[str, torch.Tensor]:
        return {"hidden_weight": self.hidden.weight, "hidden_bias": self.hidden.bias,
                "out_weight": self.out_weight, "out_bias": self.out_bias}

    def _head_rows(self, name: str, heads: torch.Tensor) -> torch.Tensor:
        """Row mask of a tensor's rows that belong to `heads` (the hidden layer has `width` rows per head)."""
        return heads.repeat_interleave(self.width) if name.startswith("hidden") else heads

    @torch.no_grad()
    def keep_best(self, losses: torch.Tensor) -> None:
        """Copy the weights of every head whose validation loss (K values; NaN: no rows) beat its best so far."""
        improved = losses < self.best_loss
        self.best_loss.copy_(torch.where(improved, losses, self.best_loss))
        for name, value in self._head_tensors().items():
            best = getattr(self, f"best_{name}")
            rows = self._head_rows(name, improved)
            best[rows] = value.detach()[rows]

    @torch.no_grad()
    def use_best(self) -> None:
        """Load each head's best weights (a head never validated keeps its current ones)."""
        seen = torch.isfinite(self.best_loss)
        for name, value in self._head_tensors().items():
            rows = self._head_rows(name, seen)
            value[rows] = getattr(self, f"best_{name}")[rows]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.dropout(F.relu(self.hidden(batch["x"]))).view(-1, self.n_heads, self.width)
        return (h * self.out_weight).sum(-1) + self.out_bias  # (rows, K)


def head_loss_sums(outputs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, kind: str,
                   pos_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's loss summed over its own rows of the batch, and how many rows it has (K values each)."""
    if kind == "classify":
        each = F.binary_cross_entropy_with_logits(outputs, y, pos_weight=pos_weight, reduction="none")
    else:
        each = (outputs - y) ** 2
    mask = mask.to(each.dtype)
    return (each * mask).sum(0), mask.sum(0)


def head_losses(outputs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, kind: str,
                pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Each head's mean loss over its own rows of the batch (K values; 0 for a head with no row here)."""
    total, rows = head_loss_sums(outputs, y, mask, kind, pos_weight)
    return total / rows.clamp(min=1)


class HeadsTask(Task):
    name = "heads"
    model_config = HeadsConfig
    input_path = RESIDENT
    columns = ("row", "x", "y", "mask")
    row_order = ("row",)
    selection_metric = "best_heads_loss"
    # a small network on a few thousand rows: no warm-up to speak of; no clipping (it would couple the heads)
    optim_defaults = MappingProxyType({"learning_rate": 3e-3, "weight_decay": 1e-2, "warmup_steps": 0, "grad_clip": 0.0,
                      "betas": (0.9, 0.999)})

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
        return {"row": table.column("row").to_numpy(), "x": from_fixed_list(table.column("x"), np.float32),
                "y": from_fixed_list(table.column("y"), np.float32),
                "mask": from_fixed_list(table.column("mask"), np.int8)}

    def build_model(self, model_config: HeadsConfig, info: dict) -> nn.Module:
        return HeadBank(info["n_features"], len(info["targets"]), model_config)

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {"x": batch["x"].to(dtype)}

    def _pos_weight(self, device) -> torch.Tensor | None:
        if self.info["kind"] != "classify":
            return None
        return torch.tensor(self.info["pos_weight"], device=device)

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        return head_losses(outputs.float(), batch["y"].float(), batch["mask"], self.info["kind"],
                           self._pos_weight(outputs.device)).mean()

    def batch_metrics(self, outputs, batch: dict):
        """Each head's validation loss sum and row count (the engine sums them over batches and workers)."""
        total, rows = head_loss_sums(outputs.float(), batch["y"].float(), batch["mask"], self.info["kind"],
                                     self._pos_weight(outputs.device))
        return {**{f"head_loss_{k}": v for k, v in enumerate(total)},
                **{f"head_rows_{k}": v for k, v in enumerate(rows)}}, {}

    def after_validation(self, module: HeadBank, metrics: dict) -> dict:
        """Per-head model selection: each head keeps its weights of its best validation epoch; the run's selection
        metric is the mean of the heads' best losses so far, which stops falling once no head improves, so the
        engine's best epoch is one whose buffers hold every head's best."""
        k = len(self.info["targets"])
        total = np.array([metrics[f"head_loss_{i}"] for i in range(k)])
        rows = np.array([metrics[f"head_rows_{i}"] for i in range(k)])
        with np.errstate(invalid="ignore", divide="ignore"):
            losses = total / rows  # NaN for a head without validation rows: it never counts as improved
        module.keep_best(torch.tensor(losses, dtype=module.best_loss.dtype, device=module.best_loss.device))
        best = module.best_loss.cpu().numpy()
        return {"best_heads_loss": float(np.mean(best[np.isfinite(best)])) if np.isfinite(best).any() else math.inf}

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f} (mean over "
                f"{len(self.info['targets'])} heads; each head's best so far {m['val_best_heads_loss']:.4f}), "
                f"{m['samples_per_s']:,.0f} rows/s")

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """Every test row's output of every head (`test_predictions.parquet`); the driver's pipeline scores them."""
        data = self.read_split(config.data, "test")
        model.use_best()
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
                   **{c: to_fixed_list(v[rows].astype(dtype))
                      for c, v, dtype in (("x", x, np.float32), ("y", y, np.float32), ("mask", mask, np.int8))}}
        (folder / name).mkdir(exist_ok=True)
        pq.write_table(pa.table(columns), folder / name / "part-00000.parquet")
    manifest = {"format": FORMAT, "kind": kind, "targets": list(targets), "features": features,
                "n_features": int(x.shape[1]), "pos_weight": pos_weight, "splits": counts}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
