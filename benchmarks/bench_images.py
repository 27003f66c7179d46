"""Benchmark: does Ray Data's streaming of image volumes keep GEMCONT's model step fed?

    python benchmarks/bench_images.py --work /tmp/bench-images [--voxel-mm 4] [--batch-size 32]
    python benchmarks/bench_images.py --work W --use-gpu --replicate 8000 --from-shard SHARD --from-inputs DIR

--use-gpu measures on a GPU machine: Ray sees all its cores, the step runs on CUDA (fp32 and bf16 autocast) and
`comical train` gets --use-gpu. A machine without nilearn or polars (the lent GPU machine) cannot simulate, so
--replicate N builds an N-subject cohort there from one carried image shard and GEMCONT inputs: subject i gets the
volume and genotypes of source subject i mod K (volumes at least K rows apart, never in one Parquet page, so the
compressed size per volume is the source's), splits 70/15/15 in eid order.

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
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mini_images import mini_image_cohort  # benchmarks/ is the script's folder: on sys.path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--voxel-mm", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--replicate", type=int, default=0, help="build an N-subject cohort (see above)")
    parser.add_argument("--from-shard", type=Path, help="--replicate: an image store shard")
    parser.add_argument("--from-inputs", type=Path, help="--replicate: GEMCONT inputs of the shard's cohort")
    args = parser.parse_args()
    if args.replicate:
        inputs = replicate(args.from_shard, args.from_inputs, args.replicate, args.work)
    else:
        cohort = mini_image_cohort(args.work, args.voxel_mm)
        from comical.pipelines.gemcont.inputs import prepare_gemcont_inputs

        inputs = args.work / f"inputs_{args.voxel_mm:g}mm"
        if not (inputs / "manifest.json").is_file():
            prepare_gemcont_inputs(cohort, inputs, disease="AD")
    rows = {}
    cpus = os.cpu_count() if args.use_gpu else 2
    device = torch.device("cuda" if args.use_gpu else "cpu")

    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
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
    rows[f"loader: Ray Data -> decoded volumes, 1 consumer, Ray on {cpus} CPUs"] = seen / (time.perf_counter() - start)
    ray.shutdown()

    model = task.build_model(GemcontConfig(), task.info).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    prepared = {k: v.to(device) for k, v in prepared.items()}
    from comical.distributed.losses import LOSSES

    def step(autocast: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            images, genotypes, scale = model(prepared)
        loss = LOSSES["onehot"](images.float(), genotypes.float(), scale.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if args.use_gpu:
            torch.cuda.synchronize()

    def steps_per_s(autocast: bool) -> float:
        for _ in range(3):  # warm-up: the first steps pay for cuDNN's algorithm search
            step(autocast)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < 20 or steps < 3:
            step(autocast)
            steps += 1
        return steps * args.batch_size / (time.perf_counter() - start)

    what = "step: forward + augmentation + backward + AdamW"
    if args.use_gpu:
        rows[f"{what}, CUDA fp32"] = steps_per_s(False)
        rows[f"{what}, CUDA bf16 autocast"] = steps_per_s(True)
    for threads in () if args.use_gpu else (1, 2):
        torch.set_num_threads(threads)
        rows[f"{what}, torch {threads} thread(s)"] = steps_per_s(False)

    runs = [("--precision", "fp32"), ("--precision", "bf16")] if args.use_gpu else [("--workers", "1"),
                                                                                    ("--workers", "2")]
    for flag, value in runs:
        out = args.work / f"run_{value}"
        workers = int(value) if flag == "--workers" else 1
        extra = ["--use-gpu", "--cpus-per-worker", "1"] if args.use_gpu else []
        print(rows, flush=True)  # what is measured so far survives a failed run
        done = subprocess.run([sys.executable, "-m", "comical", "train", "--task", "gemcont", "--data", str(inputs),
                               "--out", str(out), flag, value, "--epochs", "3", "--batch-size",
                               str(args.batch_size * workers), "--force", *extra],
                              capture_output=True, text=True, cwd=args.work)  # not the checkout: its comical/ shadows
        if not (out / "metrics.jsonl").is_file():
            sys.exit(f"comical train failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        rows[f"train: comical train --task gemcont {flag} {value} {' '.join(extra)}(batch {args.batch_size} "
             "per worker, last of 3 epochs)"] = last["samples_per_s"]

    shape = store.shape
    gpu = f", {torch.cuda.get_device_name()}" if args.use_gpu else ""
    print(f"machine: {platform.machine()}, {cpus} cores{gpu}; T1 at {args.voxel_mm:g} mm ({shape[0]} x {shape[1]} "
          f"x {shape[2]} voxels), {len(task._eids('train'))} training subjects, batch {args.batch_size}")
    print("| what | volumes/s |\n|---|---|")
    for name, rate in rows.items():
        print(f"| {name} | {rate:,.0f} |")


def replicate(shard: Path, source_inputs: Path, n: int, work: Path) -> Path:
    """An n-subject image store and GEMCONT inputs cycling the K subjects of one shard (see the module doc)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from comical.data_io.images import write_image_store

    source = pq.read_table(shard)
    shape = tuple(json.loads(source.schema.metadata[b"comical:shape"]))
    k = source.num_rows
    volumes = source.column("t1").combine_chunks().flatten().to_numpy().reshape(k, *shape)
    scales = source.column("t1_scale").to_numpy()
    manifest = json.loads((source_inputs / "manifest.json").read_text())
    table = pq.read_table(source_inputs / "genotypes.parquet")
    at = {int(e): i for i, e in enumerate(table.column("eid").to_numpy())}
    g = table.column("g").take([at[int(e)] for e in source.column("eid").to_numpy()])
    eids = np.arange(1, n + 1)
    cohort = work / f"replicated_{n}"
    write_image_store(cohort / "images", ((e, {"t1": volumes[(e - 1) % k] * scales[(e - 1) % k]}) for e in eids), n,
                      shape=shape, voxel_mm=4.0, affine=np.eye(4), modalities=["t1"])
    inputs = work / f"inputs_replicated_{n}"
    inputs.mkdir(parents=True, exist_ok=True)
    split = np.where(eids <= 0.7 * n, "train", np.where(eids <= 0.85 * n, "val", "test"))
    pq.write_table(pa.table({"eid": eids, "split": split, "g": g.take(list((eids - 1) % k))}),
                   inputs / "genotypes.parquet")
    (inputs / "panel.tsv").write_bytes((source_inputs / "panel.tsv").read_bytes())
    manifest |= {"cohort": str(cohort), "images": str((cohort / "images").resolve()),
                 "images_relative": f"../replicated_{n}/images", "images_sha256": None,
                 "splits": {s: int((split == s).sum()) for s in ("train", "val", "test")}}
    (inputs / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return inputs


if __name__ == "__main__":
    main()
