"""`comical images import`: users' NIfTI volumes into a cohort's image store, on Ray tasks, resumable.

    comical images import --t1 '/data/{eid}/T1/T1_brain_to_MNI.nii.gz' [--t2 PATTERN] [--voxel-mm 2]
        [--atlas FILE.nii.gz --atlas-labels FILE.csv] --out COHORT/images [--subjects FILE] [--workers N]

Subjects: `--subjects` (a file of eids, one a line, or a CSV with an `eid` column), else the cohort's (the folder
above --out) covariates.csv. Each modality's pattern names a subject's file with `{eid}`. The first subject whose
volumes all read sets the grid (data_io/nifti.py: checks, grid, intensity). Subjects go to Ray tasks
SHARD_ROWS at a time; a task writes its shard (only subjects whose every modality read) and a note of each
subject's fate into OUT/.import/, so a stopped import resumes with the chunks not yet done. The manifest comes last:
a folder with manifest.json is a whole store. import_report.tsv has a row per subject and modality: imported (with
the intensity divisor), missing or refused (with the reason); nothing is skipped silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError, RunFailed
from comical.data_io.images import SHARD_ROWS, write_manifest, write_shard
from comical.data_io.nifti import NORMALISE_PERCENTILE, Grid, VolumeError, read_volume, reference_grid, resample_atlas

WORK = ".import"  # chunk notes and settings of an import under way


def read_subjects(path: Path) -> list[int]:
    """Eids from a file of one eid a line, or a CSV with an `eid` column (a cohort table); one line naming a bad
    row."""
    if not path.is_file():
        raise InputError(f"--subjects {path}: file not found")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if lines and ("," in lines[0] or lines[0] == "eid"):
        header = lines[0].split(",")
        if "eid" not in header:
            raise InputError(f"--subjects {path}: no `eid` column in the header {header}")
        lines = [line.split(",")[header.index("eid")] for line in lines[1:]]
    eids = []
    for row, value in enumerate(lines, start=1):
        try:
            eids.append(int(value))
        except ValueError:
            raise InputError(f"--subjects {path}, row {row}: {value!r} is not an integer eid") from None
    if not eids:
        raise InputError(f"--subjects {path}: no eids")
    return sorted(set(eids))


def import_images(patterns: dict[str, str], eids: list[int], out: Path, *, voxel_mm: float | None = None,
                  atlas: Path | None = None, atlas_labels: Path | None = None, workers: int | None = None,
                  say=print) -> dict:
    """The module docstring's import into `out`; returns the store's manifest."""
    import ray

    from comical.distributed.ray_session import init_ray, shutdown_ray

    out = Path(out)
    if (out / "manifest.json").is_file():
        raise InputError(f"--out {out}: already an image store (manifest.json); choose another folder")
    for m, pattern in patterns.items():
        if "{eid}" not in pattern:
            raise InputError(f"--{m} {pattern}: no {{eid}} in the pattern (e.g. '/data/{{eid}}/T1.nii.gz')")
    if (atlas is None) != (atlas_labels is None):
        raise InputError("--atlas and --atlas-labels go together")
    eids = sorted(int(e) for e in eids)
    work = out / WORK
    settings = {"patterns": patterns, "voxel_mm": voxel_mm, "eids": eids}
    if (work / "settings.json").is_file() and json.loads((work / "settings.json").read_text()) != settings:
        raise InputError(f"--out {out}: an import with other patterns, --voxel-mm or subjects is under way there "
                         f"({work}); finish it with its own flags or choose another folder")
    grid = _grid(patterns, eids, voxel_mm)
    labels = _atlas(atlas, atlas_labels, grid) if atlas else None
    work.mkdir(parents=True, exist_ok=True)
    (work / "settings.json").write_text(json.dumps(settings) + "\n")
    chunks = [eids[i:i + SHARD_ROWS] for i in range(0, len(eids), SHARD_ROWS)]
    todo = [k for k in range(len(chunks)) if not (work / f"chunk-{k:05d}.json").is_file()]
    if len(todo) < len(chunks):
        say(f"images import: resuming, {len(chunks) - len(todo)} of {len(chunks)} chunks already done")
    started = init_ray(num_cpus=workers, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_import_chunk)
        pending = {task.remote(k, chunks[k], patterns, grid, voxel_mm is not None, str(out)): k for k in todo}
        failed = []
        while pending:  # every chunk that finishes is kept, whatever happens to the others
            ready, _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(ready[0])
            try:
                note = ray.get(ready[0])
            except Exception as err:  # a task's crash (a full disk, a killed node): kept for the one line below
                failed.append((k, err))
                continue
            (work / f"chunk-{k:05d}.json").write_text(json.dumps(note) + "\n")
            say(f"images import: chunk {k + 1} of {len(chunks)} done")
    finally:
        if started:
            shutdown_ray()
    if failed:
        k, err = failed[0]
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise RunFailed(f"images import: {len(failed)} of {len(chunks)} chunks failed (first: chunk {k + 1}, subjects "
                        f"{chunks[k][0]}-{chunks[k][-1]}: {lines[-1] if lines else type(err).__name__}); the "
                        f"{len(chunks) - len(failed)} done are kept in {work}: run the same command again to resume")
    notes = [json.loads((work / f"chunk-{k:05d}.json").read_text()) for k in range(len(chunks))]
    report = pl.DataFrame([row for note in notes for row in note["report"]],
                          schema={"eid": pl.Int64, "modality": pl.String, "file": pl.String, "status": pl.String,
                                  "divisor": pl.Float64, "reason": pl.String})
    report.write_csv(out / "import_report.tsv", separator="\t", null_value="NA")
    shards = [note["shard"] for note in notes if note["shard"]]
    if not shards:
        raise InputError(f"--out {out}: no subject had every modality readable; see {out / 'import_report.tsv'}")
    if labels is not None:
        import nibabel

        nibabel.save(nibabel.Nifti1Image(labels[0], grid.affine), out / "atlas.nii.gz")
        labels[1].write_csv(out / "atlas_labels.csv")
    manifest = write_manifest(out, shards, shape=grid.shape, voxel_mm=float(np.mean(grid.voxel_sizes)),
                              affine=grid.affine, modalities=list(patterns), extra={
                                  "voxel_sizes_mm": grid.voxel_sizes, "source": patterns,
                                  "intensity": f"per volume: divided by the {NORMALISE_PERCENTILE}th percentile of "
                                               "its voxels above 0, clipped to [0, 1] (divisors in "
                                               "import_report.tsv)",
                                  "resampled": "trilinear to the grid" if voxel_mm else "no (one grid)"})
    shutil.rmtree(work)
    return manifest


def _grid(patterns: dict[str, str], eids: list[int], voxel_mm: float | None) -> Grid:
    """The grid of the first subject whose volumes all read; one line when none does among the first 20."""
    problems = []
    first = next(iter(patterns))
    for eid in eids[:20]:
        path = Path(patterns[first].format(eid=eid))
        try:
            return reference_grid(path, voxel_mm)
        except VolumeError as err:
            problems.append(f"{path}: {err}")
    raise InputError(f"no readable volume among the first {min(20, len(eids))} subjects' --{first} files "
                     f"(first: {problems[0] if problems else 'no subjects'})")


def _atlas(atlas: Path, labels_csv: Path, grid: Grid) -> tuple[np.ndarray, pl.DataFrame]:
    """The atlas on the grid and its label table, checked before any volume is imported."""
    try:
        data = resample_atlas(atlas, grid)
    except ValueError as err:
        raise InputError(f"--atlas {atlas}: {err}") from None
    if not labels_csv.is_file():
        raise InputError(f"--atlas-labels {labels_csv}: file not found")
    labels = pl.read_csv(labels_csv)
    if not {"label", "idp"} <= set(labels.columns):
        raise InputError(f"--atlas-labels {labels_csv}: columns {labels.columns}; expected label and idp")
    named = set(labels["label"].to_list())
    unnamed = sorted(set(np.unique(data).tolist()) - named - {0, -1})
    if unnamed:
        raise InputError(f"--atlas {atlas}: label {unnamed[0]} is not in {labels_csv} ({len(unnamed)} such labels)")
    present = set(np.unique(data).tolist())
    absent = [r for r in labels.iter_rows(named=True) if r["label"] not in present]
    if absent:
        raise InputError(f"--atlas-labels {labels_csv}: region {absent[0]['idp']!r} (label {absent[0]['label']}) has "
                         "no voxel on the volumes' grid; expected every listed region in the atlas")
    return data, labels.select("label", "idp").sort("label")


def _import_chunk(index: int, eids: list[int], patterns: dict[str, str], grid: Grid, resample: bool,
                  out: str) -> dict:
    """A Ray task: read, check and normalise a chunk of subjects; write the shard of those whose every modality
    read; return the shard's manifest entry (None if none read) and the chunk's report rows."""
    report, kept, volumes = [], [], {m: [] for m in patterns}
    for eid in eids:
        read = {}
        for m, pattern in patterns.items():
            path = pattern.format(eid=eid)
            try:
                read[m] = read_volume(Path(path), grid, resample=resample)
                report.append({"eid": eid, "modality": m, "file": path, "status": "imported",
                               "divisor": read[m][1], "reason": None})
            except VolumeError as err:
                status = "missing" if str(err) == "missing" else "refused"
                report.append({"eid": eid, "modality": m, "file": path, "status": status, "divisor": None,
                               "reason": str(err)})
        if len(read) == len(patterns):
            kept.append(eid)
            for m in patterns:
                volumes[m].append(read[m][0])
        else:  # a subject is stored with every modality or not at all
            for row in report[-len(patterns):]:
                if row["status"] == "imported":
                    row["status"], row["reason"] = "not stored", "another modality of this subject was not readable"
    shard = write_shard(Path(out), f"part-{index:05d}.parquet", kept, volumes, grid.shape) if kept else None
    return {"shard": shard, "report": report}
