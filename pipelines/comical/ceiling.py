"""COMICAL's ceiling and floor on a simulated cohort: models that know the planted truth, scored by the same code.

`PlantedTruthModel` has the trained model's interface (`encode_snps`, `encode_idps`, `logit_scale`, `forward`), so
the engine's `evaluate` and `genotype_log_likelihoods` score it on the same test batches as the trained model:

- with the planted effects (the ceiling): the logit of SNP input (s, g) against IDP input (j, x) is the Gaussian
  log-likelihood ratio log p(z | g) - log p(z) of the pair's planted direct effect, z the standardised log IDP:
  z | g ~ N(b g~, 1 - b^2), g~ the genotype standardised at the variant's ancestral frequency (as the simulator
  plants it), b the planted effect in SDs of the log IDP over the store's training subjects; 0 for an unplanted
  pair or a missing call. This is the optimal contrastive critic log p(x, y) / (p(x) p(y)) of one pair
  (CLIP's loss is InfoNCE) given its planted direct effect, other SNPs, covariates, disease status and population
  shifts being noise to it. Scored, it gives the within-bucket accuracy and loss that the planted effects allow.
- without them (the floor, `effects=False`): every logit is its bucket term alone. This is the best model that
  knows identities (which SNP and IDP share a disease) and nothing of genotype-IDP association: the loss floor.

Both add a large constant to the logits of candidates in the query's bucket (bucket membership is known to any
trained model; it saturates bucket accuracy), so the softmax runs over the bucket's candidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from comical.data_io.pair_store import read_manifest
from comical.data_io.simulate import LOG_VOLUME_SCALE
from comical.data_io.tables import read_table

BUCKET_GAP = 50.0  # logit added within the query's bucket: exp(-50) leaves nothing to other buckets
MIN_RESIDUAL_VARIANCE = 0.05  # 1 - b^2 floored: a planted effect never explains a whole IDP


class PlantedTruthModel(nn.Module):
    """Embeddings whose dot product is the planted critic (module docstring): for J IDPs and D buckets, a SNP input
    is [mu / v, -mu^2 / (2 v) - ln(v) / 2, (1 - 1 / v) / 2] over the J IDPs (mu = b g~, v = 1 - b^2 of the SNP's
    effect on each IDP) then BUCKET_GAP at its bucket; an IDP input (j, z) is [z, 1, z^2] at j then 1 at its bucket."""

    def __init__(self, effect: np.ndarray, frequency: np.ndarray, token_table: np.ndarray, snp_bucket: np.ndarray,
                 idp_bucket: np.ndarray, edges: np.ndarray, log_mean: np.ndarray, log_sd: np.ndarray):
        super().__init__()
        n_snps, n_idps = effect.shape
        n_buckets = int(max(snp_bucket.max(), idp_bucket.max())) + 1
        g = (np.arange(3)[None, :] - 2 * frequency[:, None]) / np.sqrt(2 * frequency * (1 - frequency))[:, None]
        b = effect[:, None, :]  # (snps, 1, idps)
        v = np.maximum(1 - b ** 2, MIN_RESIDUAL_VARIANCE)
        mu = b * g[:, :, None]  # (snps, 3 genotypes, idps)
        table = np.zeros((n_snps, 4, 3 * n_idps + n_buckets))  # genotype 3: a missing call, no information
        table[:, :3, :n_idps] = mu / v
        table[:, :3, n_idps:2 * n_idps] = -mu ** 2 / (2 * v) - np.log(v) / 2
        table[:, :3, 2 * n_idps:3 * n_idps] = (1 - 1 / v) / 2
        table[np.arange(n_snps), :, 3 * n_idps + snp_bucket] = BUCKET_GAP
        self.register_buffer("snp_table", torch.as_tensor(table, dtype=torch.float32))
        self.register_buffer("token_table", torch.as_tensor(token_table, dtype=torch.long))
        self.register_buffer("idp_bucket", torch.as_tensor(idp_bucket, dtype=torch.long))
        self.register_buffer("edges", torch.as_tensor(edges, dtype=torch.float64))
        self.register_buffer("log_mean", torch.as_tensor(log_mean, dtype=torch.float64))
        self.register_buffer("log_sd", torch.as_tensor(log_sd, dtype=torch.float64))
        self.register_buffer("logit_scale", torch.zeros(1))  # exp(0) = 1: the logits are log-likelihood ratios as they are
        self.n_idps, self.n_buckets = n_idps, n_buckets
        self.dtype = torch.float32

    def encode_snps(self, snp: torch.Tensor, genotype_token: torch.Tensor) -> torch.Tensor:
        match = self.token_table[snp] == genotype_token[:, None]  # (B, 3): which genotype the token is
        genotype = torch.where(match.any(1), match.float().argmax(1), torch.full_like(snp, 3))
        return self.snp_table[snp, genotype]

    def idp_z(self, idp: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
        """The standardised log IDP value that a PLE vector encodes (bin and fraction, against the store's edges)."""
        position = ple.double().sum(1)
        n_bins = self.edges.shape[1] - 1
        bin_ = position.floor().long().clamp(0, n_bins - 1)
        low, high = self.edges[idp, bin_], self.edges[idp, bin_ + 1]
        value = low + (position - bin_) * (high - low)
        return (value.log() - self.log_mean[idp]) / self.log_sd[idp]

    def encode_idps(self, idp: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
        z = self.idp_z(idp, ple).float()
        rows = torch.arange(len(idp), device=idp.device)
        out = torch.zeros(len(idp), 3 * self.n_idps + self.n_buckets, device=idp.device)
        out[rows, idp] = z
        out[rows, self.n_idps + idp] = 1.0
        out[rows, 2 * self.n_idps + idp] = z ** 2
        out[rows, 3 * self.n_idps + self.idp_bucket[idp]] = 1.0
        return out

    def forward(self, batch: dict[str, torch.Tensor]):
        return (self.encode_snps(batch["snp"], batch["genotype_token"]), self.encode_idps(batch["idp"], batch["ple"]),
                self.logit_scale.exp())


def planted_truth_model(store: str | Path, cohort_dir: str | Path, *, effects: bool = True) -> PlantedTruthModel:
    """The ceiling (`effects`) or floor model of a pair store made from the simulated cohort `cohort_dir`."""
    store, truth = Path(store), Path(cohort_dir) / "truth"
    manifest = read_manifest(store)
    snps, idps, diseases = manifest["snps"], manifest["idps"], manifest["diseases"]
    subjects = pl.read_parquet(store / "subjects.parquet").filter(pl.col("split") == "train")
    values = read_table(Path(cohort_dir) / "idps.csv", columns=idps).join(subjects.select("eid"), on="eid")
    log_values = np.log(values.select(idps).to_numpy())
    log_mean, log_sd = log_values.mean(0), log_values.std(0)
    effect = np.zeros((len(snps), len(idps)))
    if effects:
        snp_index, idp_index = {s: i for i, s in enumerate(snps)}, {d: j for j, d in enumerate(idps)}
        planted = pl.read_parquet(truth / "snp_idp_effects.parquet")
        for snp, idp, size in planted.select("variant_id", "idp", "effect_sd").iter_rows():
            if snp in snp_index:  # the simulator's log volume is LOG_VOLUME_SCALE x its latent
                effect[snp_index[snp], idp_index[idp]] = LOG_VOLUME_SCALE * size / log_sd[idp_index[idp]]
    frequency = (pl.DataFrame({"variant_id": snps})
                 .join(pl.read_parquet(truth / "variants.parquet").select("variant_id", "ancestral_freq"),
                       on="variant_id", how="left", maintain_order="left")["ancestral_freq"].to_numpy())
    snp_bucket, idp_bucket = np.zeros(len(snps), np.int64), np.zeros(len(idps), np.int64)
    for d, bucket in manifest["buckets"].items():
        snp_bucket[[snps.index(s) for s in bucket["snps"]]] = diseases.index(d)
        idp_bucket[[idps.index(i) for i in bucket["idps"]]] = diseases.index(d)
    edges = np.array([manifest["ple_bin_edges"][i] for i in idps])
    return PlantedTruthModel(effect, frequency, np.asarray(manifest["snp_token_table"]), snp_bucket, idp_bucket,
                             edges, log_mean, log_sd)


def ceiling_metrics(run: Path, store: Path, cohort_dir: Path) -> tuple[dict, pl.DataFrame]:
    """The trained run's test metrics beside the floor and ceiling models' on the same test batches, and the
    ceiling model's per-row genotype log-probabilities (`test_retrievals.parquet`'s columns) for the association test.

    Share of lift = (model - floor) / (ceiling - floor): for within-bucket accuracy each model's floor is its own
    null (`within_bucket_accuracy_null`: its picks scored as if values were independent), for the loss the
    identity-only model's loss. NA where the ceiling has no lift (nothing planted among the candidates).
    """
    from comical.distributed.config import TrainConfig
    from comical.distributed.tasks.comical import ComicalTask, genotype_log_likelihoods, load_split
    from comical.distributed.train import evaluate

    config = TrainConfig.from_dict(json.loads((run / "run.json").read_text())["config"])
    info = json.loads((run / "model" / "model.json").read_text())["input"]
    trained = json.loads((run / "test_metrics.json").read_text())
    test = load_split(store, "test")
    task = ComicalTask().bind(info)
    ceiling_model = planted_truth_model(store, cohort_dir)
    ceiling = evaluate(ceiling_model, task, test, config, seed=config.seed)
    floor = evaluate(planted_truth_model(store, cohort_dir, effects=False), task, test, config, seed=config.seed)
    key, null = "within_bucket_accuracy", "within_bucket_accuracy_null"
    lift = ceiling[key] - ceiling[null]
    accuracy = {"model": trained[key], "model_null": trained[null], "chance": trained[f"{key}_chance"],
                "ceiling": ceiling[key], "ceiling_null": ceiling[null],
                "share_of_lift": (trained[key] - trained[null]) / lift if lift > 1e-9 else None}
    loss = {"model": trained["loss"], "floor": floor["loss"], "ceiling": ceiling["loss"],
            "share_of_lift": ((floor["loss"] - trained["loss"]) / (floor["loss"] - ceiling["loss"])
                              if floor["loss"] - ceiling["loss"] > 1e-9 else None)}
    dosage, log_p = genotype_log_likelihoods(ceiling_model, test, info, batch_size=config.eval_batch_size)
    rows = pl.DataFrame({k: test[k].numpy() for k in ("subject", "snp", "idp", "disease")}).with_columns(
        pl.Series("dosage", dosage.numpy()), *[pl.Series(f"log_p{g}", log_p[:, g].numpy()) for g in range(3)])
    return {key: accuracy, "loss": loss, "n_test_pairs": int(ceiling["n_pairs"])}, rows
