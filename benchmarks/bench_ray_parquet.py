"""Ray Data's two Parquet sources side by side: the wall time of one pass over a small store, as a streamed
training's epoch executes its datasets (data_io/ray_parquet.py says why the product names the first).

    python benchmarks/bench_ray_parquet.py [--passes 5]

The store: the mini cohort's T1 volumes at 12 mm (2,000 subjects, 8 Parquet files, about 10 MB), as the test suite
and `comical demo --images` read them. Each pass makes the dataset as the product does (`ImageStore.dataset`, the
source chosen when it is made) and iterates it in batches of 128 with 2 prefetched, in one local Ray of 4 logical
CPUs; the sources alternate pass by pass, so both see the same machine. Prints a markdown table of the median and
range of the passes after the first (the first starts Ray's worker processes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.data

    from comical.data_io.images import open_image_store
    from comical.data_io.simulate import write_cohort

    folder = Path(tempfile.mkdtemp(prefix="bench-ray-parquet-"))
    write_cohort(folder, preset="mini", seed=0, images=("t1",), voxel_mm=12)
    store = open_image_store(folder / "images")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    seconds: dict[str, list[float]] = {"first (named by the product)": [], "new (Ray 2.60's default)": []}
    for _ in range(args.passes + 1):
        for name, new_source in zip(seconds, (False, True)):
            context.use_datasource_v2 = new_source
            if new_source:  # the default source, as ray.data.read_parquet makes it
                dataset = ray.data.read_parquet(store.files, num_cpus=0.25).select_columns(["eid", "t1", "t1_scale"])
            else:
                dataset = store.dataset(["t1"])
            start, rows = time.perf_counter(), 0
            for batch in dataset.iterator().iter_batches(batch_size=128, prefetch_batches=2):
                rows += len(batch["eid"])
            seconds[name].append(time.perf_counter() - start)
            assert rows == 2000, rows
    ray.shutdown()
    print("| Parquet source | passes | seconds a pass: median (range) |")
    print("|---|---|---|")
    for name, values in seconds.items():
        later = values[1:]
        print(f"| {name} | {len(later)} | {statistics.median(later):.2f} ({min(later):.2f}-{max(later):.2f}) |")


if __name__ == "__main__":
    main()
