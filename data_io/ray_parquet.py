"""Parquet files as a Ray Data dataset, the one way every streamed input is read.

Ray 2.60 reads Parquet through its new file source by default (a ListFiles task, then ReadFiles). That source
starts footer-reader actors (new worker processes) at every execution of a dataset: here 2.2-3.2 s a pass however
small the files (its ListFiles task: 2.6 s of wall time on 70 ms of CPU), where Ray Data's first Parquet source
reads the same rows in 0.25-0.44 s (`benchmarks/bench_ray_parquet.py`, BENCHMARKS.md). A streamed training executes
its train and validation datasets every epoch, so that was seconds an epoch; the first source is asked for by name.
The first source samples a few files in Ray tasks when the dataset is made, and those wait for a free CPU
(distributed/train.py bounds that wait).
"""

from __future__ import annotations

import logging


def read_parquet(paths, *, num_cpus: float = 0.25, schema=None):
    """`ray.data.read_parquet` of `paths` (a folder, a file or a list) through the first Parquet source.

    A quarter CPU per read task by default: reading is light, so on a small machine the reads still find room beside
    Train workers (and a Tune trial's driver) that hold fractional CPUs."""
    import ray.data

    context = ray.data.DataContext.get_current()
    before = context.use_datasource_v2, context.enable_progress_bars
    context.use_datasource_v2 = False  # read when the dataset is made: the flag is not needed after
    # its sampling draws a progress bar and logs two INFO lines per dataset ("Estimated parquet encoding ratio
    # ..."): not for a console
    context.enable_progress_bars = False
    sampling = logging.getLogger("ray.data._internal.datasource.parquet_datasource")
    level = sampling.level
    sampling.setLevel(logging.WARNING)
    try:
        return ray.data.read_parquet(paths, num_cpus=num_cpus, **({} if schema is None else {"schema": schema}))
    finally:
        context.use_datasource_v2, context.enable_progress_bars = before
        sampling.setLevel(level)
