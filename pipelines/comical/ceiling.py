"""COMICAL's ceiling and floor on a simulated cohort: models that know the planted truth, scored by the same code.

`PlantedTruthModel` has the trained model's interface (`encode_snps`, `encode_idps`, `logit_scale`, `forward`), so
the engine's `evaluate` and `genotype_log_likelihoods` score it on the same test batches as the trained model:

- with the planted effects (the ceiling; strictly, a planted direct-effect reference): the logit of SNP input
  (s, g) against IDP input (j, x) is the Gaussian log-likelihood ratio log p(z | g) - log p(z) of the pair's
  planted direct effect, z the log IDP and g~ the allele count, each standardised over the store's training
  subjects: z | g ~ N(b g~, 1 - b^2), b the planted effect in SDs of the log IDP; 0 for an unplanted pair or a
  missing call. This is the contrastive critic log p(x, y) / (p(x) p(y)) of one pair (CLIP's loss is InfoNCE,
  whose optimum is that critic) given its planted direct effect alone. It ignores what else ties genotype to IDP
  (the disease each bucket's SNPs cause and that shrinks the bucket's regions, LD partners of planted SNPs,
  population shifts), so a trained model may exceed it a little; and it is the best critic, not the pick that
  maximises within-bucket accuracy. Scored, it gives the within-bucket accuracy and loss the planted effects allow.
  Its association test is not a ceiling for AUPRC: an unplanted pair's prediction ignores the IDP, so the test
  gives it p = 1 and the planted pairs rank first by construction. Its recall at FDR 5% is kept as the power the
  planted effects give on these test subjects; the AUPRC reference is a GWAS of the same pairs on the same test
  subjects.
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

BUCKET_GAP = 50.0  # logit added within the query's bucket: exp(-50) leaves nothing to other buckets
MIN_RESIDUAL_VARIANCE = 0.05  # 1 - b^2 floored: a planted effect never explains a whole IDP
SHARE_MIN_SE = 3.0  # a share of lift only where the ceiling's lift is this many standard errors above 0


class PlantedTruthModel(nn.Module):
    """Embeddings whose dot product is the planted critic (module docstring): for J IDPs and D buckets, a SNP input
    is [mu / v, -mu^2 / (2 v) - ln(v) / 2, (1 - 1 / v) / 2] over the J IDPs (mu = b (g - mean g), v = 1 - b^2 var g
    for the SNP's per-allele effect b on each IDP) then BUCKET_GAP at its bucket; an IDP input (j, z) is
    [z, 1, z^2] at j then 1 at its bucket."""

    def __init__(self, effect: np.ndarray, dosage_mean: np.ndarray, dosage_sd: np.ndarray, token_table: np.ndarray,
                 snp_bucket: np.ndarray, idp_bucket: np.ndarray, edges: np.ndarray, log_mean: np.ndarray,
                 log_sd: np.ndarray):
        super().__init__()
        n_snps, n_idps = effect.shape
        n_buckets = int(max(snp_bucket.max(), idp_bucket.max())) + 1
        g = np.arange(3)[None, :] - dosage_mean[:, None]  # allele counts centred on the training mean
        b = effect[:, None, :]  # (snps, 1, idps): per allele, in SDs of the log IDP
        v = np.maximum(1 - (b * dosage_sd[:, None, None]) ** 2, MIN_RESIDUAL_VARIANCE)
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
    from comical.data_io.cohort import load_cohort

    store, truth = Path(store), Path(cohort_dir) / "truth"
    manifest = read_manifest(store)
    snps, idps, diseases = manifest["snps"], manifest["idps"], manifest["diseases"]
    cohort = load_cohort(cohort_dir)
    train = set(pl.read_parquet(store / "subjects.parquet").filter(pl.col("split") == "train")["eid"])
    rows = np.flatnonzero(cohort.eids.is_in(list(train)).to_numpy())
    log_values = np.log(cohort.idps.select(idps).to_numpy()[rows])
    log_mean, log_sd = log_values.mean(0), log_values.std(0)
    bim = {v: i for i, v in enumerate(cohort.genotypes.variants["variant_id"])}
    dosage = cohort.genotypes.read(cohort.sample_index[rows], np.array([bim[s] for s in snps]))
    dosage[dosage < 0] = np.nan  # a missing call
    dosage_mean, dosage_sd = (np.nan_to_num(f(dosage, 0)) for f in (np.nanmean, np.nanstd))
    effect = np.zeros((len(snps), len(idps)))
    if effects:
        snp_index, idp_index = {s: i for i, s in enumerate(snps)}, {d: j for j, d in enumerate(idps)}
        planted = pl.read_parquet(truth / "snp_idp_effects.parquet").join(
            pl.read_parquet(truth / "variants.parquet").select("variant_id", "ancestral_freq"), on="variant_id")
        for snp, idp, size, f in planted.select("variant_id", "idp", "effect_sd", "ancestral_freq").iter_rows():
            if snp in snp_index:  # planted per SD of the count at the ancestral frequency, on the latent that is
                # 1 / LOG_VOLUME_SCALE of the log volume (data_io/simulate.py): here per allele, in SDs of log IDP
                effect[snp_index[snp], idp_index[idp]] = (LOG_VOLUME_SCALE * size / np.sqrt(2 * f * (1 - f))
                                                          / log_sd[idp_index[idp]])
    snp_bucket, idp_bucket = np.full(len(snps), -1), np.full(len(idps), -1)
    for d, bucket in manifest["buckets"].items():
        for index, names, members in ((snp_bucket, snps, bucket["snps"]), (idp_bucket, idps, bucket["idps"])):
            at = [names.index(n) for n in members]
            if (index[at] >= 0).any():  # the bucket term is one-hot: a SNP or IDP in two buckets breaks it
                raise ValueError(f"{store}: a SNP or IDP of bucket {d} is in another bucket too")
            index[at] = diseases.index(d)
    edges = np.array([manifest["ple_bin_edges"][i] for i in idps])
    return PlantedTruthModel(effect, dosage_mean, dosage_sd, np.asarray(manifest["snp_token_table"]),
                             snp_bucket.clip(min=0), idp_bucket.clip(min=0), edges, log_mean, log_sd)


def ceiling_metrics(run: Path, store: Path, cohort_dir: Path) -> tuple[dict, pl.DataFrame]:
    """The trained run's test metrics beside the floor and ceiling models' on the same test batches, and the
    ceiling model's per-row genotype log-probabilities (`test_retrievals.parquet`'s columns) for the association test.

    Within-bucket accuracy: each model's lift above its own null (`within_bucket_accuracy_null`: its picks scored as
    if values were independent) with its standard error over test rows clustered by subject, and the share of the ceiling's lift the run
    reaches, given only where the ceiling's lift is SHARE_MIN_SE standard errors above 0 (else None: the planted
    effects leave nothing measurable to this metric). Loss: the run's, the identity-only floor's and the ceiling's,
    and the share of the floor-to-ceiling gap the run closes (read it beside the gap in nats: a gap of a few
    thousandths of a nat makes the share swing).
    """
    from comical.distributed.config import TrainConfig
    from comical.distributed.tasks.comical import ComicalTask, genotype_log_likelihoods, load_split
    from comical.distributed.train import evaluate

    config = TrainConfig.from_dict(json.loads((run / "run.json").read_text())["config"])
    info = json.loads((run / "model" / "model.json").read_text())["input"]
    trained = json.loads((run / "test_metrics.json").read_text())
    rows = pl.read_parquet(run / "test_retrievals.parquet")
    test = load_split(store, "test")
    task = ComicalTask().bind(info)
    ceiling_model = planted_truth_model(store, cohort_dir)
    ceiling, ceiling_rows = evaluate(ceiling_model, task, test, config, seed=config.seed, row_outputs=True)
    floor = {"loss": identity_floor_loss(test, config)}
    key, null = "within_bucket_accuracy", "within_bucket_accuracy_null"
    lift = ceiling[key] - ceiling[null]
    lift_se = clustered_se(ceiling_rows["within_bucket_lift"].numpy(), test["subject"].numpy())
    model_lift = trained[key] - trained[null]
    accuracy = {"model": trained[key], "model_null": trained[null], "chance": trained[f"{key}_chance"],
                "model_lift": model_lift,
                "model_lift_se": clustered_se(rows["within_bucket_lift"].to_numpy(), rows["subject"].to_numpy())
                if "within_bucket_lift" in rows.columns else None,  # runs made before the per-row lift was kept
                "ceiling": ceiling[key], "ceiling_null": ceiling[null], "ceiling_lift": lift, "ceiling_lift_se": lift_se,
                "share_of_lift": model_lift / lift if lift_se and lift > SHARE_MIN_SE * lift_se else None}
    gap = floor["loss"] - ceiling["loss"]
    loss = {"model": trained["loss"], "floor": floor["loss"], "ceiling": ceiling["loss"], "ceiling_gap_nats": gap,
            "share_of_lift": (floor["loss"] - trained["loss"]) / gap if gap > 1e-9 else None}
    dosage, log_p = genotype_log_likelihoods(ceiling_model, test, info, batch_size=config.eval_batch_size)
    predictions = pl.DataFrame({k: test[k].numpy() for k in ("subject", "snp", "idp", "disease")}).with_columns(
        pl.Series("dosage", dosage.numpy()), *[pl.Series(f"log_p{g}", log_p[:, g].numpy()) for g in range(3)])
    return {key: accuracy, "loss": loss, "n_test_pairs": int(ceiling["n_pairs"])}, predictions


def clustered_se(values: np.ndarray, subjects: np.ndarray) -> float | None:
    """The standard error of the mean of per-row values, clustered by subject (the CR1 sandwich, as statsmodels'
    cluster-robust OLS on a constant): a test subject has a row per candidate pair, and its rows are not
    independent. None with fewer than two subjects."""
    groups, at = np.unique(subjects, return_inverse=True)
    if len(groups) < 2:
        return None
    sums = np.bincount(at, weights=values - values.mean(), minlength=len(groups))
    n, g = len(values), len(groups)
    return float(np.sqrt((sums ** 2).sum() * g / (g - 1)) / n)


def identity_floor_loss(test: dict[str, torch.Tensor], config) -> float:
    """The floor model's test loss without scoring it: its logits are its bucket term alone, so each query's loss
    is ln(the candidates of its bucket in its batch), both ways (`evaluate`'s batches, `eval_batches`)."""
    from comical.distributed.train import eval_batches

    total, count = 0.0, 0
    for rows, batch in eval_batches(test, config, config.seed):
        if rows is None:  # a padding step (several workers only)
            continue
        disease = batch["disease"].long()
        total += float(torch.log(torch.bincount(disease).double()[disease]).sum())
        count += len(disease)
    return total / max(count, 1)


def ceiling_power(ceiling_table: pl.DataFrame, planted: pl.DataFrame) -> dict:
    """The ceiling's association test (`pair_associations` of its predictions) against the planted pairs: how many
    it calls at FDR 5% and its recall, the power the planted effects give on the test subjects. No AUPRC: the test
    gives unplanted pairs p = 1 by construction (module docstring)."""
    calls = ceiling_table.filter(pl.col("p_adjusted") < 0.05)
    effects = planted.select(pl.col("variant_id").alias("snp"), "idp").unique()
    tested = ceiling_table.select("snp", "idp").unique().join(effects, on=["snp", "idp"])
    found = calls.select("snp", "idp").unique().join(effects, on=["snp", "idp"])
    return {"n_discoveries_fdr05": calls.select("snp", "idp").unique().height, "n_planted": tested.height,
            "recall_at_fdr05": found.height / tested.height if tested.height else None}
