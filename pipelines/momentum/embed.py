"""`comical embed` of a T1/T2 momentum (or autoencoder) run: the frozen towers' embeddings of every subject of its
inputs, from the cohort's image store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from comical.data_io.errors import InputError


def embed_momentum(model, spec: dict, run: Path, cohort_dir: Path):
    """(eid, split, <prefix>_<k>...) as an Arrow table (prefixes t1, t2, or z for the autoencoder), and a line
    saying what it holds. The cohort's image store must be the one the run's inputs were made from."""
    from comical.data_io.images import open_image_store, store_identity
    from comical.distributed.task import get_task
    from comical.distributed.tasks.momentum import read_momentum_inputs

    info = dict(spec["input"])
    inputs = Path(run) / "inputs"  # a run trained with --cohort holds its inputs; else the --data folder it named
    if (inputs / "manifest.json").is_file():
        info["data"] = str(inputs)
    manifest, table = read_momentum_inputs(info["data"])
    eids = table.column("eid").to_numpy()
    images = Path(cohort_dir) / "images"
    open_image_store(images, eids)
    if manifest.get("images_sha256") not in (None, store_identity(images)):
        raise InputError(f"--cohort {cohort_dir}: its image store is not the one run {run} was trained on (its "
                         f"inputs came from {manifest['cohort']}); embed the cohort the run was trained on")
    info["images"] = str(images.resolve())
    stored, parts = get_task(spec["task"]).bind(info).embed(model, eids)
    split = dict(zip(eids.tolist(), table.column("split").to_pylist()))
    columns = {"eid": stored, "split": np.array([split[e] for e in stored.tolist()])}
    for prefix, values in parts.items():
        columns |= {f"{prefix}_{k}": values[:, k] for k in range(values.shape[1])}
    dims = " + ".join(f"{prefix} {values.shape[1]}" for prefix, values in parts.items())
    return pa.table(columns), f"{len(stored)} subjects x ({dims}) {spec['task']} embeddings"
