"""Downstream heads on frozen features (paper 000 section 2.4, Fig. 4, Algorithm 2): one small job for every
feature set and target.

A head is the paper's network with a single hidden layer: features -> hidden (ReLU, dropout) -> one output, a logit
(`classify`: an outcome, cross-entropy with the positive class weighted by its training rarity) or a value
(`regress`: a risk score, MSE). A job trains G x K heads side by side, one per feature set (G: the embedding and the
raw-input baseline) and target (K outcomes or risk scores), as one module: the first layer of all heads is one Linear
to G x K x hidden units whose weights are masked block by block, so a head reads only its own feature set's columns
(initialised as nn.Linear would for that set's fan-in), and each head's second layer reads only its own units. The
heads share no parameter, AdamW updates each parameter on its own gradient, and gradient clipping is off (a global
norm would couple them): G x K separate networks in one Ray Train job instead of G x K jobs (a job's start costs
more than its training on the mini cohort). Each head's loss counts only the rows of its own design (`mask`:
riskscore trains each disease's head on that disease's cases and as many controls); the job's loss is the mean over
heads. Model selection is per head: after each epoch's validation every head whose
own validation loss improved copies its weights into its `best_*` buffers (saved with the checkpoints); the test uses
each head's best weights. The heads still share the step count, the learning-rate schedule and the epochs run.

Input folder (pipelines/downstream/heads.py writes it):
    manifest.json                 {"format": "comical heads 2", "kind", "targets" (K), "features" (G names),
                                   "n_features" (G column counts), "pos_weight" (K)}
    {train,val,test}/part-00000.parquet   row (subject row in the cohort), x (the G feature sets side by side, each
                                   standardised on the training rows), y (K targets), mask (K: 1 where the row counts
                                   for that target's heads)
The test split's outputs go to `test_predictions.parquet` (row, one column `{feature set}:{target}` per head).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
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

FORMAT = "comical heads 2"
KINDS = ("classify", "regress")


@dataclasses.dataclass(frozen=True)
class HeadsConfig(Config):
    hidden: int = 64  # the single hidden layer's units, per head
    dropout: float = 0.2


class HeadBank(nn.Module):
    """G x K one-hidden-layer networks, K targets on each of G feature sets side by side in the input (`blocks`: each
    set's column count), as one module (see the module docstring). Head g * K + k reads set g for target k."""

    def __init__(self, blocks: Sequence[int], n_targets: int, config: HeadsConfig):
        super().__init__()
        self.n_targets, self.n_heads, self.width = n_targets, len(blocks) * n_targets, config.hidden
        self.hidden = nn.Linear(sum(blocks), self.n_heads * config.hidden)
        self.register_buffer("block_mask", torch.zeros_like(self.hidden.weight))
        rows = n_targets * config.hidden
        with torch.no_grad():
            for g, (start, size) in enumerate(zip(np.cumsum([0, *blocks[:-1]]).tolist(), blocks)):
                bound = 1 / math.sqrt(size)  # nn.Linear's initialisation for this set's fan-in
                self.block_mask[g * rows:(g + 1) * rows, start:start + size] = 1
                self.hidden.weight[g * rows:(g + 1) * rows].uniform_(-bound, bound)
                self.hidden.bias[g * rows:(g + 1) * rows].uniform_(-bound, bound)
            self.hidden.weight.mul_(self.block_mask)
        self.dropout = nn.Dropout(config.dropout)
        bound = 1 / math.sqrt(config.hidden)  # nn.Linear's initialisation of each head's output layer
        self.out_weight = nn.Parameter(torch.empty(self.n_heads, config.hidden).uniform_(-bound, bound))
        self.out_bias = nn.Parameter(torch.empty(self.n_heads).uniform_(-bound, bound))
        # each head's best validation loss so far and its weights then (per-head model selection)
        self.register_buffer("best_loss", torch.full((self.n_heads,), math.inf))
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
        hidden = F.linear(batch["x"], self.hidden.weight * self.block_mask, self.hidden.bias)
        h = self.dropout(F.relu(hidden)).view(-1, self.n_heads, self.width)
        return (h * self.out_weight).sum(-1) + self.out_bias  # (rows, G x K)


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

    def head_names(self) -> list[str]:
        """`{feature set}:{target}` of each head, in the model's output order."""
        return [f"{f}:{t}" for f in self.info["features"] for t in self.info["targets"]]

    def _per_head(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The batch's targets, masks and positive weights repeated for each feature set's heads."""
        g = len(self.info["features"])
        pos_weight = None
        if self.info["kind"] == "classify":
            pos_weight = torch.tensor(self.info["pos_weight"] * g, device=batch["y"].device)
        return batch["y"].float().repeat(1, g), batch["mask"].repeat(1, g), pos_weight

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {"x": batch["x"].to(dtype)}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        y, mask, pos_weight = self._per_head(batch)
        return head_losses(outputs.float(), y, mask, self.info["kind"], pos_weight).mean()

    def batch_metrics(self, outputs, batch: dict):
        """Each head's validation loss sum and row count (the engine sums them over batches and workers)."""
        y, mask, pos_weight = self._per_head(batch)
        total, rows = head_loss_sums(outputs.float(), y, mask, self.info["kind"], pos_weight)
        return {**{f"head_loss_{k}": v for k, v in enumerate(total)},
                **{f"head_rows_{k}": v for k, v in enumerate(rows)}}, {}

    def after_validation(self, module: HeadBank, metrics: dict) -> dict:
        """Per-head model selection: each head keeps its weights of its best validation epoch; the run's selection
        metric is the mean of the heads' best losses so far, which stops falling once no head improves, so the
        engine's best epoch is one whose buffers hold every head's best."""
        k = len(self.head_names())
        total = np.array([metrics[f"head_loss_{i}"] for i in range(k)])
        rows = np.array([metrics[f"head_rows_{i}"] for i in range(k)])
        with np.errstate(invalid="ignore", divide="ignore"):
            losses = total / rows  # NaN for a head without validation rows: it never counts as improved
        module.keep_best(torch.tensor(losses, dtype=module.best_loss.dtype, device=module.best_loss.device))
        best = module.best_loss.cpu().numpy()
        return {"best_heads_loss": float(np.mean(best[np.isfinite(best)])) if np.isfinite(best).any() else math.inf}

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f} (mean over "
                f"{len(self.head_names())} heads; each head's best so far {m['val_best_heads_loss']:.4f}), "
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
        frame = pa.table({"row": data["row"], **{h: scores[:, k] for k, h in enumerate(self.head_names())}})
        buffer = pa.BufferOutputStream()
        pq.write_table(frame, buffer)
        write_atomic(out / "test_predictions.parquet", buffer.getvalue().to_pybytes())
        return {"n_test": int(len(data["row"])), "heads": len(self.head_names())}

    def summary(self, m: dict) -> str:
        return f"{m['heads']} heads, {m['n_test']} test rows scored"


def write_heads_inputs(folder: Path, *, kind: str, targets: list[str], features: dict[str, np.ndarray], y: np.ndarray,
                       mask: np.ndarray, split: np.ndarray) -> dict:
    """The input folder of one heads job (see the module docstring): `features` maps each feature set's name to its
    columns, already standardised; rows whose `split` is not train/val/test (None) are left out. Returns the
    manifest."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
    x = np.hstack(list(features.values()))
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
    manifest = {"format": FORMAT, "kind": kind, "targets": list(targets), "features": list(features),
                "n_features": [int(v.shape[1]) for v in features.values()], "pos_weight": pos_weight,
                "splits": counts}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest
