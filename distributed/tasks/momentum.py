"""Momentum contrastive learning of T1 and T2 volumes (paper 003), its single-modality counterparts and a
reconstruction baseline, as engine tasks (images streamed by Ray Data).

- `momentum-t1t2`: a query tower per modality (3-D CNN + projection MLP) and a key tower per modality that is an
  exponential moving average of it (key <- m key + (1 - m) query after every optimizer step, `after_step`; m =
  `momentum`, 0.99). T1 queries are contrasted with T2 keys and T2 queries with T1 keys: InfoNCE
  (`losses.queue_infonce`) with the subject's other-modality key as the positive and the batch's other keys and a
  queue of past keys of that modality as negatives (MoCo, He et al. 2020; the batch's keys are negatives too so
  that batch-norm statistics cannot identify the positive); validation and model selection use the batch's keys
  only (a queue-free loss, comparable across epochs). After each step every worker's keys are gathered in rank order and
  enqueued on every worker, so all workers hold the same queue (FIFO, `queue_size` keys, a pointer); the queues,
  their pointer and the key towers are module buffers/parameters, saved in every checkpoint and restored with it.
  The EMA updates parameters in place: ZeRO-3 (partitioned) and bf16 (a 1% update rounds away) are refused. The
  key towers' batch-norm running statistics come from their own forward passes, not from the EMA.
- `momentum-t1`, `momentum-t2`: the same scheme between two augmented views of one modality (one query tower,
  its key tower, one queue per view); validation augments both views with fixed draws.
- `autoencoder-t1t2`: reconstruction instead of contrast: a CNN encoder of the two-channel (T1, T2) volume to the
  same embedding size, a transposed-convolution decoder, mean squared error.
Inputs: the folder `pipelines.momentum_inputs` writes (subject splits among subjects with T1 and T2 images).
`test` writes `embeddings.parquet` for every subject of the inputs (eid, split, then t1_*/t2_* or z_*) from the
frozen query towers (or the encoder), and the test split's T1<->T2 top-1 retrieval beside chance.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.distributed.losses import queue_infonce
from comical.distributed.metrics import paired_epoch_line, paired_top1
from comical.distributed.task import STREAMED, Task
from comical.distributed.tasks.gemcont import ImageEncoder


@dataclasses.dataclass(frozen=True)
class MomentumConfig(Config):
    embed_dim: int = 128
    image_features: int = 256
    channels: tuple[int, ...] = (16, 32, 64, 128)  # the CNN's stages (stride 2 each)
    momentum: float = 0.99  # key <- m key + (1 - m) query
    queue_size: int = 512  # negatives per modality (keys of past batches, all workers')
    temperature: float = 0.1
    augment: str = "intensity"  # distributed.augment levels; the single-modality views need it to differ

    def __post_init__(self):
        if not 0 <= self.momentum < 1:
            raise InputError(f"model.momentum {self.momentum}: expected 0 <= m < 1")
        if self.augment not in ("off", "intensity", "spatial"):
            raise InputError(f"model.augment {self.augment!r}: expected off, intensity or spatial")


def read_momentum_inputs(folder: str | Path) -> tuple[dict, pa.Table]:
    folder = Path(folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("task") != "momentum":
        raise InputError(f"{folder}: not T1/T2 inputs (no manifest.json of task momentum; `comical train --task "
                         "momentum-t1t2 --cohort DIR` makes them)")
    return manifest, pq.read_table(folder / "subjects.parquet")


def tower(config: MomentumConfig, in_channels: int = 1) -> nn.Module:
    """CNN to image_features, then a projection MLP to embed_dim (MoCo v2's head)."""
    return nn.Sequential(ImageEncoder(tuple(config.channels), config.image_features, in_channels=in_channels),
                         nn.ReLU(), nn.Linear(config.image_features, config.embed_dim))


class MomentumModel(nn.Module):
    def __init__(self, config: MomentumConfig, shape, views: tuple[str, str], seed: int = 0):
        super().__init__()
        self.config, self.views, self.shape, self.seed = config, tuple(views), tuple(shape), seed
        self.query = nn.ModuleDict({m: tower(config) for m in sorted(set(views))})
        self.key = copy.deepcopy(self.query)
        self.key.requires_grad_(False)
        d, k = config.embed_dim, config.queue_size
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("queue_a", F.normalize(torch.randn(k, d, generator=generator), dim=1))  # view a's keys
        self.register_buffer("queue_b", F.normalize(torch.randn(k, d, generator=generator), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("enqueued", torch.zeros(1, dtype=torch.long))  # keys enqueued since the start
        self._augment = None

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.augment == "off":
            return x
        if self._augment is None:  # on the worker, seeded by its rank (MONAI is imported there only)
            from comical.distributed.augment import VolumeAugment

            rank = dist.get_rank() if dist.is_initialized() else 0
            self._augment = VolumeAugment(self.shape, seed=self.seed * 1000 + rank, level=self.config.augment)
        return self._augment(x)

    def encode(self, view: str, x: torch.Tensor) -> torch.Tensor:
        """The frozen query tower's embedding (normalised) of one modality's volumes."""
        return F.normalize(self.query[view](x), dim=-1)

    def forward(self, batch: dict) -> dict:
        a, b = batch["a"], batch["b"]
        if self.training:
            a, b = self.augment(a), self.augment(b)
        elif self.views[0] == self.views[1] and self.config.augment != "off":
            # one modality: the two views differ only by augmentation, here the same draws every validation
            from comical.distributed.augment import VolumeAugment

            a = VolumeAugment(self.shape, seed=self.seed * 7 + 1, level=self.config.augment)(a)
            b = VolumeAugment(self.shape, seed=self.seed * 7 + 2, level=self.config.augment)(b)
        va, vb = self.views
        out = {"qa": self.encode(va, a), "qb": self.encode(vb, b), "training": self.training,
               "queue_a": self.queue_a.clone(), "queue_b": self.queue_b.clone()}
        with torch.no_grad():
            out["ka"] = F.normalize(self.key[va](a), dim=-1)
            out["kb"] = F.normalize(self.key[vb](b), dim=-1)
        return out

    @torch.no_grad()
    def momentum_update(self) -> None:
        m = self.config.momentum
        for key, query in zip(self.key.parameters(), self.query.parameters()):
            key.mul_(m).add_(query.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, keys_a: torch.Tensor, keys_b: torch.Tensor) -> None:
        """Write the keys (every worker's, in rank order) over the oldest entries of the queues."""
        size = self.queue_a.shape[0]
        at = (self.queue_ptr + torch.arange(len(keys_a), device=keys_a.device)) % size
        self.queue_a[at] = keys_a.to(self.queue_a.dtype)
        self.queue_b[at] = keys_b.to(self.queue_b.dtype)
        self.queue_ptr.copy_((self.queue_ptr + len(keys_a)) % size)
        self.enqueued += len(keys_a)


class Autoencoder(nn.Module):
    """The reconstruction baseline: (T1, T2) as two channels -> embed_dim -> both volumes back."""

    def __init__(self, config: MomentumConfig, shape):
        super().__init__()
        self.shape = tuple(shape)
        self.encoder = tower(config, in_channels=2)
        self.grid = tuple(max(1, math.ceil(s / 8)) for s in shape)
        width = config.channels[-1]
        self.expand = nn.Linear(config.embed_dim, width * math.prod(self.grid))
        layers, previous = [], width
        for c in reversed(config.channels[:3]):
            layers += [nn.ConvTranspose3d(previous, c, 4, stride=2, padding=1), nn.BatchNorm3d(c), nn.GELU()]
            previous = c
        self.decoder = nn.Sequential(*layers, nn.Conv3d(previous, 2, 3, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, batch: dict) -> dict:
        x = torch.cat([batch["a"], batch["b"]], 1)
        z = self.encode(x)
        h = self.expand(z).view(len(z), -1, *self.grid)
        return {"reconstruction": F.interpolate(self.decoder(h), size=self.shape, mode="trilinear"),
                "target": x, "z": z}


class MomentumTask(Task):
    name = "momentum-t1t2"
    views = ("t1", "t2")
    model_config = MomentumConfig
    input_path = STREAMED
    eval_chunk, per_row_outputs = 64, ("qa", "qb", "ka", "kb")  # the validation forward, 64 volumes at a time
    selection_metric = "loss"
    optim_defaults = MappingProxyType({"learning_rate": 3e-4, "weight_decay": 1e-4, "warmup_steps": 20})
    run_defaults = MappingProxyType({"batch_size": 32})  # at most the queue (512) and a worker's share of mini's

    def check_inputs(self, config) -> dict:
        from comical.data_io.images import open_image_store

        manifest, table = read_momentum_inputs(config.data)
        store = open_image_store(manifest["images"], table.column("eid").to_numpy())
        absent = [m for m in set(self.views) if m not in store.modalities]
        if absent:
            raise InputError(f"{store.folder}: no {absent} images; the store holds {store.modalities}")
        n_train = manifest["splits"]["train"]
        if config.worker_batch_size > n_train // config.engine.workers:
            raise InputError(f"--batch-size {config.batch_size}: larger than a worker's share of the {n_train} "
                             "training subjects")
        if self.name.startswith("momentum"):
            if config.engine.zero_stage == 3 or config.engine.precision == "bf16":
                raise InputError("the momentum tasks update the key towers in place after each step: ZeRO-3 "
                                 "partitions them and bf16 rounds a 1% update away; use --zero-stage 0-2 and fp32")
            if not config.batch_size <= config.model.queue_size <= n_train // 2:
                raise InputError(f"model.queue_size {config.model.queue_size}: expected at least a step's keys "
                                 f"(--batch-size {config.batch_size}) and at most half the {n_train} training "
                                 "subjects (a subject's own stale key would be its negative)")
            if self.views[0] == self.views[1] and config.model.augment == "off":
                raise InputError(f"--task {self.name}: model.augment off would make its two views identical")
        return {"data": str(Path(config.data).resolve()), "images": str(store.folder.resolve()),
                "image_shape": list(store.shape), "seed": config.seed, "n_train": n_train}

    def _eids(self, split: str | None = None) -> np.ndarray:
        _, table = read_momentum_inputs(self.info["data"])
        eids = table.column("eid").to_numpy()
        return eids if split is None else eids[table.column("split").to_numpy(zero_copy_only=False) == split]

    def datasets(self, config) -> dict:
        from comical.data_io.images import open_image_store

        store = open_image_store(self.info["images"])
        return {split: store.dataset(sorted(set(self.views)), self._eids(split)) for split in ("train", "val")}

    def build_model(self, model_config: MomentumConfig, info: dict) -> nn.Module:
        return MomentumModel(model_config, info["image_shape"], self.views, seed=info.get("seed", 0))

    def _volume(self, batch: dict, modality: str, dtype: torch.dtype) -> torch.Tensor:
        image = batch[modality].to(torch.float32) * batch[f"{modality}_scale"].to(torch.float32)[:, None]
        return image.reshape(-1, 1, *self.info["image_shape"]).to(dtype)

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {"a": self._volume(batch, self.views[0], dtype), "b": self._volume(batch, self.views[1], dtype)}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        """Training: InfoNCE against the batch's keys and the queue. Validation: against the batch's keys only, so
        the selection metric does not move with the queue's contents."""
        tau, training = config.model.temperature, outputs["training"]
        qa, qb, ka, kb = (outputs[k].float() for k in ("qa", "qb", "ka", "kb"))
        queue_a, queue_b = (outputs[k].float() if training else None for k in ("queue_a", "queue_b"))
        loss = (queue_infonce(qa, kb, queue_b, tau) + queue_infonce(qb, ka, queue_a, tau)) / 2
        if training:  # every worker enqueues every worker's keys after the step: one queue everywhere
            self._pending = (_gather(ka), _gather(kb))
        return loss

    def after_step(self, module: nn.Module) -> None:
        module.momentum_update()
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None:
            module.enqueue(*pending)

    def batch_metrics(self, outputs, batch: dict):
        """Top-1 retrieval of a subject's other view among the batch (chance 1/B)."""
        return paired_top1(outputs["qa"].float(), outputs["qb"].float()), {}

    def epoch_line(self, m: dict) -> str:
        return paired_epoch_line(m, "subjects")

    @torch.no_grad()
    def embed(self, model: nn.Module, eids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(eids in store order, {column prefix: embeddings}) from the frozen query towers (or encoder)."""
        from comical.data_io.images import open_image_store

        store = open_image_store(self.info["images"])
        model.eval()
        device = next(model.parameters()).device
        modalities = sorted(set(self.views))
        done, parts = [], {m: [] for m in modalities}
        for volumes, stored in _paired_batches(store, modalities, eids):
            for m in modalities:
                parts[m].append(model.encode(m, torch.from_numpy(volumes[m][:, None]).to(device)).float().cpu())
            done.append(stored)
        return np.concatenate(done), {m: torch.cat(p).numpy() for m, p in parts.items()}

    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """embeddings.parquet (every subject); on the test split, T1<->T2 top-1 retrieval (chance 1/n) where the
        model embeds both."""
        self.bind(info)
        _, table = read_momentum_inputs(info["data"])
        eids, embeddings = self.embed(model, table.column("eid").to_numpy())
        write_embeddings(out / "embeddings.parquet", table, eids, embeddings)
        split = _split_of(table, eids)
        metrics = {"n_subjects": int(len(eids)), "n_test": int((split == "test").sum())}
        if {"t1", "t2"} <= set(embeddings):
            a, b = (embeddings[m][split == "test"] for m in ("t1", "t2"))
            sim = a @ b.T
            own = np.arange(len(a))
            metrics |= {"top1_accuracy": float(((sim.argmax(1) == own).mean() + (sim.argmax(0) == own).mean()) / 2),
                        "top1_accuracy_chance": 1 / len(a)}
        return metrics

    def summary(self, m: dict) -> str:
        line = f"embeddings of {m['n_subjects']} subjects"
        if "top1_accuracy" in m:
            line += (f"; test top-1 T1<->T2 {m['top1_accuracy']:.3f} (chance {m['top1_accuracy_chance']:.4f}) over "
                     f"{m['n_test']} subjects")
        return line


class MomentumT1Task(MomentumTask):
    name, views = "momentum-t1", ("t1", "t1")


class MomentumT2Task(MomentumTask):
    name, views = "momentum-t2", ("t2", "t2")


class AutoencoderTask(MomentumTask):
    name = "autoencoder-t1t2"
    per_row_outputs = ("reconstruction", "target", "z")

    def build_model(self, model_config: MomentumConfig, info: dict) -> nn.Module:
        return Autoencoder(model_config, info["image_shape"])

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        return F.mse_loss(outputs["reconstruction"].float(), outputs["target"].float())

    def after_step(self, module: nn.Module) -> None:
        pass

    def batch_metrics(self, outputs, batch: dict):
        return {}, {}

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.5f}, val loss (MSE) {m['val_loss']:.5f}, "
                f"{m['samples_per_s']:,.0f} subjects/s")

    @torch.no_grad()
    def embed(self, model: nn.Module, eids: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        from comical.data_io.images import open_image_store

        store = open_image_store(self.info["images"])
        model.eval()
        done, parts = [], []
        for volumes, stored in _paired_batches(store, ["t1", "t2"], eids):
            x = torch.from_numpy(np.stack([volumes["t1"], volumes["t2"]], 1))
            parts.append(model.encode(x.to(next(model.parameters()).device)).float().cpu())
            done.append(stored)
        return np.concatenate(done), {"z": torch.cat(parts).numpy()}


def _gather(keys: torch.Tensor) -> torch.Tensor:
    """Every worker's keys in rank order (no gradient: keys come from the momentum towers)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return keys.detach()
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.detach().contiguous())
    return torch.cat(parts)


def _paired_batches(store, modalities: list[str], eids: np.ndarray, batch_size: int = 64):
    """({modality: float32 volumes}, eids) of the subjects, every modality of the same rows together."""
    iterators = [store.batches(m, eids, batch_size) for m in modalities]
    for parts in zip(*iterators):
        stored = parts[0][1]
        yield {m: p[0] for m, p in zip(modalities, parts)}, stored


def _split_of(table: pa.Table, eids: np.ndarray) -> np.ndarray:
    all_eids = table.column("eid").to_numpy()
    order = np.argsort(all_eids)
    return table.column("split").to_numpy(zero_copy_only=False)[order][np.searchsorted(all_eids[order], eids)]


def write_embeddings(path: Path, table: pa.Table, eids: np.ndarray, embeddings: dict[str, np.ndarray]) -> None:
    """eid, split, then <prefix>_<k> per embedding dimension (t1_*, t2_* or z_*)."""
    columns = {"eid": eids, "split": _split_of(table, eids)}
    for prefix, values in embeddings.items():
        columns |= {f"{prefix}_{k}": values[:, k] for k in range(values.shape[1])}
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), buffer)
    write_atomic(path, buffer.getvalue().to_pybytes())
