"""Training with Ray Train: a worker function (model, data shard, engine, epochs, report) and a driver.

    comical train --pairs pairs/ --out run/ --workers 2 --zero-stage 2

Data path: Ray Data streams the pair store's Parquet shards into the workers (`get_dataset_shard`); each worker
pulls its shard once and keeps it as tensors on its device (16 bytes a pair), then every epoch shuffles, slices
minibatches and expands PLE vectors there. Minibatches never come from Ray Data one by one: that path is
~10x slower than the model step on a GPU.

Checkpoints (Ray Train + DeepSpeed protocol): every epoch each rank saves its engine state into its own temp
folder, rank 0 adds the full weights as safetensors, and every rank reports; Ray merges them into one checkpoint
in the run's storage. A restarted run (FailureConfig retry, or `--resume`) continues after the last finished
epoch. The driver then keeps the best epoch by validation (Algorithm 1 step 7) and evaluates it on the test split.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from comical.data_io.errors import InputError
from comical.data_io.pair_store import PAIR_SCHEMA, expand_pairs, read_manifest
from comical.distributed.config import TrainConfig
from comical.distributed.losses import clip_loss, input_keys
from comical.distributed.metrics import METRICS, ROW_OUTPUTS, retrieval_metrics
from comical.distributed.models import ContrastiveModel, ModelConfig, build_comical_model

RUN_NAME = "comical-train"
# The best epoch (and Tune's objective) minimises the validation loss: it uses every query, and bucket membership
# alone cannot take it below the bucket floor (ln of the bucket's share of the batch), whereas the paper's bucket
# accuracy saturates at 1.0 from identities alone; within-bucket accuracy sits near its null and is too noisy
# to pick an epoch with.
SELECTION_METRIC = "loss"
WEIGHTS = "model.safetensors"
_COLUMNS = [f.name for f in PAIR_SCHEMA]


def build_model(config: ModelConfig, manifest: dict) -> ContrastiveModel:
    """The COMICAL model sized by a pair store's manifest."""
    return build_comical_model(config, n_snps=len(manifest["snps"]), n_tokens=len(manifest["vocabulary"]),
                               n_idps=len(manifest["idps"]), n_bins=manifest["n_bins"])


# ---------------------------------------------------------------- worker


def train_loop_per_worker(config_dict: dict) -> None:
    """One Ray Train worker: pull the shard, build model and engine, resume, train, validate, checkpoint."""
    import ray.train
    import ray.train.torch

    config = TrainConfig.from_dict(config_dict)
    context = ray.train.get_context()  # Ray: rank, world size, device
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    manifest = read_manifest(config.pairs)
    train = _pull_shard(ray.train.get_dataset_shard("train"), device)  # Ray Data -> device tensors, once
    val = _pull_shard(ray.train.get_dataset_shard("val"), device)

    from comical.distributed.engine import make_engine

    engine = make_engine(build_model(config.model, manifest), config, world, device)
    start_epoch, best = 0, None
    checkpoint = ray.train.get_checkpoint()  # Ray: set when this run restarts after a failure or --resume
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = engine.load(Path(folder))
        start_epoch, best = state["epoch"] + 1, state.get("best")

    steps = _common_steps(len(train["snp"]) // config.worker_batch_size, device)
    for epoch in range(start_epoch, config.epochs):
        train_loss, seconds = _train_epoch(engine, train, steps, epoch, rank, world, config, manifest["n_bins"])
        # the same validation batches every epoch, so epochs differ only by the model
        val_metrics = evaluate(engine, val, config, manifest["n_bins"], world=world, seed=config.seed)
        metrics = {"epoch": epoch, "epochs_done": epoch + 1, "train_loss": train_loss, "pairs_per_s": steps * config.batch_size / seconds,
                   "epoch_seconds": seconds, **{f"val_{k}": v for k, v in val_metrics.items()}}
        score = [-metrics[f"val_{SELECTION_METRIC}"]]
        if best is None or score > best["score"]:
            best = {"epoch": epoch, "score": score}
        metrics["best_epoch"] = best["epoch"]
        weights = engine.full_state_dict()  # a collective under ZeRO-3: every rank calls it
        with tempfile.TemporaryDirectory() as folder:  # Ray: every rank saves its part, then reports
            engine.save(Path(folder), {"epoch": epoch, "best": best})
            if rank == 0:
                from safetensors.torch import save_file

                save_file(weights, str(Path(folder) / WEIGHTS))
                (Path(folder) / "metrics.json").write_text(json.dumps(metrics))
                print(f"epoch {epoch}: train loss {train_loss:.4f}, val loss {metrics['val_loss']:.4f}, val "
                      f"within-bucket accuracy {metrics['val_within_bucket_accuracy']:.4f} (null "
                      f"{metrics['val_within_bucket_accuracy_null']:.4f}), {metrics['pairs_per_s']:,.0f} pairs/s",
                      flush=True)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _pull_shard(shard, device: torch.device) -> dict[str, torch.Tensor]:
    """A worker's whole shard as device tensors (Ray Data streams it in large blocks, once).

    Rows are put in a canonical order (subject, disease, snp, idp), so the seeded shuffles that follow do not
    depend on the order in which Ray Data delivered the blocks: the same seed gives the same run.
    """
    parts = {c: [] for c in _COLUMNS}
    for batch in shard.iter_batches(batch_size=1 << 20, batch_format="numpy"):
        for c in _COLUMNS:
            parts[c].append(batch[c])
    columns = {c: np.concatenate(v) if v else np.empty(0, PAIR_SCHEMA.field(c).type.to_pandas_dtype())
               for c, v in parts.items()}
    order = np.lexsort([columns[c] for c in ("idp", "snp", "disease", "subject")])
    return {c: torch.from_numpy(v[order]).to(device) for c, v in columns.items()}


def _common_steps(steps: int, device: torch.device, op: str = "min") -> int:
    """Shards differ by a few rows; every rank must take the same number of steps (collectives)."""
    if not dist.is_initialized():
        return steps
    value = torch.tensor([steps], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return int(value.item())


def _train_epoch(engine, data, steps: int, epoch: int, rank: int, world: int, config: TrainConfig,
                 n_bins: int) -> tuple[float, float]:
    """One pass over the shard: shuffle on the device, slice minibatches, step. Returns (mean loss, seconds)."""
    engine.train(True)
    n = len(data["snp"])
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 101 + rank)
    order = torch.randperm(n, generator=generator).to(data["snp"].device)
    gather = config.engine.gather_negatives and world > 1
    total = torch.zeros((), device=data["snp"].device)
    start = time.perf_counter()
    size = config.worker_batch_size
    for step in range(steps):
        rows = order[step * size:(step + 1) * size]
        batch = {k: v[rows] for k, v in data.items()}
        inputs = expand_pairs(batch, n_bins)
        inputs["ple"] = inputs["ple"].to(engine.dtype)
        snp, idp, scale = engine(inputs)  # forward
        snp_key, idp_key = input_keys(batch) if config.targets == "soft" else (None, None)
        loss = clip_loss(snp.float(), idp.float(), scale.float(), targets=config.targets, snp_key=snp_key,
                         idp_key=idp_key, rank=rank if gather else 0, world_size=world if gather else 1)
        engine.backward(loss)  # the engine averages gradients over workers: the concatenated batch's gradient
        engine.step()
        total += loss.detach()
    if world > 1:  # each worker's loss is its share; their mean is the batch loss
        dist.all_reduce(total)
        total /= world
    seconds = time.perf_counter() - start
    return float(total.item()) / max(steps, 1), seconds


@torch.no_grad()
def evaluate(model, data: dict[str, torch.Tensor], config: TrainConfig, n_bins: int, *, world: int = 1,
             seed: int = 0, pair_counts: bool = False):
    """Mean loss and retrieval metrics over batches of `batch_size` pairs drawn in a seeded order.

    Every row is scored, the last partial batch too (its metrics' chance levels are its own). Each worker scores
    batches of its own shard (no gathered negatives), so a metric means the same for any number of workers; their
    sums are all-reduced. With `pair_counts`, also the per-row within-bucket outcomes (metrics.ROW_OUTPUTS).
    """
    if hasattr(model, "train"):
        model.train(False)
    n = len(data["snp"])
    device = data["snp"].device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    own_steps = -(-n // config.batch_size)
    steps = _common_steps(own_steps, device, op="max")  # ZeRO-3's forward is a collective: same count on all ranks
    sums = torch.zeros(len(METRICS) + 2, device=device, dtype=torch.float64)  # metrics, loss sum, queries
    outputs = {k: torch.zeros(n, device=device) for k in ROW_OUTPUTS}
    dtype = getattr(model, "dtype", torch.float32)
    for step in range(steps):
        rows = order[step * config.batch_size:(step + 1) * config.batch_size] if step < own_steps else order[:2]
        batch = {k: v[rows] for k, v in data.items()}
        inputs = expand_pairs(batch, n_bins)
        inputs["ple"] = inputs["ple"].to(dtype)
        snp, idp, scale = model(inputs)
        if step >= own_steps:  # this rank's shard is done: the forward only keeps ZeRO-3 in step
            continue
        snp, idp = snp.float(), idp.float()
        snp_key, idp_key = input_keys(batch)
        loss = clip_loss(snp, idp, scale.float(), targets=config.targets, snp_key=snp_key, idp_key=idp_key)
        values, per_row = retrieval_metrics(scale.float() * snp @ idp.T, batch["disease"], snp_key, idp_key,
                                            batch["snp"], batch["idp"])
        sums[:len(METRICS)] += torch.stack([values[m].double() for m in METRICS])
        sums[-2] += loss.double() * len(rows)
        sums[-1] += len(rows)
        for k in ROW_OUTPUTS:
            outputs[k][rows] = per_row[k]
    if world > 1:
        dist.all_reduce(sums)
    queries = max(float(sums[-1]), 1.0)
    metrics = {m: float(sums[i]) / (2 * queries) for i, m in enumerate(METRICS)}
    metrics["loss"] = float(sums[-2]) / queries
    metrics["n_pairs"] = int(sums[-1])
    return (metrics, outputs) if pair_counts else metrics


# ---------------------------------------------------------------- driver


def check_cluster_fits(config: TrainConfig, driver_cpus: float = 0.5) -> None:
    """More workers than the Ray cluster can ever hold would wait forever: refuse up front.

    `driver_cpus` leaves room for a Tune trial's own driver (and Ray Data's reads) beside the workers.
    """
    import ray

    have = ray.cluster_resources()
    need_cpu = config.engine.workers * config.engine.cpus_per_worker + driver_cpus
    need_gpu = config.engine.workers if config.engine.use_gpu else 0
    if need_cpu > have.get("CPU", 0) or need_gpu > have.get("GPU", 0):
        raise InputError(f"{config.engine.workers} workers need {need_cpu:g} CPUs and {need_gpu} GPUs; the Ray "
                         f"cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs")


def check_train_inputs(config: TrainConfig) -> dict:
    """Everything that can be checked before Ray starts; returns the store's manifest."""
    manifest = read_manifest(config.pairs)
    for split in ("train", "val"):
        if not list((Path(config.pairs) / split).glob("*.parquet")):
            raise InputError(f"{config.pairs}: no {split}/*.parquet; not a complete pair store")
    share = manifest["splits"]["train"]["pairs"] // config.engine.workers
    if config.worker_batch_size > share:
        raise InputError(f"--batch-size {config.batch_size}: each of {config.engine.workers} workers would need "
                         f"{config.worker_batch_size} training pairs a step but holds about {share} "
                         f"({manifest['splits']['train']['pairs']} in {config.pairs}/train); lower --batch-size")
    if config.engine.precision == "bf16" and not config.engine.use_gpu and not cpu_supports_bf16():
        raise InputError("--precision bf16 on CPU needs avx512_bf16 or amx_bf16, which this CPU lacks; use fp32")
    return manifest


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_training(config: TrainConfig, storage: Path, *, name: str = RUN_NAME, callbacks: tuple = ()):
    """Build the TorchTrainer over the pair store and fit it; returns Ray's Result.

    `comical train` and every Tune trial call this same driver (a trial passes its own run name and Tune's
    report callback).
    """
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from comical.data_io.pair_store import pair_dataset

    resources = {"CPU": config.engine.cpus_per_worker, **({"GPU": 1} if config.engine.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.to_dict(),
        scaling_config=ray.train.ScalingConfig(num_workers=config.engine.workers, use_gpu=config.engine.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage), callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=config.engine.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None)),
        datasets={"train": pair_dataset(config.pairs, "train"), "val": pair_dataset(config.pairs, "val")},
        # Deterministic block-to-worker assignment: with the canonical row order in `_pull_shard`, a seed
        # fixes the run (and a restarted worker gets the same shard back).
        dataset_config=ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )
    return trainer.fit()


def load_split(store: str | Path, split: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A whole split as tensors, read with pyarrow (the driver's path; workers use Ray Data)."""
    table = pq.read_table(Path(store) / split, schema=PAIR_SCHEMA)
    return {c: torch.from_numpy(table.column(c).to_numpy()).to(device) for c in _COLUMNS}
