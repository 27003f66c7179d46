"""The streaming input path (Ray Data `iter_torch_batches`, as a Train worker's shard iterates it) against the model
step it feeds, for three row shapes: COMICAL pairs (16 bytes), the toy task's two 32-float views, and 32^3 uint8
volumes (what a 4 mm brain image is about).

    python benchmarks/bench_streaming.py [--rows 200000] [--batch-size 1024]

For each shape: samples/s and MB/s of the iterator (one worker's shard via `streaming_split(1, equal=True)`, local
shuffle buffer of 4 batches, 2 batches prefetched; the second pass is measured), and for pairs and the toy views
the samples/s of the model step on this machine (forward, CLIP loss, backward, AdamW). The streaming path starves
a step whenever the iterator's samples/s is below the step's. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch


def _write(folder: Path, columns: dict[str, np.ndarray]) -> int:
    """Parquet in 8 files; returns bytes per row of payload."""
    folder.mkdir(parents=True)
    n = len(next(iter(columns.values())))
    arrays = {}
    for name, x in columns.items():
        flat = x.reshape(n, -1)
        arrays[name] = (pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), flat.shape[1]) if flat.shape[1] > 1
                        else pa.array(flat[:, 0]))
    table = pa.table(arrays)
    for part, rows in enumerate(np.array_split(np.arange(n), 8)):
        pq.write_table(table.take(rows), folder / f"part-{part:05d}.parquet", row_group_size=4096)
    return sum(x.reshape(n, -1).shape[1] * x.dtype.itemsize for x in columns.values())


def stream_rate(folder: Path, batch_size: int) -> float:
    import ray.data

    shard = ray.data.read_parquet(str(folder), num_cpus=0.25).streaming_split(1, equal=True)[0]
    best = 0.0
    for _ in range(2):  # the first pass warms Ray Data's workers up
        start, rows = time.perf_counter(), 0
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2,
                                              local_shuffle_buffer_size=4 * batch_size, local_shuffle_seed=0):
            rows += len(next(iter(batch.values())))
        best = rows / (time.perf_counter() - start)
    return best


def step_rate(model, batch: dict, loss_of, steps: int = 20) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    n = len(next(iter(batch.values())))
    for i in range(steps + 3):
        if i == 3:
            start = time.perf_counter()
        loss = loss_of(model(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--volume-rows", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from comical.distributed.losses import clip_onehot
    from comical.distributed.models import ModelConfig, build_comical_model
    from comical.distributed.tasks.toy import ToyConfig, ToyModel

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rng = np.random.default_rng(0)
    n, b = args.rows, args.batch_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = {"subject": rng.integers(0, 2000, n).astype(np.int32), "snp": rng.integers(0, 60, n).astype(np.int16),
                 "idp": rng.integers(0, 154, n).astype(np.int16), "genotype_token": rng.integers(1, 10, n).astype(np.int8),
                 "idp_bin": rng.integers(0, 16, n).astype(np.int16), "idp_frac": rng.random(n).astype(np.float32),
                 "disease": rng.integers(0, 8, n).astype(np.int8)}
        size = _write(Path(tmp) / "pairs", pairs)
        model = build_comical_model(ModelConfig(), n_snps=60, n_tokens=10, n_idps=154, n_bins=16,
                                    snp_token_table=[[1, 2, 3]] * 60)
        batch = {"snp": torch.from_numpy(pairs["snp"][:b]).long(), "genotype_token": torch.full((b,), 2),
                 "idp": torch.from_numpy(pairs["idp"][:b]).long(), "ple": torch.rand(b, 16)}
        step = step_rate(model, batch, lambda out: clip_onehot(*out))
        rows.append(("COMICAL pairs", size, stream_rate(Path(tmp) / "pairs", b), step))

        views = {"a": rng.normal(size=(n, 32)).astype(np.float32), "b": rng.normal(size=(n, 32)).astype(np.float32)}
        size = _write(Path(tmp) / "toy", views)
        step = step_rate(ToyModel(ToyConfig(), 32), {k: torch.from_numpy(v[:b]) for k, v in views.items()},
                         lambda out: clip_onehot(*out))
        rows.append(("toy views (2 x 32 float32)", size, stream_rate(Path(tmp) / "toy", b), step))

        volumes = {"t1": rng.integers(0, 255, size=(args.volume_rows, 32 ** 3), dtype=np.uint8)}
        size = _write(Path(tmp) / "volumes", volumes)
        rows.append(("32^3 uint8 volumes", size, stream_rate(Path(tmp) / "volumes", min(b, 64)), None))
    print(f"| rows | bytes/row | streamed samples/s | streamed MB/s | model step samples/s (CPU, batch {b}) |")
    print("|---|---|---|---|---|")
    for name, size, rate, step in rows:
        print(f"| {name} | {size:,} | {rate:,.0f} | {rate * size / 1e6:,.1f} | "
              f"{f'{step:,.0f}' if step else 'no image model yet'} |")


if __name__ == "__main__":
    main()
