"""`comical embed`: per-subject embeddings from any run whose model has them, through the registry of models.

    comical embed --run RUN/ --cohort COHORT/ --out embeddings.parquet
"""

from __future__ import annotations

import json
from pathlib import Path

from comical.data_io.errors import InputError


def embed_run(run: Path, cohort_dir: Path):
    """The run's per-subject embeddings as an Arrow table, and a line saying what they are; one line of error for a
    run whose model has none, before its weights load."""
    from comical.distributed.export import load_model
    from comical.pipelines.registry import embedder

    spec_file = Path(run) / "model" / "model.json"
    if not spec_file.is_file():
        raise InputError(f"--run {run}: no model/model.json (a finished `comical train` run folder)")
    embed = embedder(json.loads(spec_file.read_text())["task"])
    model, spec = load_model(Path(run) / "model")
    return embed(model, spec, Path(run), Path(cohort_dir))
