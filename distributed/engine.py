"""The engines a worker trains with: DeepSpeed (ZeRO 0-3, fp32/bf16) or plain DDP, behind one small interface.

The DeepSpeed config is derived from the training config (batch sizes cannot disagree). On CPU two slow
first-use compiles are avoided (docs/architecture.md): the shm comm op is switched off before `init_distributed`, and a
torch optimizer is passed in instead of naming one in the config (which would build FusedAdam).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from comical.distributed.config import TrainConfig

STATE_TAG = "state"


def deepspeed_config(config: TrainConfig, world_size: int) -> dict:
    """DeepSpeed's JSON config, from ours: one micro-batch per step, no accumulation."""
    return {
        "train_micro_batch_size_per_gpu": config.batch_size // world_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": config.batch_size,
        "gradient_clipping": config.optim.grad_clip,
        "zero_optimization": {"stage": config.engine.zero_stage},
        "bf16": {"enabled": config.engine.precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def adamw_with_warmup(model: nn.Module, config: TrainConfig, total_steps: int | None = None):
    """AdamW with weight decay on matrices only (not biases, norms, embeddings' scale), linear warm-up, then the
    configured schedule: constant, or cosine to 0 at `total_steps` (the run's steps, needed for cosine)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.optim.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.optim.learning_rate, betas=tuple(config.optim.betas))
    factor = functools.partial(lr_factor, warmup=max(1, config.optim.warmup_steps), total=total_steps,
                               cosine=config.optim.schedule == "cosine")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


def lr_factor(step: int, *, warmup: int, total: int | None, cosine: bool) -> float:
    """The learning rate's multiplier at `step` (0-based): (step + 1) / warmup, then 1 or a cosine from 1 to 0.
    With the cosine the warm-up is at most a tenth of the run (paper 001: 10 of 150 epochs), so a short run still
    reaches its learning rate."""
    if not cosine:
        return min(1.0, (step + 1) / warmup)
    if total is None:
        raise ValueError("a cosine schedule needs the run's total steps")
    warmup = max(1, min(warmup, total // 10))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class DeepSpeedEngine:
    def __init__(self, model: nn.Module, config: TrainConfig, world_size: int, device: torch.device,
                 total_steps: int | None = None):
        import deepspeed

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
        optimizer, scheduler = adamw_with_warmup(model, config, total_steps)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                    config=deepspeed_config(config, world_size))
        self.zero_stage = config.engine.zero_stage
        self.dtype = torch.bfloat16 if config.engine.precision == "bf16" else torch.float32
        self.device = device

    @property
    def module(self) -> nn.Module:
        """The model itself (for hooks such as an EMA update)."""
        return self.engine.module

    def __call__(self, batch):
        return self.engine(batch)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()  # clips, steps the optimizer and the warm-up schedule, zeroes gradients

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def save(self, folder: Path, client_state: dict) -> None:
        self.engine.save_checkpoint(str(folder), tag=STATE_TAG, client_state=client_state)

    def load(self, folder: Path) -> dict:
        _, client_state = self.engine.load_checkpoint(str(folder), tag=STATE_TAG)
        return client_state or {}

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights in fp32 on CPU; a collective with ZeRO-3 (call on every rank)."""
        module = self.engine.module
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
        return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}


class DDPEngine:
    def __init__(self, model: nn.Module, config: TrainConfig, world_size: int, device: torch.device,
                 total_steps: int | None = None):
        from torch.nn.parallel import DistributedDataParallel

        model = model.to(device)
        self.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if world_size > 1 else model
        self.optimizer, self.scheduler = adamw_with_warmup(model, config, total_steps)
        self.grad_clip = config.optim.grad_clip
        self.dtype = torch.float32  # bf16 runs under autocast; parameters stay fp32
        self.autocast = config.engine.precision == "bf16"
        self.device = device

    @property
    def module(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def __call__(self, batch):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return self.model(batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def save(self, folder: Path, client_state: dict) -> None:
        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "client_state": client_state},
                       Path(folder) / "ddp_state.pt")

    def load(self, folder: Path) -> dict:
        state = torch.load(Path(folder) / "ddp_state.pt", map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        return state["client_state"]

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().float().cpu().clone() for k, v in self.module.state_dict().items()}


def make_engine(model: nn.Module, config: TrainConfig, world_size: int, device: torch.device,
                total_steps: int | None = None):
    if config.engine.compile != "off":
        # the forward only, not the module's call: DeepSpeed's hooks around it stay eager (they read clocks);
        # parameter names (checkpoints, exports) stay the eager model's; fullgraph: a host synchronisation that
        # creeps into the forward fails loudly instead of silently splitting the graph
        model.forward = torch.compile(model.forward, mode=config.engine.compile, fullgraph=True)
    engine = DeepSpeedEngine if config.engine.engine == "deepspeed" else DDPEngine
    return engine(model, config, world_size, device, total_steps)

