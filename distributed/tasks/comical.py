"""COMICAL (paper 000) as a task: SNP-IDP pairs from a pair store, held resident on each worker's device.

Worker-side code: imports only torch, numpy, pyarrow and ray at import time (the GPU image has no polars).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from comical.data_io.errors import InputError
from comical.data_io.output_dir import write_atomic
from comical.data_io.pair_store import PAIR_SCHEMA, expand_pairs, read_manifest
from comical.distributed.losses import LOSSES, input_keys
from comical.distributed.metrics import retrieval_metrics
from comical.distributed.models import ModelConfig, build_comical_model
from comical.distributed.task import RESIDENT, Task

# What model.json keeps of the store's manifest: sizes, vocabularies and bin edges (the frozen encoders' input spec).
_INFO_KEYS = ("n_bins", "snps", "idps", "vocabulary", "snp_token_table", "ple_bin_edges", "diseases", "buckets")


class ComicalTask(Task):
    name = "comical"
    model_config = ModelConfig
    input_path = RESIDENT  # 16 bytes a pair: a worker's whole shard fits on its device (docs/engine.md)
    columns = tuple(f.name for f in PAIR_SCHEMA)
    # Rows in a canonical order, so the seeded shuffles do not depend on the order Ray Data delivered the blocks.
    row_order = ("subject", "disease", "snp", "idp")
    # The best epoch (and Tune's objective) minimises the validation loss: it uses every query, and bucket
    # membership alone cannot take it below the bucket floor (ln of the bucket's share of the batch), whereas the
    # paper's bucket accuracy saturates at 1.0 from identities alone; within-bucket accuracy sits near its null
    # and is too noisy to pick an epoch with.
    selection_metric = "loss"

    def check_inputs(self, config) -> dict:
        manifest = read_manifest(config.data)
        for split in ("train", "val"):
            if not list((Path(config.data) / split).glob("*.parquet")):
                raise InputError(f"{config.data}: no {split}/*.parquet; not a complete pair store")
        share = manifest["splits"]["train"]["pairs"] // config.engine.workers
        if config.worker_batch_size > share:
            raise InputError(f"--batch-size {config.batch_size}: each of {config.engine.workers} workers would need "
                             f"{config.worker_batch_size} training pairs a step but holds about {share} "
                             f"({manifest['splits']['train']['pairs']} in {config.data}/train); lower --batch-size")
        return {k: manifest[k] for k in _INFO_KEYS}

    def read_split(self, data: str, split: str) -> dict:
        table = pq.read_table(f"{data}/{split}", schema=PAIR_SCHEMA)  # a local path, NFS, or s3:// / gs:// URI
        return {c: table.column(c).to_numpy() for c in self.columns}

    def build_model(self, model_config: ModelConfig, info: dict):
        return build_comical_model(model_config, n_snps=len(info["snps"]), n_tokens=len(info["vocabulary"]),
                                   n_idps=len(info["idps"]), n_bins=info["n_bins"],
                                   snp_token_table=info["snp_token_table"])

    def prepare(self, batch: dict, dtype: torch.dtype) -> dict:
        inputs = expand_pairs(batch, self.info["n_bins"])
        inputs["ple"] = inputs["ple"].to(dtype)
        return inputs

    def loss(self, outputs, batch: dict, config, *, rank: int, world_size: int) -> torch.Tensor:
        snp, idp, scale = outputs
        snp_key, idp_key = input_keys(batch) if config.model.targets == "soft" else (None, None)
        return LOSSES[config.model.targets](snp.float(), idp.float(), scale.float(), a_key=snp_key, b_key=idp_key,
                                            rank=rank, world_size=world_size)

    def batch_metrics(self, outputs, batch: dict):
        snp, idp, scale = (x.float() for x in outputs)
        snp_key, idp_key = input_keys(batch)
        sums, rows = retrieval_metrics(scale * snp @ idp.T, batch["disease"], snp_key, idp_key, batch["snp"],
                                       batch["idp"])
        return {k: v / 2 for k, v in sums.items()}, rows  # each row is queried both ways

    def epoch_line(self, m: dict) -> str:
        return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}, val "
                f"within-bucket accuracy {m['val_within_bucket_accuracy']:.4f} (null "
                f"{m['val_within_bucket_accuracy_null']:.4f}), {m['samples_per_s']:,.0f} pairs/s")

    def test(self, model, info: dict, config, out: Path) -> dict:
        """The best model on the test split (every row scored), plus the per-pair rows `comical associate` reads."""
        from comical.distributed.train import evaluate

        device = next(model.parameters()).device
        test = load_split(config.data, "test", device)
        metrics, rows = evaluate(model, self.bind(info), test, config, seed=config.seed, row_outputs=True)
        metrics = {**metrics, "n_test_pairs": metrics["n_pairs"]}
        dosage, log_p = genotype_log_likelihoods(model, test, info, batch_size=config.eval_batch_size)
        table = pa.table({"subject": test["subject"].cpu().numpy(), "snp": test["snp"].cpu().numpy(),
                          "idp": test["idp"].cpu().numpy(), "disease": test["disease"].cpu().numpy(),
                          **{k: v.cpu().numpy().astype(np.float32) for k, v in rows.items()},
                          "dosage": dosage.numpy(), **{f"log_p{g}": log_p[:, g].numpy() for g in range(3)}})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer, compression="zstd")
        write_atomic(out / "test_retrievals.parquet", buffer.getvalue().to_pybytes())
        return metrics

    def summary(self, m: dict) -> str:
        """Test metrics beside the level a model without genotype-IDP signal reaches."""
        return (f"test bucket accuracy {m['bucket_accuracy']:.3f} (chance {m['bucket_accuracy_chance']:.3f}; "
                f"reachable from identities alone), within-bucket accuracy {m['within_bucket_accuracy']:.4f} (chance "
                f"{m['within_bucket_accuracy_chance']:.4f}, null {m['within_bucket_accuracy_null']:.4f}), "
                f"{m['n_test_pairs']:,} test pairs")


def load_split(store: str | Path, split: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A whole split as tensors, in the store's row order."""
    columns = ComicalTask().read_split(str(store), split)
    return {c: torch.from_numpy(v.copy()).to(device) for c, v in columns.items()}


@torch.no_grad()
def genotype_log_likelihoods(model, data: dict[str, torch.Tensor], info: dict, *,
                             batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: its allele-1 dosage (0-2, -1 missing) and the model's log-probabilities of the three genotypes of
    its SNP given its IDP input (a softmax of the CLIP logits over the SNP's three genotype tokens).

    The pick never depends on the batch: every genotype of the SNP is a candidate, so the association test can
    permute genotypes across subjects (pipelines/comical/associations.py).
    """
    table = torch.as_tensor(info["snp_token_table"], dtype=torch.long)  # snp -> token of 0, 1, 2 copies
    n_snps = len(table)
    device = data["snp"].device
    snp_ids = torch.arange(n_snps).repeat_interleave(3).to(device)
    genotypes = model.encode_snps(snp_ids, table.reshape(-1).to(device)).float().reshape(n_snps, 3, -1)
    scale = model.logit_scale.clamp(max=np.log(100)).exp().float()
    log_p = torch.empty(len(data["snp"]), 3)
    dtype = getattr(model, "dtype", torch.float32)
    for start in range(0, len(data["snp"]), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in data.items()}
        inputs = expand_pairs(batch, info["n_bins"])
        idp = model.encode_idps(inputs["idp"], inputs["ple"].to(dtype)).float()
        logits = scale * torch.einsum("bgd,bd->bg", genotypes[inputs["snp"]], idp)
        log_p[start:start + batch_size] = torch.log_softmax(logits, dim=1).cpu()
    token = data["genotype_token"].long().cpu()
    dosage = torch.full_like(token, -1)
    for g in range(3):
        dosage[token == table[data["snp"].long().cpu(), g]] = g
    dosage[token == 0] = -1  # token 0 is the missing call
    return dosage.to(torch.int8), log_p
