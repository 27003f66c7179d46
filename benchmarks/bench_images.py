"""Benchmark: does Ray Data's streaming of image volumes keep GEMCONT's model step fed?

    python benchmarks/bench_images.py --work /tmp/bench-images [--voxel-mm 4] [--batch-size 32]

On the mini cohort with T1 volumes (simulated into --work unless there), one run each, measured in this process:
  loader: volumes/s that Ray Data delivers to one consumer (read, select, filter to the training subjects, batch,
          to torch, decode uint8 x scale), nothing else;
  step:   volumes/s of GEMCONT's training step alone (forward with augmentation and SCARF, CLIP loss, backward,
          AdamW) on a batch already in memory, with torch on 1 and on 2 threads;
  train:  `comical train --task gemcont` with 1 and 2 Ray Train workers (DeepSpeed): the epoch's subjects/s from
          metrics.jsonl (the last of 2 epochs), loader and step together.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cohort = args.work / f"mini_{args.voxel_mm:g}mm"
    if not (cohort / "images" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "comical", "simulate", "--preset", "mini", "--images", "t1",
                        "--voxel-mm", str(args.voxel_mm), "--out", str(cohort)], check=True)
    from comical.pipelines.gemcont_inputs import prepare_gemcont_inputs

    inputs = args.work / f"inputs_{args.voxel_mm:g}mm"
    if not (inputs / "manifest.json").is_file():
        prepare_gemcont_inputs(cohort, inputs, disease="AD")
    rows = {}

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from comical.data_io.images import open_image_store
    from comical.distributed.tasks.gemcont import GemcontConfig, GemcontTask

    task = GemcontTask()
    from comical.distributed.config import TrainConfig

    config = TrainConfig.from_dict({"task": "gemcont", "data": str(inputs), "batch_size": args.batch_size})
    task.bind(task.check_inputs(config))
    store = open_image_store(task.info["images"])
    data = store.dataset(["t1"], task._eids("train"))
    start, seen = time.perf_counter(), 0
    for batch in data.iter_torch_batches(batch_size=args.batch_size, drop_last=True, prefetch_batches=2):
        prepared = task.prepare(batch, torch.float32)
        seen += len(prepared["image"])
    rows["loader: Ray Data -> decoded volumes, 1 consumer"] = seen / (time.perf_counter() - start)
    ray.shutdown()

    model = task.build_model(GemcontConfig(), task.info)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    from comical.distributed.losses import LOSSES

    for threads in (1, 2):
        torch.set_num_threads(threads)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 20 or steps < 3:
            images, genotypes, scale = model(prepared)
            loss = LOSSES["onehot"](images, genotypes, scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        rows[f"step: forward + augmentation + backward + AdamW, torch {threads} thread(s)"] = (
            steps * args.batch_size / (time.perf_counter() - start))

    for workers in (1, 2):
        out = args.work / f"run_w{workers}"
        subprocess.run([sys.executable, "-m", "comical", "train", "--task", "gemcont", "--data", str(inputs),
                        "--out", str(out), "--workers", str(workers), "--epochs", "2", "--batch-size",
                        str(args.batch_size * workers), "--force"], check=True, capture_output=True)
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows[f"train: comical train --task gemcont --workers {workers} (batch {args.batch_size} per worker)"] = (
            last["samples_per_s"])

    shape = store.shape
    print(f"machine: {platform.machine()}, 2 cores; mini cohort, T1 at {args.voxel_mm:g} mm ({shape[0]} x {shape[1]} "
          f"x {shape[2]} voxels), {len(task._eids('train'))} training subjects, batch {args.batch_size}")
    print("| what | volumes/s |\n|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
