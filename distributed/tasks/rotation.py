"""Paper 001's simulation benchmark (section 3.1, Fig. 2): four methods on rotated characters, each a task.

The data (`data_io/rotation_sim.py`): 28 x 28 character images, each rotated by an angle driven by a genetic latent
z, with the subject's genotypes at the S causal variants. Four ways to learn an image embedding, all with the same
image encoder (a 2-D CNN to D = 256 features, the embedding every method is evaluated on):
- `sim-gemcont`: the image features through a linear projector to D/2, the genotypes through a linear projector to
  D/2 (SCARF corruption p = 0.1 while training), CLIP loss with a learnable temperature (0.07 at the start);
  images randomly erased while training (the paper's augmentation for this benchmark: it keeps the rotation).
  With `model.projector_init: gwas`, the genotype projector's first unit starts at each variant's GWAS effect on z
  in the training split (paper 001 starts its genotype projector at GWAS effect sizes); by default it is random.
- `sim-simclr`: two randomly erased views of each image (both always erased), an MLP projector to D/2, the CLIP loss
  between the views with the same learnable temperature (the symmetric cross-view InfoNCE; SimCLR's NT-Xent also
  counts same-view negatives and fixes the temperature).
- `sim-vae`: a variational autoencoder (the embedding is the posterior mean, D dims; its log-variance a second head
  on the pooled features), Bernoulli likelihood of the pixels, KL to N(0, I).
- `sim-supervised`: the encoder with a linear head regressing z itself (the upper bound: it sees the latent).

Rows are small (784 + S bytes), so every worker keeps its shard resident (the engine's fast path). The test split's
embeddings go to `test_embeddings.parquet` (row, z, dim0..dimD-1); `comical bench gemcont-sim` evaluates them.
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

from comical.data_io.arrow_lists import from_fixed_list
from comical.data_io.configs import Config
from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.distributed.losses import LOSSES
from comical.distributed.metrics import paired_epoch_line, paired_top1
from comical.distributed.task import RESIDENT, Task

METHODS = ("gemcont", "simclr", "vae", "supervised")


@dataclasses.dataclass(frozen=True)
class RotationConfig(Config):
    embed_dim: int = 256  # D, the embedding every method is evaluated on (paper 001: D = 256)
    # the CNN's stages (28 -> 14 -> 7 -> 4 -> 2 pixels); the last has D channels, so the pooled features, and the
    # embedding, can have full rank D (a narrower last stage caps the embedding's rank at its width)
    channels: tuple[int, ...] = (32, 64, 128, 256)
    init_temperature: float = 0.07  # learnable (paper 001)
    scarf_p: float = 0.1  # SCARF: each genotype replaced by another subject's with this probability (paper 001)
    erase_p: float = 0.5  # GEMCONT: each training image gets one randomly erased rectangle with this probability
    vae_beta: float = 1.0  # weight of the VAE's KL term
    projector_init: str = "random"  # gwas: GEMCONT's genotype projector's first unit at the training GWAS effects

    def __post_init__(self):
        if self.projector_init not in ("random", "gwas"):
            raise InputError(f"model projector_init {self.projector_init!r}: expected random or gwas")


class ImageEncoder2d(nn.Module):
    """Conv (3 x 3, stride 2) + batch norm + GELU per stage, global average pool, linear to D."""

    def __init__(self, channels: tuple[int, ...], features: int):
        super().__init__()
        layers, previous = [], 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.GELU()]
            previous = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(previous, features)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x))


def random_erase(images: torch.Tensor, p: float, area=(0.02, 0.2), ratio=(0.3, 3.3),
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020, as torchvision's RandomErasing, vectorised over the batch): with
    probability p an image gets one rectangle of 2-20% of its area (aspect 0.3-3.3) set to 0."""
    n, _, h, w = images.shape
    device = images.device

    def uniform(low=0.0, high=1.0):
        return low + (high - low) * torch.rand(n, device=device, generator=generator)

    share = uniform(*area)
    aspect = torch.exp(uniform(math.log(ratio[0]), math.log(ratio[1])))
    eh = (torch.sqrt(share * h * w * aspect)).clamp(1, h).floor()
    ew = (torch.sqrt(share * h * w / aspect)).clamp(1, w).floor()
    top = (uniform() * (h - eh + 1)).floor()
    left = (uniform() * (w - ew + 1)).floor()
    rows = torch.arange(h, device=device)[None, :, None]
    cols = torch.arange(w, device=device)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None]) & (cols >= left[:, None, None])
           & (cols < (left + ew)[:, None, None]))
    box &= (uniform() < p)[:, None, None]
    return images.masked_fill(box[:, None], 0.0)


def scarf(x: torch.Tensor, p: float) -> torch.Tensor:
    """SCARF (Bahri et al. 2021): each entry replaced, with probability p, by the same column of a random row of
    the batch (a draw from the column's empirical marginal)."""
    donors = torch.randint(len(x), x.shape, device=x.device)
    swapped = torch.gather(x, 0, donors)
    return torch.where(torch.rand(x.shape, device=x.device) < p, swapped, x)


class RotationModel(nn.Module):
    """One module for the four methods: the shared image encoder and the method's heads."""

    def __init__(self, config: RotationConfig, method: str, n_variants: int, gwas: dict | None = None):
        super().__init__()
        self.config, self.method = config, method
        d = config.embed_dim
        self.encoder = ImageEncoder2d(tuple(config.channels), d)
        if method == "gemcont":
            self.image_projector = nn.Linear(d, d // 2)
            self.genotype_projector = nn.Linear(n_variants, d // 2)
            if gwas is not None:  # its first unit's output is then each subject's GWAS score of z, centred
                with torch.no_grad():
                    effects = torch.tensor(gwas["effects"], dtype=torch.float32)
                    mean = torch.tensor(gwas["mean_dosage"], dtype=torch.float32)
                    self.genotype_projector.weight[0] = effects
                    self.genotype_projector.bias[0] = -effects @ mean
        elif method == "simclr":
            self.projector = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d // 2))
        elif method == "vae":
            self.log_var = nn.Linear(config.channels[-1], d)  # from the pooled features; the encoder's output
            # is the posterior mean
            self.decoder = nn.Sequential(nn.Linear(d, 64 * 7 * 7), nn.GELU(), nn.Unflatten(1, (64, 7, 7)),
                                         nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.GELU(),
                                         nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1))
        elif method == "supervised":
            self.head = nn.Linear(d, 1)
        else:
            raise ValueError(f"method {method!r}: expected one of {METHODS}")
        if method in ("gemcont", "simclr"):  # [1]: DeepSpeed wants no 0-d parameters
            self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / config.init_temperature)))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def _scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def forward(self, batch: dict[str, torch.Tensor]):
        images = batch["image"]
        erase = (lambda x: random_erase(x, self.config.erase_p)) if self.training else (lambda x: x)  # noqa: E731
        if self.method == "gemcont":
            genotypes = scarf(batch["genotypes"], self.config.scarf_p) if self.training else batch["genotypes"]
            return (F.normalize(self.image_projector(self.encoder(erase(images))), dim=-1),
                    F.normalize(self.genotype_projector(genotypes), dim=-1), self._scale())
        if self.method == "simclr":
            # both views always erased (identical views teach nothing); validation uses two fixed erasures, the
            # same every epoch, so its loss (which picks the best epoch) compares epochs on the same views
            views = [random_erase(images, 1.0, generator=None if self.training else
                                  torch.Generator(images.device).manual_seed(k)) for k in range(2)]
            a, b = (F.normalize(self.projector(self.encoder(x)), dim=-1) for x in views)
            return a, b, self._scale()
        if self.method == "vae":
            pooled = self.encoder.pool(images)
            mean = self.encoder.head(pooled)
            log_var = self.log_var(pooled).clamp(-10, 10)
            sample = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var) if self.training else mean
            return self.decoder(sample), mean, log_var
        return (self.head(self.encoder(images))[:, 0],)


class RotationTask(Task):
    """The shared task of the four methods; each subclass names its method."""

    method = ""
    model_config = RotationConfig
    input_path = RESIDENT
    columns = ("row", "image", "genotypes", "z")
    row_order = ("row",)
    optim_defaults = MappingProxyType({"learning_rate": 3e-4, "weight_decay": 1e-4, "schedule": "cosine", "warmup_steps": 100})

    def check_inputs(self, config) -> dict:
        path = Path(config.data) / "manifest.json"
        manifest = json.loads(path.read_text()) if path.is_file() else {}
        if manifest.get("format") != "comical rotation simulation 1":
            raise InputError(f"{config.data}: not a rotation simulation data set (no manifest.json from "
                             "`comical bench gemcont-sim`)")
        share = manifest["splits"]["train"] // config.engine.workers
        if config.worker_batch_size > share:
            raise InputError(f"--batch-size {config.batch_size}: each of {config.engine.workers} workers would need "
                             f"{config.worker_batch_size} training rows a step but holds about {share}")
        info = {"n_variants": manifest["n_variants"], "n_train": manifest["splits"]["train"]}
        if self.method == "gemcont" and config.model.projector_init == "gwas":
            info["gwas"] = gwas_effects(self.read_split(config.data, "train"))
        return info

    def read_split(self, data: str, split: str) -> dict:
        table = pq.read_table(f"{data}/{split}", columns=list(self.columns))
        return {"row": table.column("row").to_numpy(), "z": table.column("z").to_numpy().astype(np.float32),
                "image": from_fixed_list(table.column("image"), np.uint8).reshape(-1, 1, 28, 28),
                "genotypes": from_fixed_list(table.column("genotypes"), np.int8)}

    def build_model(self, model_config: RotationConfig, info: dict) -> nn.Module:
        return RotationModel(model_config, self.method, info["n_variants"], info.get("gwas"))

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        return {"image": batch["image"].to(dtype) / 255.0, "genotypes": batch["genotypes"].to(dtype),
                "z": batch["z"].to(dtype)}

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        if self.method in ("gemcont", "simclr"):
            a, b, scale = (x.float() for x in outputs)
            return LOSSES["onehot"](a, b, scale, rank=rank, world_size=world_size)
        if self.method == "vae":
            logits, mean, log_var = (x.float() for x in outputs)
            target = batch["image"].float() / 255.0
            reconstruction = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(target)
            kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / len(target)
            return reconstruction + config.model.vae_beta * kl
        return F.mse_loss(outputs[0].float(), batch["z"].float())

    def batch_metrics(self, outputs, batch: dict):
        if self.method in ("gemcont", "simclr"):
            a, b, _ = (x.float() for x in outputs)
            return paired_top1(a, b), {}
        return {}, {}

    def epoch_line(self, m: dict) -> str:
        if self.method in ("gemcont", "simclr"):
            return paired_epoch_line(m, "images")
        return super().epoch_line(m)

    @torch.no_grad()
    def test(self, model: nn.Module, info: dict, config, out: Path) -> dict:
        """The test split's embeddings (`test_embeddings.parquet`; an untrained encoder's, seeded as the run's
        initial weights, in `test_embeddings_untrained.parquet`), and the ridge R^2 of z from them beside the
        untrained encoder's and the raw pixels'."""
        from comical.distributed.metrics import ridge_r2

        data = self.read_split(config.data, "test")
        device = next(model.parameters()).device
        torch.manual_seed(config.seed)
        untrained = self.build_model(config.model, info).to(device).eval()
        model.eval()
        trained, random = (embed_images(m, data["image"], device, config.eval_batch_size) for m in (model, untrained))
        z = data["z"].astype(np.float64)
        for name, values in (("test_embeddings", trained), ("test_embeddings_untrained", random)):
            frame = pa.table({"row": data["row"], "z": z, **{f"dim{i}": values[:, i] for i in range(values.shape[1])}})
            buffer = pa.BufferOutputStream()
            pq.write_table(frame, buffer, compression="zstd")
            write_atomic(out / f"{name}.parquet", buffer.getvalue().to_pybytes())
        pixels = data["image"].reshape(len(z), -1).astype(np.float32) / 255.0
        return {"latent_r2": ridge_r2(trained, z), "latent_r2_untrained_encoder": ridge_r2(random, z),
                "latent_r2_raw_pixels": ridge_r2(pixels, z), "n_test": len(z)}

    def summary(self, m: dict) -> str:
        return (f"latent R^2 from the test embeddings {m['latent_r2']:.3f} (untrained encoder "
                f"{m['latent_r2_untrained_encoder']:.3f}, raw pixels {m['latent_r2_raw_pixels']:.3f}), "
                f"{m['n_test']} test images")


def gwas_effects(train: dict) -> dict:
    """Each variant's marginal GWAS effect on z (least-squares slope per allele) in the training rows, and its mean
    dosage; a variant with no variation gets 0."""
    g = train["genotypes"].astype(np.float64)
    z = train["z"].astype(np.float64)
    mean = g.mean(0)
    centred = g - mean
    var = (centred ** 2).sum(0)
    effects = np.divide(centred.T @ (z - z.mean()), var, out=np.zeros(g.shape[1]), where=var > 0)
    return {"effects": effects.tolist(), "mean_dosage": mean.tolist()}


def embed_images(model: RotationModel, images: np.ndarray, device, batch_size: int) -> np.ndarray:
    """(n, D) float32 embeddings of uint8 images (n, 1, 28, 28), batch by batch."""
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start:start + batch_size].copy()).to(device).float() / 255.0  # arrow: read-only
        out.append(model.embed(x).float().cpu().numpy())
    return np.concatenate(out)



class GemcontSimTask(RotationTask):
    name, method = "sim-gemcont", "gemcont"


class SimclrSimTask(RotationTask):
    name, method = "sim-simclr", "simclr"


class VaeSimTask(RotationTask):
    name, method = "sim-vae", "vae"


class SupervisedSimTask(RotationTask):
    name, method = "sim-supervised", "supervised"
