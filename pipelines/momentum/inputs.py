"""The T1/T2 momentum task's inputs from a cohort with images (paper 003): subject splits, written to a folder the
momentum tasks read (`comical train --task momentum-t1t2 --cohort DIR`).

    inputs/
      manifest.json      task, cohort, image store (and its identity), image shape, splits, seed
      subjects.parquet   eid, split (train / val / test: 70/15/15 of the subjects with T1 and T2 images, seeded)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from comical.data_io.cohort import load_cohort
from comical.data_io.errors import InputError
from comical.data_io.output_dir import staged_folder
from comical.pipelines.gemcont.inputs import SPLITS, split_subjects
from comical.data_io.images import open_image_store, store_identity

def prepare_momentum_inputs(cohort_dir: str | Path, out: str | Path, *, seed: int = 0) -> dict:
    """Write the inputs folder `out` (staged, renamed into place when whole); returns its manifest."""
    cohort = load_cohort(cohort_dir)
    store = open_image_store(Path(cohort_dir) / "images", cohort.eids.to_numpy())
    absent = [m for m in ("t1", "t2") if m not in store.modalities]
    if absent:
        raise InputError(f"{store.folder}: no {absent} images; the T1/T2 tasks need both (simulate --images t1,t2)")
    eids = np.sort(np.intersect1d(cohort.eids.cast(int).to_numpy(), store.eids))
    if eids.size < 20:
        raise InputError(f"{store.folder}: {eids.size} cohort subjects have images; expected at least 20")
    split = split_subjects(eids.size, seed)  # GEMCONT's 70/15/15
    with staged_folder(out) as stage:
        pq.write_table(pa.table({"eid": eids.astype(np.int64), "split": pa.array(split.astype(str))}),
                       stage / "subjects.parquet")
        manifest = {"task": "momentum", "cohort": str(Path(cohort_dir).resolve()),
                    "images": str(store.folder.resolve()),
                    "images_sha256": store_identity(store.folder), "image_shape": list(store.shape), "seed": seed,
                    "splits": {name: int((split == name).sum()) for name in SPLITS}}
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
