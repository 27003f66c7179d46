"""GEMCONT (paper 001): a linear genotype projector over a disease's variant panel against a 3-D image encoder,
trained with the CLIP loss on (subject genotype, subject image) pairs; images stream through Ray Data.

Inputs: the folder `pipelines.gemcont_inputs` writes (panel, PC-regressed genotype features, subject splits; the
cohort's image store it names). Each worker keeps the small genotype table and streams its shard of the image rows
(uint8 volumes and their scale), looks up each row's genotypes by eid, and feeds the model.

The model, as paper 001 section 3.5 reads here:
- genotype side: per-variant weights initialised to the panel's effect sizes (log odds ratios of the counted
  allele), then a linear projector to the shared space; SCARF corruption in training (each genotype feature, with
  probability `scarf_p`, replaced by the same feature of a random subject of the batch);
- image side: a small 3-D CNN (strided conv, batch norm, GELU; global average pool) to `image_features` = D
  (256), then a linear projector to D/2. The paper projects the image to D/2; the two sides must meet in one space
  for the CLIP loss, so the genotype projector goes to D/2 as well (`embed_dim` = 128);
- augmentation of the volumes in training (intensity noise by default; affine, crop, blur on request: MONAI);
- a learnable temperature initialised at 0.07.
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

from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.distributed.losses import LOSSES
from comical.distributed.metrics import paired_epoch_line, paired_top1
from comical.distributed.task import STREAMED, Task


@dataclasses.dataclass(frozen=True)
class GemcontConfig(Config):
    embed_dim: int = 128  # D/2: both sides' projection (paper: D = 256, the image projected to D/2)
    image_features: int = 256  # D: the image encoder's output
    channels: tuple[int, ...] = (16, 32, 64, 128)  # the CNN's stages (stride 2 each)
    scarf_p: float = 0.1  # SCARF: fraction of genotype features replaced in training
    augment: str = "intensity"  # off | intensity (noise) | spatial (also affine, crop, blur): `distributed.augment`
    init_temperature: float = 0.07
    # panel: the linear projector over the panel's variants (GEMCONT); prs: paper 001's PRS baseline, one weighted
    # score (the panel's effects, fixed) through the projector
    genotype_input: str = "panel"

    def __post_init__(self):
        if self.augment not in ("off", "intensity", "spatial"):
            raise InputError(f"model.augment {self.augment!r}: expected off, intensity or spatial")
        if self.genotype_input not in ("panel", "prs"):
            raise InputError(f"model.genotype_input {self.genotype_input!r}: expected panel or prs")


def scarf(g: torch.Tensor, p: float) -> torch.Tensor:
    """SCARF corruption: each entry, with probability p, replaced by the same column of a random row."""
    if p <= 0:
        return g
    mask = torch.rand(g.shape, device=g.device) < p
    donors = torch.randint(0, g.shape[0], g.shape, device=g.device)
    return torch.where(mask, torch.gather(g, 0, donors), g)


class ImageEncoder(nn.Module):
    """A small 3-D CNN: strided conv stages with batch norm and GELU, global average pool, linear to D.

    Batch norm, not instance norm: a per-volume normalisation followed by global pooling leaves every subject with
    nearly the same features (each channel's mean is the norm's bias), erasing the differences between subjects
    that the model is to align with their genotypes."""

    def __init__(self, channels: tuple[int, ...], features: int, in_channels: int = 1):
        super().__init__()
        layers, previous = [], in_channels
        for width in channels:
            layers += [nn.Conv3d(previous, width, 3, stride=2, padding=1), nn.BatchNorm3d(width),
                       nn.GELU()]
            previous = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(previous, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean(dim=(2, 3, 4)))


class GemcontModel(nn.Module):
    def __init__(self, config: GemcontConfig, effects: list[float], image_shape: tuple[int, int, int],
                 seed: int = 0):
        super().__init__()
        self.config = config
        weights = torch.tensor(effects, dtype=torch.float32)
        if config.genotype_input == "prs":  # fixed: the score is the PRS
            self.register_buffer("variant_weights", weights)
        else:
            self.variant_weights = nn.Parameter(weights)
        self.genotype_projector = nn.Linear(1 if config.genotype_input == "prs" else len(effects), config.embed_dim)
        self.image_encoder = ImageEncoder(tuple(config.channels), config.image_features)
        self.image_projector = nn.Linear(config.image_features, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / config.init_temperature)))  # [1]: DeepSpeed
        self.image_shape = tuple(image_shape)
        self.seed = seed
        self._augment = None

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        if self._augment is None:  # built on the worker, seeded by its rank: MONAI is imported there only
            from comical.distributed.augment import VolumeAugment

            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._augment = VolumeAugment(self.image_shape, seed=self.seed * 1000 + rank, level=self.config.augment)
        return self._augment(images)

    def encode_genotypes(self, g: torch.Tensor) -> torch.Tensor:
        weighted = g * self.variant_weights
        if self.config.genotype_input == "prs":
            weighted = weighted.sum(-1, keepdim=True)
        return F.normalize(self.genotype_projector(weighted), dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projector(self.image_encoder(images)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]):
        g, images = batch["g"], batch["image"]
        if self.training:
            g = scarf(g, self.config.scarf_p)
            if self.config.augment != "off":
                images = self.augment(images)
        return (self.encode_images(images), self.encode_genotypes(g),
                self.logit_scale.clamp(max=math.log(100)).exp())


def _rows(sorted_eids: np.ndarray, eids: np.ndarray) -> np.ndarray:
    """Rows of `eids` in the sorted table; every eid must be there (an image without genotypes is a broken input)."""
    rows = np.searchsorted(sorted_eids, eids).clip(max=len(sorted_eids) - 1)
    absent = sorted_eids[rows] != eids
    if absent.any():
        raise InputError(f"image rows of subjects without GEMCONT genotype features (eid {eids[absent][0]})")
    return rows


def read_inputs(folder: str | Path) -> tuple[dict, "pq.Table"]:
    """The inputs folder's manifest and its genotype table (eid, split, g)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    if manifest.get("task") != "gemcont":
        raise InputError(f"{folder}: not GEMCONT inputs (no manifest.json of task gemcont; make them with "
                         "`comical train --task gemcont --cohort DIR --disease D`)")
    return manifest, pq.read_table(folder / "genotypes.parquet")


R2_SUBJECTS = 2000  # latent R^2: at most this many test subjects (a ridge on ~10^5 raw voxels costs n^2 x voxels)


def r2_subset(n: int, seed: int) -> np.ndarray:
    """Positions (sorted) of the test subjects every latent R^2 is computed on, trained, untrained and raw alike."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:R2_SUBJECTS])


def embedding_table(eids: np.ndarray, image: np.ndarray, genotype: np.ndarray, split: np.ndarray | None = None):
    """eid[, split], image_0.., genotype_0..: one row per subject, one column per embedding dimension."""
    return pa.table({"eid": eids, **({} if split is None else {"split": split}),
                     **{f"image_{k}": image[:, k] for k in range(image.shape[1])},
                     **{f"genotype_{k}": genotype[:, k] for k in range(genotype.shape[1])}})


def embed_cohort(model: nn.Module, info: dict, run: Path, cohort: Path, *, split: str | None = None) -> pa.Table:
    """`comical embed` of a GEMCONT run: every subject of its inputs, or those of one `split` (eid, split, image_*,
    genotype_*). The genotype features were fitted on the run's cohort (PCs, scaling on its training split), so
    --cohort must be that cohort: its image store must be the one the inputs were made from."""
    from comical.data_io.images import open_image_store, store_identity

    inputs = Path(run) / "inputs"  # a run trained with --cohort holds its inputs; else the --data folder it named
    info = dict(info) | {"data": str(inputs if (inputs / "manifest.json").is_file() else info["data"])}
    manifest, table = read_inputs(info["data"])
    images = Path(cohort) / "images"
    open_image_store(images, table.column("eid").to_numpy())
    if manifest.get("images_sha256") not in (None, store_identity(images)):
        raise InputError(f"--cohort {cohort}: its image store is not the one run {run} was trained on (its inputs "
                         f"came from {manifest['cohort']}); embed the cohort the run was trained on")
    task = GemcontTask()
    task.bind(info)
    splits = table.column("split").to_numpy(zero_copy_only=False)
    chosen = table.column("eid").to_numpy()[splits == split] if split else None
    eids, parts = task.embed(model, chosen, images=images)
    image, genotype = parts["image"], parts["genotype"]
    order = np.argsort(table.column("eid").to_numpy())
    return embedding_table(eids, image, genotype, splits[order][_rows(table.column("eid").to_numpy()[order], eids)])


class GemcontTask(Task):
    name = "gemcont"
    model_config = GemcontConfig
    input_path = STREAMED
    eval_chunk, per_row_outputs = 64, (0, 1)  # the validation forward, 64 volumes at a time (the scale: one)
    selection_metric = "loss"
    # paper 001 section 3.5: AdamW 3e-4, weight decay 1e-4, cosine schedule after a warm-up
    optim_defaults = MappingProxyType({"learning_rate": 3e-4, "weight_decay": 1e-4, "schedule": "cosine",
                                       "warmup_steps": 100})
    # the paper's batch is 1024 over 150 epochs on an H100; the mini cohort's 1400 training subjects give a worker
    # of two at most 700, so the default is a batch every documented command runs with on it (tests/test_cli.py)
    run_defaults = MappingProxyType({"batch_size": 128})

    def check_inputs(self, config) -> dict:
        from pyarrow import csv

        from comical.data_io.images import open_image_store

        manifest, table = read_inputs(config.data)
        images = Path(config.data) / manifest.get("images_relative", manifest["images"])
        if not images.is_dir():  # the relative path holds when the inputs moved with their cohort (the demo's rename)
            images = Path(manifest["images"])
        store = open_image_store(images, table.column("eid").to_numpy())
        if config.worker_batch_size > manifest["splits"]["train"] // config.engine.workers:
            raise InputError(f"--batch-size {config.batch_size}: larger than a worker's share of the "
                             f"{manifest['splits']['train']} training subjects")
        panel = csv.read_csv(Path(config.data) / "panel.tsv", parse_options=csv.ParseOptions(delimiter="\t"))
        return {"data": str(Path(config.data).resolve()), "images": str(store.folder.resolve()),
                "modality": manifest["modality"], "image_shape": list(store.shape),
                "variants": panel["variant_id"].to_pylist(), "effects": panel["effect"].to_pylist(),
                "disease": manifest["disease"], "seed": config.seed, "n_train": manifest["splits"]["train"]}

    def _eids(self, split: str) -> np.ndarray:
        _, table = read_inputs(self.info["data"])
        return table.column("eid").to_numpy()[table.column("split").to_numpy(zero_copy_only=False) == split]

    def datasets(self, config) -> dict:
        from comical.data_io.images import open_image_store

        store = open_image_store(self.info["images"])
        return {split: store.dataset([self.info["modality"]], self._eids(split)) for split in ("train", "val")}

    def build_model(self, model_config: GemcontConfig, info: dict) -> nn.Module:
        return GemcontModel(model_config, info["effects"], tuple(info["image_shape"]), seed=info.get("seed", 0))

    def genotype_features(self) -> tuple[np.ndarray, torch.Tensor]:
        """Every subject's genotype features, sorted by eid (loaded once per worker)."""
        if getattr(self, "_table", None) is None:
            _, table = read_inputs(self.info["data"])
            eids = table.column("eid").to_numpy()
            g = table.column("g").combine_chunks().flatten().to_numpy().reshape(len(eids), -1)  # one copy
            order = np.argsort(eids)
            self._table = eids[order], torch.from_numpy(g[order])
        return self._table

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        eids, g = self.genotype_features()
        m = self.info["modality"]
        rows = _rows(eids, batch["eid"].cpu().numpy())
        device = batch[m].device
        image = (batch[m].to(torch.float32) * batch[f"{m}_scale"].to(torch.float32)[:, None])
        image = image.reshape(-1, 1, *self.info["image_shape"])
        return {"image": image.to(dtype), "g": g[rows].to(device=device, dtype=dtype)}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        images, genotypes, scale = (x.float() for x in outputs)
        return LOSSES["onehot"](images, genotypes, scale, rank=rank, world_size=world_size)

    def batch_metrics(self, outputs, batch: dict):
        """Top-1 retrieval of a subject's genotypes from its image and back, within the batch; chance 1/B."""
        images, genotypes, _ = (x.float() for x in outputs)
        return paired_top1(images, genotypes), {}

    def epoch_line(self, m: dict) -> str:
        return paired_epoch_line(m, "subjects")

    @torch.no_grad()
    def embed(self, model: nn.Module, eids: np.ndarray | None = None, *, images: str | Path | None = None,
              batch_size: int = 64) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(eids in store order, {"image": embeddings, "genotype": embeddings}) of the bound inputs' subjects `eids`
        (all if None) from the frozen `model`, the volumes read `batch_size` at a time."""
        from comical.data_io.images import open_image_store

        all_eids, g_all = self.genotype_features()
        eids = all_eids if eids is None else eids
        device = next(model.parameters()).device
        model.eval()
        done, image_parts, genotype_parts = [], [], []
        store = open_image_store(images or self.info["images"])
        for volumes, stored in store.batches(self.info["modality"], eids, batch_size):
            image_parts.append(model.encode_images(torch.from_numpy(volumes[:, None]).to(device)).float().cpu())
            genotype_parts.append(model.encode_genotypes(g_all[_rows(all_eids, stored)].to(device)).float().cpu())
            done.append(stored)
        return np.concatenate(done), {"image": torch.cat(image_parts).numpy(),
                                      "genotype": torch.cat(genotype_parts).numpy()}

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """On the test subjects: image<->genotype top-1 retrieval among all of them (chance 1/n); and, where the
        cohort has the planted image latent, its ridge R^2 (5-fold) from the image embeddings beside an untrained
        encoder's and the raw voxels', on the same (at most R2_SUBJECTS) subjects. Writes test_embeddings.parquet
        (eid, image_*, genotype_*)."""
        from comical.data_io.images import open_image_store
        from comical.distributed.metrics import ridge_r2

        self.bind(info)
        stored, parts = self.embed(model, self._eids("test"))
        image_embeddings, genotype_embeddings = parts["image"], parts["genotype"]
        sim = image_embeddings @ genotype_embeddings.T
        own = np.arange(len(sim))
        metrics = {"n_test": int(len(sim)), "top1_accuracy": float(((sim.argmax(1) == own).mean()
                                                                     + (sim.argmax(0) == own).mean()) / 2),
                   "top1_accuracy_chance": 1 / len(sim)}
        pq.write_table(embedding_table(stored, image_embeddings, genotype_embeddings), out / "test_embeddings.parquet")
        truth = Path(info["images"]).parent / "truth" / "image_latent.parquet"
        if truth.is_file():
            latent = pq.read_table(truth, columns=["eid", "latent"])
            z = latent["latent"].to_numpy()[np.searchsorted(latent["eid"].to_numpy(), stored)]
            torch.manual_seed(config.seed)
            untrained = self.build_model(config.model, info).to(next(model.parameters()).device)
            pick = r2_subset(len(stored), config.seed)
            images, _ = open_image_store(info["images"]).read(info["modality"], stored[pick])
            metrics |= {"latent_r2": ridge_r2(image_embeddings[pick], z[pick]),
                        "latent_r2_untrained_encoder": ridge_r2(self.embed(untrained, stored[pick])[1]["image"], z[pick]),
                        "latent_r2_raw_voxels": ridge_r2(images.reshape(len(images), -1), z[pick]),
                        "latent_r2_subjects": len(pick)}
        return metrics

    def summary(self, m: dict) -> str:
        line = (f"test top-1 image<->genotype {m['top1_accuracy']:.3f} (chance {m['top1_accuracy_chance']:.4f}) "
                f"over {m['n_test']} subjects")
        if "latent_r2" in m:
            line += (f"; planted image latent R^2 {m['latent_r2']:.3f} (untrained encoder "
                     f"{m['latent_r2_untrained_encoder']:.3f}, raw voxels {m['latent_r2_raw_voxels']:.3f})")
        return line
