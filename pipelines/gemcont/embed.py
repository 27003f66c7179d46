"""`comical embed` of a GEMCONT run: image and genotype embeddings of every subject of its inputs."""

from __future__ import annotations

from pathlib import Path


def embed_gemcont(model, spec: dict, run: Path, cohort_dir: Path):
    """(eid, split, image_*, genotype_*) as an Arrow table, and a line saying what it holds. The cohort must be the
    one the run was trained on (its genotype features were fitted there)."""
    from comical.distributed.tasks.gemcont import embed_cohort

    table = embed_cohort(model, spec["input"], run, cohort_dir)
    dims = sum(c.startswith("image_") for c in table.column_names)
    return table, f"{table.num_rows} subjects x (image {dims} + genotype {dims}) GEMCONT embeddings"
