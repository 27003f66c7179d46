"""The training run's typed config: data, model, optimisation and engine, round-tripping to YAML.

It crosses the Ray boundary as a plain dict (`to_dict`) and the worker's first line turns it back.
"""

from __future__ import annotations

import dataclasses

from comical.data_io.configs import Config
from comical.data_io.errors import InputError


@dataclasses.dataclass(frozen=True)
class OptimConfig(Config):
    learning_rate: float = 1e-3  # AdamW; paper Table 1 tuned 1e-4 to 3.3e-3 (`comical tune`)
    weight_decay: float = 0.0015  # paper Table 1 (top 0.5%)
    warmup_steps: int = 50  # linear warm-up from 0 (paper Table 1: 236-343 at 15 M pairs; fewer for mini)
    betas: tuple[float, float] = (0.9, 0.98)  # CLIP's Adam betas
    grad_clip: float = 1.0
    schedule: str = "constant"  # after the warm-up: constant, or cosine (to 0 at the last step)

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"optim.schedule {self.schedule!r}: expected constant or cosine")


COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclasses.dataclass(frozen=True)
class EngineConfig(Config):
    engine: str = "deepspeed"  # deepspeed or ddp (plain torch DistributedDataParallel)
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    precision: str = "fp32"  # fp32, or bf16 (GPU; or a CPU with bf16 support)
    workers: int = 1  # Ray Train workers: one per GPU or per CPU slot
    use_gpu: bool = False  # one GPU per worker
    cpus_per_worker: float = 0.5  # fractional, so Ray Data's read tasks still get a CPU on a small machine
    gather_negatives: bool = True  # negatives from all workers (the loss of the concatenated batch)
    max_failures: int = 2  # Ray Train FailureConfig: restarts from the last checkpoint
    # Ray Train's worker placement: pack (fill a node first, Ray's default) or spread (one worker a node where the
    # cluster has room: a lost node then costs one worker, and each worker has its node's memory bandwidth)
    placement: str = "pack"
    # A worker (or worker group) that makes no progress this long fails its run with a line saying what it waited
    # for (distributed/watchdog.py); 0 turns the watchdog off. Minutes: a step, a validation batch or a checkpoint
    # upload that legitimately takes longer needs a larger value.
    stall_seconds: float = 300.0
    # torch.compile of the model's forward (a torch.compile mode: default, reduce-overhead = CUDA graphs,
    # max-autotune), or off. Off by default until a GPU benchmark shows where it helps (BENCHMARKS.md); the step
    # has no host synchronisation, so the whole forward compiles as one graph (fullgraph, tested).
    compile: str = "off"

    def __post_init__(self):
        if self.engine not in ("deepspeed", "ddp"):
            raise InputError(f"--engine {self.engine}: expected deepspeed or ddp")
        if self.zero_stage not in (0, 1, 2, 3):
            raise InputError(f"--zero-stage {self.zero_stage}: expected 0, 1, 2 or 3")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"--precision {self.precision}: expected fp32 or bf16")
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: expected at least 1")
        if self.compile not in COMPILE_MODES:
            raise InputError(f"--compile {self.compile}: expected one of {', '.join(COMPILE_MODES)}")
        if self.max_failures < 0:
            raise InputError(f"--max-failures {self.max_failures}: expected 0 or more")
        if self.placement not in ("pack", "spread"):
            raise InputError(f"--placement {self.placement}: expected pack or spread")


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    task: str = "comical"  # the model to train (distributed/tasks/)
    data: str = ""  # the task's input folder (COMICAL: a pair store from `comical pairs`)
    epochs: int = 5  # enough for the mini cohort on CPU; the paper-size store wants more
    # samples per step over all workers, the loss's batch (paper Table 1: 4096 pairs; a task may bring its paper's)
    batch_size: int = 4096
    # Validation and test batches: one size for every run, because a contrastive loss and its chance levels depend
    # on how many candidates a batch holds (ln B with no signal), so runs that train at different batch sizes
    # (a Tune sweep over Table 1) are compared, and their best epochs chosen, on the same footing.
    eval_batch_size: int = 4096
    seed: int = 0  # initial weights, shuffles and augmentation: the same seed gives the same run on CPU
    storage_path: str = ""  # Ray Train storage for checkpoints (local run dir by default; s3://, gs://, NFS)
    # The task's model and loss settings, typed by the task (`Task.model_config`; COMICAL: models.ModelConfig).
    model: dict = dataclasses.field(default_factory=dict)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)

    @classmethod
    def _from_mapping(cls, values, source: str, path: str):
        """The `model:` section is typed by the task (`Task.model_config`), checked key by key like the rest."""
        from comical.distributed.task import get_task

        model = values.get("model", {})
        if not isinstance(model, (dict, Config)):
            raise InputError(f"{source}: key {path}model: expected a mapping of model keys, got {model!r}")
        task = get_task(values.get("task", "comical") if isinstance(values.get("task"), str) else "comical")
        if isinstance(model, dict):
            values = {**values, "model": task.model_config._from_mapping(model, source, f"{path}model.")}
        if isinstance(values.get("optim", {}), dict):  # the task's paper settings, under what the config gives
            values = {**task.run_defaults, **values, "optim": {**task.optim_defaults, **values.get("optim", {})}}
        return super()._from_mapping(values, source, path)

    def __post_init__(self):
        from comical.distributed.task import get_task

        model_config = get_task(self.task).model_config
        if isinstance(self.model, dict):  # frozen: the typed section replaces the mapping once, here
            object.__setattr__(self, "model", model_config.from_dict(self.model, source="model"))
        elif not isinstance(self.model, model_config):
            raise InputError(f"model: expected a mapping of {model_config.__name__} keys, got {self.model!r}")
        if self.epochs < 1 or self.batch_size < 2:
            raise InputError(f"epochs {self.epochs}, batch_size {self.batch_size}: expected >= 1 and >= 2")
        if self.batch_size % self.engine.workers:
            raise InputError(f"--batch-size {self.batch_size} does not split evenly over {self.engine.workers} workers")

    @property
    def worker_batch_size(self) -> int:
        """Each worker's share of a step's batch."""
        return self.batch_size // self.engine.workers
