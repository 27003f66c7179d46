"""CGNI (paper 002): the trained stages of the imaging-guided SNP representation, as three engine tasks.

- `cgni-age` (images streamed by Ray Data): paper 002's 3-D CNN, five blocks of conv (3^3, stride 1), batch norm,
  max pool (2, rounding up) and ReLU with 32-64-128-256-256 channels, flattened, dropout 0.2, one output,
  pre-trained to predict age (in SD units, MSE) on the subjects with an image outside the two working-memory
  groups; the two groups are its test split (age drives working memory: pre-training on the cross-validation
  subjects' ages would carry their labels' main signal into validation). The paper's convolutions have no
  padding; ours pad by one, or volumes below ~100 voxels a side would vanish before the fifth block. The
  flattened size is 256 x what the five pools leave (256 at 8-12 mm; the paper's h_v has 512).
- `cgni-cnn` (images streamed): the transfer to the low/high classification, one CNN per cross-validation fold in
  one module. Every fold's CNN starts from the brain-age weights; the first `frozen_blocks` blocks (paper: the first
  two) stay frozen, with their pre-trained batch-norm statistics, and are shared, computed once per batch; the later
  blocks are fine-tuned. Each fold's network sees every row of a batch, and only its own training rows count in its
  loss and in its batch-norm statistics (`FoldBatchNorm3d`), so no row it validates on shapes it. Before each
  validation its running statistics are computed afresh over all its training rows with the weights as they are.
  (Batch-norm statistics frozen at the pre-trained ones stalled the fine-tuning, and running averages of 16-row
  batches can misplace the decision threshold while the weights move: SCIENCE.md, the CGNI positive control.) The
  output layer is new (one logit, high vs low). Its flattened last block is the image representation h_v.
- `cgni-bank` (resident): small networks on fixed features, one per (model, fold), side by side in one module, each
  trained on its fold's training rows and validated on the fold's held-out rows: `contrastive` members are stage 2
  (imaging encoder h_v -> 250-200-150 -> 100, genetic encoder on the SNP panel -> 400-600-400-300-150 -> 100, ReLU,
  the four-term loss of eq. 5, `losses.cgni_loss`); `classify` members are stage 3 and the neural baselines (an MLP
  to one logit, cross-entropy, optional L1 on the weight matrices). Batches are ordered so that every batch holds
  rows of every (fold, label) cell (`shuffle`): each member's training rows in a batch hold both labels.

Rows never mix folds: a member's loss counts its training rows (fold != k) in training and its held-out rows
(fold == k) in validation; the 10% hold-out (fold -1) is in no dataset of any fit and is scored only by `test`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.nn import functional as F

from comical.data_io.arrow_lists import from_fixed_list, to_fixed_list
from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.distributed.losses import cgni_loss
from comical.distributed.task import RESIDENT, STREAMED, Task

IMAGE_ENCODER = (250, 200, 150, 100)  # paper 002 section II.D.2
GENETIC_ENCODER = (400, 600, 400, 300, 150, 100)


def read_cgni_inputs(folder: str | Path) -> tuple[dict, pa.Table]:
    """The inputs folder's manifest and its subjects table (pipelines/cgni/inputs.py writes them)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("task") != "cgni":
        raise InputError(f"{folder}: not CGNI inputs (no manifest.json of task cgni; `comical cgni` makes them)")
    return manifest, pq.read_table(folder / "subjects.parquet")


def _lookup(sorted_eids: np.ndarray, eids: np.ndarray) -> np.ndarray:
    rows = np.searchsorted(sorted_eids, eids).clip(max=len(sorted_eids) - 1)
    if (sorted_eids[rows] != eids).any():
        raise InputError(f"an image row of a subject not in the CGNI inputs (eid {eids[sorted_eids[rows] != eids][0]})")
    return rows


# ---------------------------------------------------------------- the 3-D CNN


@dataclasses.dataclass(frozen=True)
class CgniCnnConfig(Config):
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)  # paper 002: five blocks
    dropout: float = 0.2  # before the fully connected output
    frozen_blocks: int = 2  # transfer: blocks that keep the brain-age weights, frozen (paper: the first two)
    pretrained: str = ""  # cgni-cnn: the brain-age run's model folder


class FoldBatchNorm3d(nn.BatchNorm3d):
    """Batch norm whose training statistics come from the batch's `rows` (a bool per row, set before each forward:
    one fold's training rows), weighted so that no row's selection needs a host sync; without `rows`, and in
    evaluation, it is nn.BatchNorm3d."""

    rows: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rows is None:
            return super().forward(x)
        x, dtype = x.float(), x.dtype  # statistics in fp32 under bf16 too
        w = self.rows.float().view(-1, 1, 1, 1, 1)
        count = (w.sum() * x[0, 0].numel()).clamp(min=2)
        mean = (x * w).sum((0, 2, 3, 4)) / count
        var = ((x - mean.view(1, -1, 1, 1, 1)).square() * w).sum((0, 2, 3, 4)) / count
        with torch.no_grad():  # as nn.BatchNorm3d: momentum None is a cumulative average
            self.num_batches_tracked += 1
            step = 1 / self.num_batches_tracked if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), step)
            self.running_var.lerp_((var * count / (count - 1)).to(self.running_var.dtype), step)
        shape = (1, -1, 1, 1, 1)
        return ((x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps) * self.weight.float().view(shape)
                + self.bias.float().view(shape)).to(dtype)


def conv_blocks(channels) -> nn.Sequential:
    blocks, previous = [], 1
    for width in channels:
        blocks.append(nn.Sequential(nn.Conv3d(previous, width, 3, padding=1), FoldBatchNorm3d(width),
                                    nn.MaxPool3d(2, ceil_mode=True), nn.ReLU()))
        previous = width
    return nn.Sequential(*blocks)


def flat_size(channels, shape) -> int:
    """The flattened last block: padding keeps each size, each pool halves it rounding up."""
    size = np.array(shape, float)
    for _ in channels:
        size = np.ceil(size / 2)
    return int(channels[-1] * np.prod(size))


class BrainCNN(nn.Module):
    """Paper 002's CNN: the blocks, flattened, dropout, one output."""

    def __init__(self, config: CgniCnnConfig, shape):
        super().__init__()
        self.blocks = conv_blocks(config.channels)
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(flat_size(config.channels, shape), 1)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.out(self.dropout(self.blocks(batch["image"]).flatten(1))).squeeze(-1)


class FoldCNN(nn.Module):
    """One transferred CNN per fold after a shared frozen trunk (see the module docstring)."""

    def __init__(self, config: CgniCnnConfig, shape, folds: int, pretrained: dict | None):
        super().__init__()
        base = BrainCNN(config, shape)
        if pretrained is not None:
            base.load_state_dict(pretrained)
        cut = config.frozen_blocks
        self.trunk = base.blocks[:cut]
        self.trunk.requires_grad_(False)
        self.tails = nn.ModuleList()
        for _ in range(folds):
            tail = nn.Module()
            tail.blocks = copy.deepcopy(base.blocks[cut:])
            tail.dropout = nn.Dropout(config.dropout)
            tail.out = nn.Linear(flat_size(config.channels, shape), 1)  # new: a class, not an age
            self.tails.append(tail)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen, with its pre-trained statistics
        return self

    def features(self, image: torch.Tensor, fold: torch.Tensor | None = None) -> list[torch.Tensor]:
        """h_v of every fold's CNN: its flattened last block. In training, `fold` (per row) gives each network's
        batch-norm rows: its own training rows."""
        with torch.no_grad():
            shared = self.trunk(image)
        rows = fold_masks(fold, len(self.tails), True) if fold is not None else None
        for k, tail in enumerate(self.tails):
            for m in tail.blocks.modules():
                if isinstance(m, FoldBatchNorm3d):
                    m.rows = rows[:, k] if rows is not None else None
        return [tail.blocks(shared).flatten(1) for tail in self.tails]

    def forward(self, batch: dict) -> dict:
        h = self.features(batch["image"], batch["fold"] if self.training else None)
        logits = [tail.out(tail.dropout(v)) for tail, v in zip(self.tails, h)]
        return {"logits": torch.cat(logits, 1), "training": self.training}

    @torch.no_grad()
    def set_statistics(self, batches) -> None:
        """Every fold network's batch-norm running statistics, computed afresh over its training rows: `batches`
        yields (image, fold) over the cross-validation rows (torch.optim.swa_utils.update_bn, per fold)."""
        norms = [m for m in self.tails.modules() if isinstance(m, FoldBatchNorm3d)]
        momentum = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        was = self.training
        self.train()
        for image, fold in batches:
            self.features(image, fold)
        self.train(was)
        for m, value in zip(norms, momentum):
            m.momentum = value


def fold_masks(fold: torch.Tensor, folds: int, training: bool) -> torch.Tensor:
    """(rows, folds): the rows each fold's member learns from (training) or is validated on."""
    k = torch.arange(folds, device=fold.device)
    fold = fold.long()[:, None]
    return ((fold != k) & (fold >= 0)) if training else (fold == k)


def masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over members of each member's mean cross-entropy over its rows (a member without rows: 0)."""
    each = F.binary_cross_entropy_with_logits(logits, y.float()[:, None].expand_as(logits), reduction="none")
    mask = mask.to(each.dtype)
    return ((each * mask).sum(0) / mask.sum(0).clamp(min=1)).mean()


class _ImageTask(Task):
    input_path = STREAMED

    def _subjects(self) -> dict:
        """The inputs' subjects sorted by eid (loaded once per worker)."""
        if getattr(self, "_table", None) is None:
            _, table = read_cgni_inputs(self.info["data"])
            order = np.argsort(table.column("eid").to_numpy())
            self._table = {c: table.column(c).to_numpy(zero_copy_only=False)[order]
                           for c in ("eid", "age", "label", "fold", "age_split")}
        return self._table

    def _eids(self, keep) -> np.ndarray:
        s = self._subjects()
        return s["eid"][keep(s)]

    def _columns(self, batch: dict, *names: str) -> list[torch.Tensor]:
        """The subjects' `names` columns for the batch's rows (by eid), on the batch's device."""
        s = self._subjects()
        rows = _lookup(s["eid"], batch["eid"].cpu().numpy())
        return [torch.from_numpy(s[c][rows]).to(batch["eid"].device) for c in names]

    def _image(self, batch: dict, dtype: torch.dtype) -> torch.Tensor:
        m = self.info["modality"]
        image = batch[m].to(torch.float32) * batch[f"{m}_scale"].to(torch.float32)[:, None]
        return image.reshape(-1, 1, *self.info["image_shape"]).to(dtype)

    def _common_info(self, config) -> tuple[dict, dict]:
        from comical.data_io.images import open_image_store

        manifest, table = read_cgni_inputs(config.data)
        store = open_image_store(manifest["images"], table.column("eid").to_numpy())
        return manifest, {"data": str(Path(config.data).resolve()), "images": str(store.folder.resolve()),
                          "modality": manifest["modality"], "image_shape": list(store.shape),
                          "folds": manifest["folds"], "seed": config.seed}

    def datasets(self, config) -> dict:
        from comical.data_io.images import open_image_store

        store = open_image_store(self.info["images"])
        return {split: store.dataset([self.info["modality"]], self._eids(self._keep(split)))
                for split in ("train", "val")}

    def _volumes(self, model: nn.Module, eids: np.ndarray, batch_size: int = 32):
        """(image batch on the model's device and dtype, its eids) over the subjects `eids`, streamed."""
        from comical.data_io.images import open_image_store

        parameter = next(model.parameters())
        for volumes, stored in open_image_store(self.info["images"]).batches(self.info["modality"], eids, batch_size):
            yield torch.from_numpy(volumes[:, None]).to(parameter.device, parameter.dtype), stored

    def scores(self, model: nn.Module, eids: np.ndarray, fn, batch_size: int = 32):
        """(eids in store order, fn(model, image batch) concatenated) over the subjects `eids`."""
        done, parts = [], []
        for image, stored in self._volumes(model, eids, batch_size):
            parts.append(fn(model, image))
            done.append(stored)
        return np.concatenate(done), parts


class CgniAgeTask(_ImageTask):
    """Stage 1, pre-training: brain age from the image."""

    name = "cgni-age"
    model_config = CgniCnnConfig
    selection_metric = "loss"
    optim_defaults = MappingProxyType({"learning_rate": 1e-3, "weight_decay": 1e-4, "warmup_steps": 10, "grad_clip": 1.0})

    def _keep(self, split: str):
        return lambda s: s["age_split"] == split

    def check_inputs(self, config) -> dict:
        manifest, info = self._common_info(config)
        self.bind(info)
        ages = self._subjects()["age"][self._subjects()["age_split"] == "train"]
        if config.worker_batch_size > len(ages) // config.engine.workers:
            raise InputError(f"--batch-size {config.batch_size}: larger than a worker's share of the {len(ages)} "
                             "brain-age training subjects")
        return info | {"age_mean": float(ages.mean()), "age_sd": float(ages.std()), "n_train": int(len(ages))}

    def build_model(self, model_config: CgniCnnConfig, info: dict) -> nn.Module:
        return BrainCNN(model_config, info["image_shape"])

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {"image": self._image(batch, dtype)}

    def before_validation(self, module: nn.Module) -> None:
        """Batch-norm statistics over all the pre-training subjects with this epoch's weights: running averages of
        16-volume batches lag the moving weights (SCIENCE.md, the CGNI positive control)."""
        from torch.optim.swa_utils import update_bn

        s = self._subjects()
        update_bn(({"image": image} for image, _ in self._volumes(module, s["eid"][s["age_split"] == "train"])),
                  module)

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        age, = self._columns(batch, "age")
        return F.mse_loss(outputs.float(), (age - self.info["age_mean"]) / self.info["age_sd"])

    def batch_metrics(self, outputs, batch: dict):
        """Absolute error in years, beside predicting the training subjects' mean age."""
        age, = self._columns(batch, "age")
        predicted = outputs.float() * self.info["age_sd"] + self.info["age_mean"]
        return {"mae": (predicted - age).abs().sum(),
                "mae_mean_predictor": (age - self.info["age_mean"]).abs().sum()}, {}

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}, val age MAE "
                f"{m['val_mae']:.2f} y (mean age {m['val_mae_mean_predictor']:.2f}), {m['samples_per_s']:,.1f} "
                "volumes/s")

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """Age MAE on the validation subjects and on the test split (the two working-memory groups, never seen in
        pre-training) beside the mean-age predictor's."""
        self.bind(info)
        s = self._subjects()
        model.eval()
        metrics = {}
        for split in ("val", "test"):
            eids, parts = self.scores(model, s["eid"][s["age_split"] == split],
                                      lambda m, x: m({"image": x}).float().cpu().numpy())
            age = s["age"][_lookup(s["eid"], eids)]
            predicted = np.concatenate(parts) * info["age_sd"] + info["age_mean"]
            metrics |= {f"mae_{split}": float(np.abs(predicted - age).mean()),
                        f"mae_mean_predictor_{split}": float(np.abs(age - info["age_mean"]).mean()),
                        f"n_{split}": int(len(eids))}
        return metrics

    def summary(self, m: dict) -> str:
        return (f"brain age MAE {m['mae_test']:.2f} y on the {m['n_test']} working-memory subjects, unseen in "
                f"pre-training (mean-age predictor {m['mae_mean_predictor_test']:.2f} y)")


class CgniCnnTask(_ImageTask):
    """Stage 1, transfer: each fold's CNN classifies low vs high working memory."""

    name = "cgni-cnn"
    model_config = CgniCnnConfig
    selection_metric = "loss"
    # fine-tuning: a smaller step than pre-training; no clipping (a global norm would couple the folds' networks)
    optim_defaults = MappingProxyType({"learning_rate": 3e-4, "weight_decay": 1e-4, "warmup_steps": 10, "grad_clip": 0.0})

    def _keep(self, split: str):
        return lambda s: s["fold"] >= 0  # every fold's rows; the loss picks each member's own

    def check_inputs(self, config) -> dict:
        if not (Path(config.model.pretrained) / "model.safetensors").is_file():
            raise InputError(f"model.pretrained {config.model.pretrained!r}: no brain-age model there (a cgni-age "
                             "run's model/ folder)")
        manifest, info = self._common_info(config)
        self.bind(info)
        n = int((self._subjects()["fold"] >= 0).sum())
        if config.worker_batch_size > n // config.engine.workers:
            raise InputError(f"--batch-size {config.batch_size}: larger than a worker's share of the {n} "
                             "cross-validation subjects")
        return info | {"n_train": n}

    def build_model(self, model_config: CgniCnnConfig, info: dict) -> nn.Module:
        from safetensors.torch import load_file

        weights = load_file(str(Path(model_config.pretrained) / "model.safetensors"))
        return FoldCNN(model_config, info["image_shape"], info["folds"], weights)

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        fold, = self._columns(batch, "fold")
        return {"image": self._image(batch, dtype), "fold": fold}

    def before_validation(self, module: nn.Module) -> None:
        """Each fold network's batch-norm statistics over all its training rows, with this epoch's weights."""
        s = self._subjects()
        module.set_statistics((image, torch.from_numpy(s["fold"][_lookup(s["eid"], eids)]).to(image.device))
                              for image, eids in self._volumes(module, s["eid"][s["fold"] >= 0]))

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        label, fold = self._columns(batch, "label", "fold")
        return masked_bce(outputs["logits"].float(), label, fold_masks(fold, self.info["folds"], outputs["training"]))

    def batch_metrics(self, outputs, batch: dict):
        """Cross-validated accuracy: each row scored by the fold's network that did not train on it (chance 0.5)."""
        label, fold = self._columns(batch, "label", "fold")
        held = fold_masks(fold, self.info["folds"], False)
        return {"cv_accuracy": (((outputs["logits"].float() > 0) == (label[:, None] == 1)) & held).sum()}, {}

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}, "
                f"cross-validated accuracy {m['val_cv_accuracy']:.3f} (chance ~0.5), {m['samples_per_s']:,.1f} "
                "volumes/s")

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """Every fold's logit and h_v for every subject of the two groups (`features.parquet`: eid, logit (one per
        fold), hv_0.. (one list per fold)); the pipeline scores them."""
        self.bind(info)
        s = self._subjects()
        model.eval()

        def both(m, x):
            h = m.features(x)
            logits = torch.cat([tail.out(v) for tail, v in zip(m.tails, h)], 1)
            return logits.float().cpu().numpy(), [v.float().cpu().numpy() for v in h]

        eids, parts = self.scores(model, s["eid"][s["label"] >= 0], both)
        logits = np.concatenate([p[0] for p in parts])
        table = pa.table({"eid": eids, "logit": to_fixed_list(logits.astype(np.float32)),
                          **{f"hv_{k}": to_fixed_list(np.concatenate([p[1][k] for p in parts]).astype(np.float32))
                             for k in range(info["folds"])}})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        write_atomic(out / "features.parquet", buffer.getvalue().to_pybytes())
        return {"n_subjects": int(len(eids)), "h_v": int(table.column("hv_0").type.list_size)}

    def summary(self, m: dict) -> str:
        return f"{self.info.get('folds', '')} fold networks; h_v of {m['h_v']} features for {m['n_subjects']} subjects"


# ---------------------------------------------------------------- the bank of small networks

BANK_FORMAT = "comical cgni bank 1"
BANK_KINDS = ("contrastive", "classify")


@dataclasses.dataclass(frozen=True)
class CgniBankConfig(Config):
    temperature: float = 0.1  # tau of eqs. 1-4 (paper: not stated); embeddings are L2-normalised


def mlp(sizes) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class Bank(nn.Module):
    def __init__(self, info: dict):
        super().__init__()
        self.kind, self.specs = info["kind"], info["members"]
        dims = info["blocks"]
        nets = {}
        for m in self.specs:
            if self.kind == "contrastive":
                net = nn.Module()
                net.image = mlp([dims[m["image"]], *IMAGE_ENCODER])
                net.genetic = mlp([dims[m["genetic"]], *GENETIC_ENCODER])
            else:
                net = mlp([sum(dims[b] for b in m["inputs"]), *m["hidden"], 1])
            nets[m["name"]] = net
        self.nets = nn.ModuleDict(nets)

    def encode(self, name: str, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        spec = next(m for m in self.specs if m["name"] == name)
        net = self.nets[name]
        return net.image(batch[spec["image"]]), net.genetic(batch[spec["genetic"]])

    def forward(self, batch: dict) -> dict:
        out, penalties = {}, {}
        for m in self.specs:
            net = self.nets[m["name"]]
            if self.kind == "contrastive":
                out[m["name"]] = self.encode(m["name"], batch)
            else:
                out[m["name"]] = net(torch.cat([batch[b] for b in m["inputs"]], 1)).squeeze(-1)
                if self.training and m.get("l1"):
                    penalties[m["name"]] = m["l1"] * l1_norm(net)
        return {"members": out, "penalties": penalties, "training": self.training}


def l1_norm(net: nn.Module) -> torch.Tensor:
    return sum(p.abs().sum() for name, p in net.named_parameters() if name.endswith("weight"))


class CgniBankTask(Task):
    name = "cgni-bank"
    model_config = CgniBankConfig
    input_path = RESIDENT
    row_order = ("fold", "label", "eid")
    selection_metric = "loss"
    # paper 002: Adam, with weight decay as an L2 penalty; no clipping (a global norm would couple the members)
    optim_defaults = MappingProxyType({"learning_rate": 1e-3, "weight_decay": 1e-4, "warmup_steps": 0, "grad_clip": 0.0})

    def check_inputs(self, config) -> dict:
        path = Path(config.data) / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if manifest.get("format") != BANK_FORMAT:
            raise InputError(f"{config.data}: not a CGNI bank input folder (no manifest.json of format "
                             f"{BANK_FORMAT!r}; `comical cgni` writes it)")
        cells = 2 * manifest["folds"]
        if config.worker_batch_size < 2 * cells:
            raise InputError(f"--batch-size {config.batch_size}: each worker's batch needs at least {2 * cells} rows "
                             f"(twice the {cells} fold x label cells) to hold both labels for every member")
        return {k: manifest[k] for k in ("kind", "members", "blocks", "folds")} | {"data": str(Path(config.data))}

    def read_split(self, data: str, split: str) -> dict:
        """train and val: every cross-validation row (a member's loss picks its own); test: every row."""
        table = pq.read_table(Path(data) / "rows.parquet")
        if split != "test":
            table = table.filter(pc.greater_equal(table.column("fold"), 0))
        return {"eid": table.column("eid").to_numpy(), "label": table.column("label").to_numpy(),
                "fold": table.column("fold").to_numpy(),
                **{b: from_fixed_list(table.column(b), np.float32) for b in self.info["blocks"]}}

    def shuffle(self, shard: dict, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Each (fold, label) cell's rows, shuffled, spread evenly over the epoch from a random offset: a batch
        holds at least one row of a cell of n_c of the shard's n rows once batch_size >= n / n_c + cells, so with
        cells of similar size (the two groups are ~10% each) a batch of 2 x cells rows holds every cell. With very
        unequal cells a member may meet a batch without one label; its loss there is 0."""
        cell = (shard["fold"].long() * 2 + shard["label"].long()).cpu()
        key = torch.empty(len(cell), dtype=torch.float64)
        for c in cell.unique():
            rows = torch.nonzero(cell == c).squeeze(1)
            rows = rows[torch.randperm(len(rows), generator=generator)]
            offset = torch.rand(1, generator=generator, dtype=torch.float64)
            key[rows] = (torch.arange(len(rows), dtype=torch.float64) + offset) / len(rows)
        return torch.argsort(key)

    def build_model(self, model_config: CgniBankConfig, info: dict) -> nn.Module:
        return Bank(info)

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {k: (v.to(dtype) if k in self.info["blocks"] else v) for k, v in batch.items()}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        masks = fold_masks(batch["fold"], self.info["folds"], outputs["training"])
        label = batch["label"]
        total = 0.0
        for m in self.info["members"]:
            rows = masks[:, m["fold"]]
            out = outputs["members"][m["name"]]
            if self.info["kind"] == "contrastive":
                zv, zg = (z.float() for z in out)
                if label[rows].unique().numel() == 2:
                    total = total + cgni_loss(zv[rows], zg[rows], label[rows], m["weights"], config.model.temperature)
                else:  # no pair of labels here (a validation batch of one fold): nothing to contrast
                    total = total + 0.0 * (zv.sum() + zg.sum())
            else:
                total = total + masked_bce(out.float()[:, None], label, rows[:, None])
                total = total + outputs["penalties"].get(m["name"], 0.0)  # L1, in training only
        return total / len(self.info["members"])

    def batch_metrics(self, outputs, batch: dict):
        """classify: each model's cross-validated accuracy (rows scored by the member that held them out)."""
        if self.info["kind"] != "classify":
            return {}, {}
        masks = fold_masks(batch["fold"], self.info["folds"], False)
        sums = {}
        for m in self.info["members"]:
            right = ((outputs["members"][m["name"]].float() > 0) == (batch["label"] == 1)) & masks[:, m["fold"]]
            key = f"cv_accuracy_{m['model']}"
            sums[key] = sums.get(key, 0) + right.sum()
        return sums, {}

    def epoch_line(self, m: dict) -> str:
        accuracy = ", ".join(f"{k[len('val_cv_accuracy_'):]} {v:.3f}" for k, v in sorted(m.items())
                             if k.startswith("val_cv_accuracy_"))
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}"
                + (f", cross-validated accuracy {accuracy} (chance ~0.5)" if accuracy else ""))

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """Every member's outputs for every row, hold-out included (`member_outputs.parquet`: eid, then per
        member `zv:NAME`, `zg:NAME` (contrastive) or `logit:NAME`)."""
        self.bind(info)
        data = self.read_split(info["data"], "test")
        model.eval()
        device = next(model.parameters()).device
        batch = {b: torch.from_numpy(data[b].copy()).to(device) for b in info["blocks"]}
        members = model(batch)["members"]
        columns = {"eid": data["eid"]}
        for name, value in members.items():
            if info["kind"] == "contrastive":
                columns[f"zv:{name}"] = to_fixed_list(value[0].float().cpu().numpy())
                columns[f"zg:{name}"] = to_fixed_list(value[1].float().cpu().numpy())
            else:
                columns[f"logit:{name}"] = value.float().cpu().numpy()
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.table(columns), buffer)
        write_atomic(out / "member_outputs.parquet", buffer.getvalue().to_pybytes())
        return {"members": len(members), "rows": int(len(data["eid"]))}

    def summary(self, m: dict) -> str:
        return f"{m['members']} {self.info.get('kind', '')} members scored on {m['rows']} rows"


def write_bank_inputs(folder: Path, *, kind: str, members: list[dict], folds: int, eid: np.ndarray,
                      label: np.ndarray, fold: np.ndarray, blocks: dict[str, np.ndarray]) -> dict:
    """The input folder of one bank job: manifest.json and rows.parquet (eid, label, fold, one fixed-size list
    column per feature block). Members: {"name", "model", "fold", and "image", "genetic", "weights" (contrastive)
    or "inputs", "hidden", "l1" (classify)}."""
    if kind not in BANK_KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {BANK_KINDS}")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"eid": eid.astype(np.int64), "label": label.astype(np.int8), "fold": fold.astype(np.int8),
                             **{b: to_fixed_list(v.astype(np.float32)) for b, v in blocks.items()}}),
                   folder / "rows.parquet")
    manifest = {"format": BANK_FORMAT, "kind": kind, "members": members, "folds": folds,
                "blocks": {b: int(v.shape[1]) for b, v in blocks.items()}}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest

