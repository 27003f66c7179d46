"""The task interface: what the training engine needs to know about a model, and nothing more.

The Ray Train loop, the DeepSpeed/DDP wiring, checkpoints, failure recovery, metrics logging, export and the driver
that Tune shares (distributed/train.py, run.py, export.py) only ever call these methods; a model is one module in
`distributed/tasks/` that subclasses `Task` and is named in `tasks.TASKS`.

A task says:
- `model_config`: the typed `model:` section of the TrainConfig (sizes and loss settings of this model);
- `check_inputs(config)`: the driver's checks before Ray starts; returns the task's `info`, the input spec that
  sizes the model and travels with the exported weights (vocabularies, bin edges, feature sizes);
- `input_path`: `resident` (each worker reads its shard of a small split once, `read_split`, keeps it on its device
  and shuffles (`shuffle`) and slices it there every epoch: the fast path for small rows such as SNP-IDP pairs) or
  `streamed`
  (`datasets`: Ray Data datasets that Ray Train shards and `iter_torch_batches` streams with prefetching and a
  local shuffle buffer, for data that does not fit, such as image volumes);
- `build_model(model_config, info)` and `prepare(batch, dtype)` (stored columns -> the model's inputs, with the
  `info` the task was bound to);
- `loss(outputs, batch, ...)`: this worker's share of the loss, its terms taken from `losses.LOSSES`;
- `batch_metrics(outputs, batch)`: validation/test metrics summed over a batch's rows (the engine divides by the
  rows), each beside its chance or null level; `selection_metric`: the validation metric the best epoch minimises;
- hooks: `after_step(module)` after every optimizer step (a momentum encoder's EMA); `after_validation(module,
  metrics)` after each epoch's validation (per-head model selection), whose returned metrics join the epoch's;
- `epoch_line(metrics)` and `test(...)`: the console line of an epoch and the best model's evaluation on the test
  split, run on the driver, which writes the task's own outputs into the run folder;
- `n_train()`: the training rows of an epoch, which size a cosine schedule (streamed tasks put `n_train` in `info`);
- `embed(model, eids)`: per-subject embeddings from the frozen model, for tasks that have them;
- `run_defaults` and `optim_defaults`: its paper's batch size, epochs and optimiser, under what a config gives.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import numpy as np

import torch
from torch import nn

from comical.data_io.configs import Config

RESIDENT, STREAMED = "resident", "streamed"


class Task:
    name: str = ""
    model_config: type[Config] = Config
    input_path: str = RESIDENT
    columns: tuple[str, ...] = ()  # the dataset columns a worker reads
    row_order: tuple[str, ...] = ()  # resident shards are sorted by these (default: all columns) before shuffling
    selection_metric: str = "loss"  # minimised on the validation split
    # its paper's settings, under what a config gives: `optim:` keys, and top-level ones (batch_size, epochs)
    optim_defaults: Mapping = MappingProxyType({})
    run_defaults: Mapping = MappingProxyType({})
    # 3-D image tasks: the validation forward runs this many rows at a time and joins the outputs named in
    # `per_row_outputs` (dict keys or tuple positions; the rest come from the first chunk), so a validation batch of
    # eval_batch_size candidates costs a chunk's activations (4,096 volumes at once took a worker to 10 GiB)
    eval_chunk: int | None = None
    per_row_outputs: tuple = ()

    def __init__(self) -> None:
        self.info: dict = {}

    def bind(self, info: dict) -> Task:
        """This task over inputs described by `info` (what `check_inputs` returned, or an exported model.json)."""
        self.info = info
        return self

    def check_inputs(self, config) -> dict[str, Any]:
        raise NotImplementedError

    def read_split(self, data: str, split: str) -> dict:
        """Resident tasks: the whole split of the input folder `data` as numpy arrays, one per column."""
        raise NotImplementedError

    def shuffle(self, shard: dict[str, torch.Tensor], batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Resident tasks: this epoch's row order of a worker's shard, cut into batches of `batch_size` (a task
        whose batches must hold certain rows, such as both classes, orders them so)."""
        return torch.randperm(len(next(iter(shard.values()))), generator=generator)

    def datasets(self, config) -> dict:
        """Streamed tasks: the Ray Data datasets of `train` and `val`."""
        raise NotImplementedError

    def build_model(self, model_config: Config, info: dict) -> nn.Module:
        raise NotImplementedError

    def prepare(self, batch: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return batch

    def loss(self, outputs, batch: dict[str, torch.Tensor], config, *, rank: int, world_size: int) -> torch.Tensor:
        raise NotImplementedError

    def eval_outputs(self, model, batch: dict[str, torch.Tensor], dtype: torch.dtype, chunks: int | None = None):
        """The model's outputs on a validation batch: one forward, or with `eval_chunk` one per chunk of rows,
        joined. `chunks`: run at least this many forwards (the extra ones on the first chunk, outputs dropped), so
        that ZeRO-3's collective forwards stay in step across ranks."""
        if self.eval_chunk is None:
            return model(self.prepare(batch, dtype))
        n = len(next(iter(batch.values())))
        starts = range(0, n, self.eval_chunk)
        parts = [model(self.prepare({k: v[i:i + self.eval_chunk] for k, v in batch.items()}, dtype)) for i in starts]
        for _ in range((chunks or 0) - len(parts)):
            model(self.prepare({k: v[:self.eval_chunk] for k, v in batch.items()}, dtype))
        first = parts[0]
        if isinstance(first, dict):
            return {k: torch.cat([p[k] for p in parts]) if k in self.per_row_outputs else v for k, v in first.items()}
        return tuple(torch.cat([p[i] for p in parts]) if i in self.per_row_outputs else v for i, v in enumerate(first))

    def eval_chunks(self, batch: dict[str, torch.Tensor]) -> int:
        """How many forwards `eval_outputs` runs on this batch."""
        n = len(next(iter(batch.values())))
        return 1 if self.eval_chunk is None else -(-n // self.eval_chunk)

    def batch_metrics(self, outputs, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
        """Metric sums over the batch's rows, and per-row outputs (may be empty)."""
        return {}, {}

    def after_step(self, module: nn.Module) -> None:
        """Called after every optimizer step with the unwrapped model."""

    def before_validation(self, module: nn.Module) -> None:
        """Called on every rank after each epoch's training with the unwrapped model, before its validation (a
        task may set statistics, such as batch norm's, that validation and the checkpoint then use)."""

    def after_validation(self, module: nn.Module, metrics: dict) -> dict:
        """Called on every rank after each epoch's validation with the unwrapped model and the (all-reduced)
        validation metrics, before the checkpoint; returns metrics to add (the heads keep each head's best weights)."""
        return {}

    def epoch_line(self, metrics: dict) -> str:
        return (f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.4f}, val loss {metrics['val_loss']:.4f}, "
                f"{metrics['samples_per_s']:,.0f} samples/s")

    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        return f"test loss {metrics['loss']:.4f}"

    def n_train(self) -> int | None:
        """Training rows of an epoch where the engine cannot count them (streamed tasks: `info['n_train']`, which
        `check_inputs` must set); None leaves a cosine schedule without its length, which the engine refuses."""
        return self.info.get("n_train")

    def embed(self, model: nn.Module, eids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(the eids embedded, in the order of the rows, {column prefix: rows x dims}) from the frozen `model` of the
        bound inputs; tasks without per-subject embeddings refuse."""
        from comical.data_io.errors import InputError

        raise InputError(f"a {self.name!r} model has no per-subject embeddings of its own inputs")


def get_task(name: str) -> Task:
    """The registered task of this name (tasks.TASKS)."""
    import importlib

    from comical.data_io.errors import InputError
    from comical.distributed.tasks import TASKS

    if name not in TASKS:
        raise InputError(f"task {name!r}: expected one of {sorted(TASKS)}")
    module_name, class_name = TASKS[name]
    return getattr(importlib.import_module(module_name), class_name)()
