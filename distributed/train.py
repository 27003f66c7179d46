"""The training engine: one Ray Train worker loop and one driver for every task (distributed/task.py).

    comical train --pairs pairs/ --out run/ --workers 2 --zero-stage 2

Input paths (the task chooses): `resident`: each worker reads its shard once (pyarrow, the task's `read_split`)
and keeps it as tensors on its device, then every epoch shuffles and slices minibatches there (minibatches from
Ray Data one by one are ~10x slower than COMICAL's model step on a GPU; BENCHMARKS.md). These reads bypass Ray
Data's scheduler on purpose: it budgets reads through an autoscaling coordinator, and a Train run that Tune stops
leaves its resource request there for 180 s, so on a small machine the next trial's reads got no CPU and the
sweep hung without an error (issue 21). A one-off read of a small store needs no scheduler. `streamed`: Ray Data
`iter_torch_batches` with prefetching and a local shuffle buffer, re-read every epoch (for data that does not fit,
such as image volumes); Ray Train splits each dataset into equal shards, so every worker takes the same number of
steps (the collectives need it).

Checkpoints (Ray Train + DeepSpeed protocol): every epoch each rank saves its engine state into its own temp
folder, rank 0 adds the full weights as safetensors, and every rank reports; Ray merges them into one checkpoint
in the run's storage. A restarted run (FailureConfig retry, or `--resume`) continues after the last finished
epoch. The best epoch minimises the task's validation metric (Algorithm 1 step 7).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ray.train import UserCallback

from comical.data_io.errors import InputError, RunFailed
from comical.distributed.config import TrainConfig
from comical.distributed.task import RESIDENT, STREAMED, Task, get_task
from comical.distributed.watchdog import STALL_FILE, Watchdog, cluster_free, read_stall

RUN_NAME = "comical-train"
WEIGHTS = "model.safetensors"
PROGRESS_SECONDS = 30.0  # rank 0 prints progress inside an epoch at most this often
REPORT_POLL_SECONDS = 0.25  # how often Ray Train's controller collects reports (its default: 2 s; see run_training)
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"


# ---------------------------------------------------------------- worker


def train_loop_per_worker(config_dict: dict) -> None:
    """One Ray Train worker: build model and engine, resume, then per epoch train, validate, checkpoint, report."""
    import ray.train
    import ray.train.torch

    config = TrainConfig.from_dict(config_dict["config"])
    task = get_task(config.task).bind(config_dict["info"])
    context = ray.train.get_context()  # Ray: rank, world size, device
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    os.environ.setdefault("DS_ACCELERATOR", device.type if device.type == "cuda" else "cpu")  # DeepSpeed: no probing
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    watchdog = Watchdog(config.engine.stall_seconds, rank, config_dict.get("stall_file"))
    watchdog.tick("its resident shards to be read" if task.input_path == RESIDENT else "its Ray Data shards")
    train, val = (_input(task, config, split, rank, world, device) for split in ("train", "val"))
    watchdog.tick("its model and engine to be built (DeepSpeed/DDP setup waits for every worker)")

    from comical.distributed.engine import make_engine

    # the run's optimizer steps (a cosine schedule ends at the last): streamed tasks say how many training rows
    rows = len(next(iter(train.values()))) * world if task.input_path == RESIDENT else task.n_train()
    total_steps = rows // config.batch_size * config.epochs if rows else None
    engine = make_engine(task.build_model(config.model, task.info), config, world, device, total_steps)
    start_epoch, best = 0, None
    checkpoint = ray.train.get_checkpoint()  # Ray: set when this run restarts after a failure or --resume
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = engine.load(Path(folder))
        start_epoch, best = state["epoch"] + 1, state.get("best")

    for epoch in range(start_epoch, config.epochs):
        train_loss, samples, seconds = _train_epoch(engine, task, train, epoch, rank, world, config, watchdog)
        task.before_validation(engine.module)
        # the same validation batches every epoch, so epochs differ only by the model
        val_metrics = evaluate(engine, task, val, config, world=world, seed=config.seed, watchdog=watchdog)
        val_metrics |= task.after_validation(engine.module, val_metrics)
        metrics = {"epoch": epoch, "epochs_done": epoch + 1, "train_loss": train_loss,
                   "samples_per_s": samples / seconds, "epoch_seconds": seconds,
                   **{f"val_{k}": v for k, v in val_metrics.items()}}
        score = [-metrics[f"val_{task.selection_metric}"]]
        if best is None or score > best["score"]:
            best = {"epoch": epoch, "score": score}
        metrics["best_epoch"] = best["epoch"]
        watchdog.tick(f"epoch {epoch}'s checkpoint to be saved and reported (Ray Train waits for every worker)")
        weights = engine.full_state_dict()  # a collective under ZeRO-3: every rank calls it
        with tempfile.TemporaryDirectory() as folder:  # Ray: every rank saves its part, then reports
            engine.save(Path(folder), {"epoch": epoch, "best": best})
            if rank == 0:
                from safetensors.torch import save_file

                save_file(weights, str(Path(folder) / WEIGHTS))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    watchdog.close()


def _input(task: Task, config: TrainConfig, split: str, rank: int, world: int, device: torch.device):
    """A worker's split: its resident shard as device tensors, or its Ray Data shard (streamed)."""
    import ray.train

    if task.input_path != RESIDENT:
        return ray.train.get_dataset_shard(split)
    return resident_shard(task.read_split(config.data, split), task.row_order or task.columns, rank, world, device)


def resident_shard(columns: dict[str, np.ndarray], row_order, rank: int, world: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Worker `rank`'s rows: every world-th row in canonical order (sorted by `row_order`), on `device`.

    The canonical order makes the shard, and the seeded shuffles that follow, independent of file and row-group
    layout: the same seed gives the same run, and a restarted worker gets the same shard back. Striding (not
    contiguous slices) gives every worker rows of every subject, so its batches look like the whole split's.
    """
    mine = np.lexsort([columns[c] for c in reversed(row_order)])[rank::world]
    return {c: torch.from_numpy(v[mine]).to(device) for c, v in columns.items()}


def _common_steps(steps: int, device: torch.device, op: str = "min") -> int:
    """Shards differ by a few rows; every rank must take the same number of steps (collectives)."""
    if not dist.is_initialized():
        return steps
    value = torch.tensor([steps], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return int(value.item())


def _train_batches(data, epoch: int, rank: int, config: TrainConfig, device: torch.device, task: Task):
    """This epoch's training minibatches of `worker_batch_size` rows, shuffled by the seed, epoch and rank."""
    seed = config.seed * 1_000_003 + epoch * 101 + rank
    size = config.worker_batch_size
    if isinstance(data, dict):  # resident: the task's permutation (seeded) on the device, sliced
        n = len(next(iter(data.values())))
        order = task.shuffle(data, size, torch.Generator().manual_seed(seed)).to(device)
        for step in range(_common_steps(n // size, device)):
            rows = order[step * size:(step + 1) * size]
            yield {k: v[rows] for k, v in data.items()}
        return
    # streamed: Ray Data reads, prefetches and shuffles within a buffer of a few batches on this worker
    yield from data.iter_torch_batches(batch_size=size, drop_last=True, prefetch_batches=2, device=device,
                                       local_shuffle_buffer_size=4 * size, local_shuffle_seed=seed)


def _train_epoch(engine, task: Task, data, epoch: int, rank: int, world: int, config: TrainConfig,
                 watchdog: Watchdog) -> tuple[float, int, float]:
    """One pass over the shard. Returns (mean loss over the concatenated batches, samples, seconds)."""
    engine.train(True)
    device = engine.device
    gather = config.engine.gather_negatives and world > 1
    total = torch.zeros((), device=device)
    steps, start = 0, time.perf_counter()
    shown = start
    source = "" if isinstance(data, dict) else " from Ray Data"
    watchdog.tick(f"its first train batch{source} of epoch {epoch}")
    for batch in _train_batches(data, epoch, rank, config, device, task):
        watchdog.tick(f"training step {steps + 1} of epoch {epoch} to finish (its gradient all-reduce waits for "
                      f"every worker)")
        outputs = engine(task.prepare(batch, engine.dtype))  # forward
        loss = task.loss(outputs, batch, config, rank=rank if gather else 0, world_size=world if gather else 1)
        engine.backward(loss)  # the engine averages gradients over workers: the concatenated batch's gradient
        engine.step()
        task.after_step(engine.module)
        total += loss.detach()
        steps += 1
        watchdog.tick(f"its next train batch{source} (epoch {epoch}, after step {steps})")
        if rank == 0 and time.perf_counter() - shown > PROGRESS_SECONDS:  # time only: no host sync
            shown = time.perf_counter()
            print(f"epoch {epoch}: step {steps}, {steps * config.batch_size / (shown - start):,.0f} samples/s",
                  flush=True)
    if world > 1:  # each worker's loss is its share; their mean is the batch loss
        dist.all_reduce(total)
        total /= world
    seconds = time.perf_counter() - start
    return float(total.item()) / max(steps, 1), steps * config.batch_size, seconds


@torch.no_grad()
def evaluate(model, task: Task, data, config: TrainConfig, *, world: int = 1, seed: int = 0,
             row_outputs: bool = False, watchdog: Watchdog | None = None):
    """Mean loss and the task's metrics over batches of `eval_batch_size` rows, every row scored.

    Resident data (a dict of tensors) is scored in a seeded order, the last partial batch too; streamed data (a Ray
    Data shard) in its order. Each worker scores batches of its own shard (no gathered negatives), so a metric
    means the same for any number of workers; their sums are all-reduced. With `row_outputs` (resident data only),
    also the task's per-row outputs in the data's row order.
    """
    if hasattr(model, "train"):
        model.train(False)
    dtype = getattr(model, "dtype", torch.float32)
    sums: dict[str, torch.Tensor] = {}
    rows_out: dict[str, torch.Tensor] = {}
    loss_sum, count = 0.0, 0
    tick = watchdog.tick if watchdog is not None else lambda waiting_for: None
    tick("its first validation batch")
    for step, (rows, batch) in enumerate(eval_batches(data, config, seed)):
        tick(f"validation batch {step + 1} to be scored and the next to arrive")
        chunks = None  # ZeRO-3: every rank runs as many chunked forwards as the rank that runs most
        if task.eval_chunk is not None and world > 1 and config.engine.zero_stage == 3:
            chunks = _common_steps(task.eval_chunks(batch), getattr(model, "device", None) or torch.device("cpu"),
                                   op="max")
        outputs = task.eval_outputs(model, batch, dtype, chunks)
        if rows is None:  # this rank's shard is done: the forward only keeps ZeRO-3's collectives in step
            continue
        n = len(next(iter(batch.values())))
        loss_sum = loss_sum + task.loss(outputs, batch, config, rank=0, world_size=1).double() * n
        count += n
        values, per_row = task.batch_metrics(outputs, batch)
        for k, v in values.items():
            sums[k] = sums.get(k, 0) + v.double()
        if row_outputs:
            for k, v in per_row.items():
                if k not in rows_out:
                    rows_out[k] = torch.zeros(len(next(iter(data.values()))), device=v.device)
                rows_out[k][rows] = v
    names = sorted(sums)
    device = getattr(model, "device", None) or next(iter(sums.values()), torch.zeros(())).device
    totals = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device) for k in names]
                         + [torch.as_tensor(loss_sum, dtype=torch.float64, device=device),
                            torch.tensor(float(count), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(totals)
    queries = max(float(totals[-1]), 1.0)
    metrics = {k: float(totals[i]) / queries for i, k in enumerate(names)}
    metrics["loss"] = float(totals[-2]) / queries
    metrics["n_pairs"] = int(totals[-1])
    return (metrics, rows_out) if row_outputs else metrics


def eval_batches(data, config: TrainConfig, seed: int):
    """(row indices or None for a padding step, batch) over every row of the split."""
    size = config.eval_batch_size
    if not isinstance(data, dict):
        for batch in data.iter_torch_batches(batch_size=size, prefetch_batches=2):
            yield (), batch
        return
    first = next(iter(data.values()))
    n, device = len(first), first.device
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    own_steps = -(-n // size)
    steps = _common_steps(own_steps, device, op="max")  # ZeRO-3's forward is a collective: same count on all ranks
    for step in range(steps):
        rows = order[step * size:(step + 1) * size] if step < own_steps else order[:2]
        yield (rows if step < own_steps else None), {k: v[rows] for k, v in data.items()}


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
    """Everything that can be checked before Ray starts; returns the task's input spec (`info`)."""
    task = get_task(config.task)
    info = task.check_inputs(config)
    if config.optim.schedule == "cosine" and task.input_path == STREAMED and task.bind(info).n_train() is None:
        raise InputError(f"optim.schedule cosine: task {config.task} does not say how many training rows an epoch "
                         "has (its check_inputs must set n_train), so the schedule has no length")
    if config.engine.precision == "bf16" and not config.engine.use_gpu and not cpu_supports_bf16():
        raise InputError("--precision bf16 on CPU needs avx512_bf16 or amx_bf16, which this CPU lacks; use fp32")
    return info


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_training(config: TrainConfig, storage: Path, info: dict, *, name: str = RUN_NAME, callbacks: tuple = ()):
    """Build the TorchTrainer over the task's datasets and fit it; returns Ray's Result.

    `comical train` and every Tune trial call this same driver (a trial passes its own run name and Tune's
    report callback).
    """
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    task = get_task(config.task).bind(info)
    # Ray Train's controller collects a worker's report when it polls the workers (every 2 s by default), and a
    # report waits for the one before it to be collected: epochs shorter than that (the heads: 0.15 s) each took 2 s.
    # Ray passes this variable on to the controller; a user's own setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(REPORT_POLL_SECONDS))
    resources = {"CPU": config.engine.cpus_per_worker, **({"GPU": 1} if config.engine.use_gpu else {})}
    folder = Path(storage) / name  # Ray Train's folder for this run; on a cluster, storage every node can reach
    local = "://" not in str(storage)
    if local:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STALL_FILE).unlink(missing_ok=True)  # a resumed run starts with a clean slate
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config.to_dict(), "info": info,
                           "stall_file": str(folder / STALL_FILE) if local else None},
        scaling_config=ray.train.ScalingConfig(num_workers=config.engine.workers, use_gpu=config.engine.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=config.engine.placement.upper()),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage), callbacks=list(callbacks),
            # a worker group that cannot start is retried as often as a failed worker, not forever (Ray's default)
            failure_config=ray.train.FailureConfig(max_failures=config.engine.max_failures,
                                                   controller_failure_limit=config.engine.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None)),
        datasets=_datasets(task, config) if task.input_path != RESIDENT else None,  # resident tasks read their own
        # Deterministic block-to-worker assignment of streamed datasets.
        dataset_config=ray.train.DataConfig(execution_options=ray.data.ExecutionOptions(preserve_order=True)),
    )
    try:
        with _start_timeout(config.engine.stall_seconds):
            return trainer.fit()
    except ray.train.TrainingFailedError as err:
        stall = read_stall(folder) if local else None
        if stall is not None:
            raise RunFailed(stall) from err
        if type(getattr(err, "controller_failure", None)).__name__ == "WorkerGroupStartupTimeoutError":
            raise RunFailed(_not_started(config)) from err
        raise


def _datasets(task: Task, config: TrainConfig) -> dict:
    """The task's Ray Data datasets, or the stall line when making them waits past `engine.stall_seconds`.

    Making a Parquet dataset samples a few of its files in Ray tasks that need a free CPU (data_io/ray_parquet.py),
    so on a cluster whose CPUs another job holds it waits before Train starts, where neither the watchdog nor Train's
    start timeout looks. The wait runs in a daemon thread, so a run that gives up can still exit."""
    made: dict = {}

    def make() -> None:
        try:
            made["datasets"] = task.datasets(config)
        except BaseException as err:  # raised again in the driver's thread below
            made["error"] = err

    thread = threading.Thread(target=make, name="comical-datasets", daemon=True)
    thread.start()
    thread.join(config.engine.stall_seconds if config.engine.stall_seconds > 0 else None)
    if thread.is_alive():
        raise RunFailed(f"no progress for {config.engine.stall_seconds:g} s (engine.stall_seconds): reading the "
                        f"{config.task} task's Parquet metadata waited for a CPU; {cluster_free()} (another job or a "
                        f"stopped run holds the rest)")
    if "error" in made:
        raise made["error"]
    return made["datasets"]


@contextlib.contextmanager
def _start_timeout(seconds: float):
    """Ray Train's worker-group start timeout (60 s by default), set to the watchdog's limit unless the user set it.

    Train reads it from the environment, which it passes on to its controller."""
    if seconds <= 0 or START_TIMEOUT_ENV in os.environ:
        yield
        return
    os.environ[START_TIMEOUT_ENV] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(START_TIMEOUT_ENV, None)


def _not_started(config: TrainConfig) -> str:
    each = f"{config.engine.cpus_per_worker:g} CPU" + (" and 1 GPU" if config.engine.use_gpu else "")
    return (f"no progress for {config.engine.stall_seconds:g} s (engine.stall_seconds): Ray Train's "
            f"{config.engine.workers} workers ({each} each) waited to start; {cluster_free()} (another job or a "
            f"stopped run holds the rest)")


EVENTS = "events.jsonl"  # worker failures, one JSON line each (EpochLog)


def failure_line(error: BaseException) -> str:
    """One line for a worker's failure: its exception's type and the first line that says what happened (Ray
    wraps a lost actor's cause in several lines; the one naming the node or the exit is kept)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = next((line for line in lines if "node" in line.lower() or "died" in line.lower() or "exit" in
                    line.lower()), lines[0] if lines else "")
    return f"{type(error).__name__}: {telling}"[:300]


class EpochLog(UserCallback):
    """A Ray Train callback (it runs in the Train controller, on the driver's node): each epoch's metrics are
    appended to `metrics.jsonl` and TensorBoard in the run folder as soon as every worker has reported; a worker's
    failure (a crash, a lost node) is appended to `events.jsonl`, which the driver turns into one console line."""

    def __init__(self, out: str | Path):
        self.out = str(out)
        self.writer = None

    def after_exception(self, run_context, worker_exceptions):
        with open(Path(self.out) / EVENTS, "a") as f:
            for rank, error in sorted(worker_exceptions.items()):
                f.write(json.dumps({"event": "worker_failed", "rank": rank, "error": failure_line(error)}) + "\n")

    def after_report(self, run_context, metrics, checkpoint):
        m = metrics[0]  # rank 0's: every rank reports the same epoch metrics
        with open(Path(self.out) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(self.out) / "tensorboard"))
        for key, value in m.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "best_epoch"):
                self.writer.add_scalar(key, value, m["epoch"])
        self.writer.flush()
