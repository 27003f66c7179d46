"""Benchmark: training throughput (pairs/s of a full epoch: data + forward + backward + optimizer), one run.

    python benchmarks/bench_train.py --pairs PAIRS/ [--batch-size 4096] [--epochs 2]

Rows, all at the paper's model size on the same pair store:
  (a) the reference implementation's shape: a per-item torch Dataset + DataLoader (one pair per __getitem__,
      the PLE vector built per item), the same towers with every SNP encoded per pair, and the CLIP loss as
      two plain cross-entropies over the logits;
  (b) a bare torch loop over our model and loss: the split as tensors, a permutation sliced into minibatches;
  (c) `comical train`'s path, Ray Train + DeepSpeed ZeRO-2, 1 worker, and (d) 2 workers (pairs/s measured
      inside the workers over the training part of each epoch; the best epoch is reported);
  with --compile MODE, (e): (c) with `--compile MODE` (torch.compile of the forward; the first epoch compiles).
(a) and (b) use one torch thread, as a Ray Train worker with a fractional CPU does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from comical.data_io.pair_store import expand_pairs, read_manifest
from comical.distributed.config import TrainConfig
from comical.distributed.losses import clip_loss, clip_loss_reference
from comical.distributed.models import ModelConfig
from comical.distributed.tasks.comical import ComicalTask, load_split


def _step(model, optimizer, inputs, loss_fn=clip_loss):
    snp, idp, scale = model(inputs)
    loss = loss_fn(snp, idp, scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class PerItemPairs(torch.utils.data.Dataset):
    """One pair per item, PLE vector built in Python per item (the reference implementation's shape)."""

    def __init__(self, data: dict[str, torch.Tensor], n_bins: int):
        self.columns = {k: v.numpy() for k, v in data.items()}
        self.n_bins = n_bins

    def __len__(self):
        return len(self.columns["snp"])

    def __getitem__(self, i):
        b, f = int(self.columns["idp_bin"][i]), float(self.columns["idp_frac"][i])
        ple = np.zeros(self.n_bins, dtype=np.float32)
        ple[:b] = 1.0
        ple[b] = f
        return {"snp": int(self.columns["snp"][i]), "genotype_token": int(self.columns["genotype_token"][i]),
                "idp": int(self.columns["idp"][i]), "ple": ple}


def per_item_loader(store: Path, batch_size: int, epochs: int) -> float:
    """The reference's shape: per-item pairs, every SNP encoded per pair, the loss as plain cross-entropies."""
    manifest = read_manifest(store)
    model = ComicalTask().build_model(ModelConfig(dedupe_snp_inputs=False), manifest)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(PerItemPairs(load_split(store, "train"), manifest["n_bins"]),
                                         batch_size=batch_size, shuffle=True, drop_last=True)
    best = 0.0
    for _ in range(epochs):
        start, pairs = time.perf_counter(), 0
        for batch in loader:
            _step(model, optimizer, batch, clip_loss_reference)
            pairs += batch_size
        best = max(best, pairs / (time.perf_counter() - start))
    return best


def bare_torch(store: Path, batch_size: int, epochs: int) -> float:
    manifest = read_manifest(store)
    model = ComicalTask().build_model(TrainConfig().model, manifest)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = load_split(store, "train")
    n = len(data["snp"])
    best = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n)
        steps = n // batch_size
        for s in range(steps):
            rows = order[s * batch_size:(s + 1) * batch_size]
            _step(model, optimizer, expand_pairs({k: v[rows] for k, v in data.items()}, manifest["n_bins"]))
        best = max(best, steps * batch_size / (time.perf_counter() - start))
    return best


def engine(store: Path, batch_size: int, epochs: int, workers: int, compile_mode: str = "off") -> float:
    from comical.distributed.run import train_and_evaluate

    config = TrainConfig.from_dict({"data": str(store), "batch_size": batch_size, "epochs": epochs,
                                    "engine": {"workers": workers, "zero_stage": 2, "compile": compile_mode}})
    with tempfile.TemporaryDirectory() as tmp:
        train_and_evaluate(config, Path(tmp) / "run")
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return max(m["samples_per_s"] for m in lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--compile", default=None, help="also row (e): (c) under this torch.compile mode")
    args = parser.parse_args()
    from comical.distributed.ray_session import init_ray

    init_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    torch.set_num_threads(1)
    rows = {"(a) per-item Dataset + DataLoader": per_item_loader(args.pairs, args.batch_size, args.epochs),
            "(b) bare torch loop, tensors resident": bare_torch(args.pairs, args.batch_size, args.epochs),
            "(c) comical train: Ray Train + DeepSpeed ZeRO-2, 1 worker": engine(args.pairs, args.batch_size,
                                                                                 args.epochs, 1),
            "(d) comical train: Ray Train + DeepSpeed ZeRO-2, 2 workers": engine(args.pairs, args.batch_size,
                                                                                  args.epochs, 2)}
    if args.compile:
        rows[f"(e) (c) with --compile {args.compile}"] = engine(args.pairs, args.batch_size, args.epochs, 1,
                                                                args.compile)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"batch {args.batch_size}, {read_manifest(args.pairs)['splits']['train']['pairs']:,} training pairs")
    for name, value in rows.items():
        print(f"| {name} | {value:,.0f} pairs/s |")
    a, b, c, d, *e = rows.values()
    print(f"| (c) / (b) | {c / b:.2f} | (c) / (a) | {c / a:.2f} | (d) / (c) | {d / c:.2f} |"
          + (f" (e) / (c) | {e[0] / c:.2f} |" if e else ""))


if __name__ == "__main__":
    main()
