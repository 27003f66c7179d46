"""`comical train`: checks, the Ray Train fit, then the run folder's outputs.

    run/
      run.json, config.yaml     what ran (the resolved config) and its state: running, failed (with the error)
                                or done; only `done` is a finished run
      checkpoints/              Ray Train storage (one checkpoint per epoch; or --storage-path on a cluster)
      metrics.jsonl             one line per epoch: losses, accuracies, pairs/s
      tensorboard/              the same as TensorBoard events
      model/                    the best epoch's weights (safetensors) + model.json
      test_metrics.json         best model on the test split: bucket and within-bucket accuracy with their chance
                                and null levels, strict top-1, loss, n_test_pairs (every test row is scored)
      test_retrievals.parquet   per test row (subject, snp, idp, disease): strict top-1 hits, the allele-1
                                dosage and the model's log-probability of each genotype given the IDP input
                                (`comical associate` reads it)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from comical.data_io.errors import InputError
from comical.data_io.output_dir import RUN_FILE, check_output_dir, mark_run, write_atomic
from comical.distributed.config import TrainConfig
from comical.distributed.export import load_model, save_model
from comical.data_io.pair_store import expand_pairs
from comical.distributed.train import RUN_NAME, WEIGHTS, check_cluster_fits, check_train_inputs, evaluate, load_split, run_training


def train_and_evaluate(config: TrainConfig, out: str | Path, *, resume: bool = False, force: bool = False) -> dict:
    """Train (or resume) into `out`, keep the best epoch, evaluate it on the test split; returns test metrics."""
    out = Path(out).resolve()
    manifest = check_train_inputs(config)
    storage = Path(config.storage_path) if config.storage_path else out / "checkpoints"
    run = {"command": "train", "config": config.to_dict()}
    if resume:
        previous = out / RUN_FILE
        if not previous.is_file() or not list((storage / RUN_NAME).glob("checkpoint_*")):
            raise InputError(f"--resume: no checkpoint of a run in {out} ({storage / RUN_NAME}); start without --resume")
        if json.loads(previous.read_text()).get("config") != json.loads(json.dumps(run["config"])):
            raise InputError(f"--resume: {out} holds a run with another config; resume with the same settings")
    else:
        check_output_dir(out, run, force=force, inputs=(Path(config.pairs),))
        if out.exists():  # same run again or --force: start afresh, or Ray would resume the old checkpoints
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    mark_run(out, run, "running")
    write_atomic(out / "config.yaml", config.to_yaml())
    try:
        metrics = _train_and_evaluate(config, out, storage, manifest)
    except BaseException as err:  # Ctrl-C too: the folder must not look finished
        mark_run(out, run, "failed", err)
        raise
    mark_run(out, run, "done")
    return metrics


def _train_and_evaluate(config: TrainConfig, out: Path, storage: Path, manifest: dict) -> dict:
    from comical.distributed.ray_session import init_ray

    init_ray()
    check_cluster_fits(config, driver_cpus=0.0)
    result = run_training(config, storage)
    if result.error is not None:
        raise result.error
    epochs = sorted((metrics for _, metrics in result.best_checkpoints), key=lambda m: m["epoch"])
    checkpoints = {m["epoch"]: c for c, m in result.best_checkpoints}
    _write_epoch_logs(epochs, out)
    best = epochs[-1]["best_epoch"]
    with checkpoints[best].as_directory() as folder:
        from safetensors.torch import load_file

        save_model(out / "model", load_file(str(Path(folder) / WEIGHTS)), config.model, manifest)
    return evaluate_on_test(config, out, best_epoch=best)


def evaluate_on_test(config: TrainConfig, out: Path, *, best_epoch: int) -> dict:
    """The saved best model on the test split (driver side), plus the per-pair counts for `associate`."""
    device = torch.device("cuda" if config.engine.use_gpu and torch.cuda.is_available() else "cpu")
    model, info = load_model(out / "model", device=device)
    test = load_split(config.pairs, "test", device)
    metrics, rows = evaluate(model, test, config, info["n_bins"], seed=config.seed, pair_counts=True)
    metrics = {"best_epoch": best_epoch, **metrics, "n_test_pairs": metrics["n_pairs"]}
    dosage, log_p = genotype_log_likelihoods(model, test, info, batch_size=config.batch_size)
    table = pa.table({"subject": test["subject"].cpu().numpy(), "snp": test["snp"].cpu().numpy(),
                      "idp": test["idp"].cpu().numpy(), "disease": test["disease"].cpu().numpy(),
                      **{k: v.cpu().numpy().astype(np.float32) for k, v in rows.items()},
                      "dosage": dosage.numpy(), **{f"log_p{g}": log_p[:, g].numpy() for g in range(3)}})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    write_atomic(out / "test_retrievals.parquet", buffer.getvalue().to_pybytes())
    write_atomic(out / "test_metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


@torch.no_grad()
def genotype_log_likelihoods(model, data: dict[str, torch.Tensor], info: dict, *,
                             batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: its allele-1 dosage (0-2, -1 missing) and the model's log-probabilities of the three genotypes of
    its SNP given its IDP input (a softmax of the CLIP logits over the SNP's three genotype tokens).

    The pick never depends on the batch: every genotype of the SNP is a candidate, so the association test can
    permute genotypes across subjects (pipelines/associations.py).
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


def _write_epoch_logs(epochs: list[dict], out: Path) -> None:
    from tensorboardX import SummaryWriter

    lines = "".join(json.dumps({k: v for k, v in m.items() if not k.startswith("_")}) + "\n" for m in epochs)
    write_atomic(out / "metrics.jsonl", lines)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for m in epochs:
            for key, value in m.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "best_epoch"):
                    writer.add_scalar(key, value, m["epoch"])


def test_summary(m: dict) -> str:
    """Test metrics beside the level a model without genotype-IDP signal reaches."""
    return (f"test bucket accuracy {m['bucket_accuracy']:.3f} (chance {m['bucket_accuracy_chance']:.3f}; reachable "
            f"from identities alone), within-bucket accuracy {m['within_bucket_accuracy']:.4f} (chance "
            f"{m['within_bucket_accuracy_chance']:.4f}, null {m['within_bucket_accuracy_null']:.4f}), "
            f"{m['n_test_pairs']:,} test pairs")
