"""Brain-image stores: 3-D volumes as Parquet shards, checked on open, streamed by Ray Data.

    COHORT/images/manifest.json        shape, voxel size, affine, dtype, modalities, subjects, shard checksums
    COHORT/images/part-00000.parquet   eid (int64); per modality: <m> (uint8 x prod(shape), C order) and
                                       <m>_scale (float32): intensity = value x scale

Why Parquet and not Zarr: the engine's streaming path is Ray Data, which reads Parquet natively, in parallel read
tasks, one row group at a time (16 subjects here), with column projection (a T1-only model never decodes T2); a
Zarr store would need a custom datasource for the same. Volumes are uint8 with a per-volume scale (a quarter of
float32; a 4 mm volume is ~60 KB before compression) and zstd-compressed (the background is zeros).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from comical.data_io.errors import InputError

FORMAT = "comical image store 1"
SHARD_ROWS = 256  # subjects per shard
ROW_GROUP_ROWS = 16  # subjects per row group: Ray Data's unit of reading


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_image_store(folder: Path, volumes: Iterable[tuple[int, dict[str, np.ndarray]]], n_subjects: int, *,
                      shape: tuple[int, int, int], voxel_mm: float, affine: np.ndarray,
                      modalities: Iterable[str], extra: dict | None = None) -> dict:
    """Write (eid, {modality: float volume}) pairs, in eid order, as shards and a manifest; returns the manifest.
    Shards are written under temporary names and renamed, the manifest last: a store with a manifest is whole."""
    modalities = list(modalities)
    folder.mkdir(parents=True, exist_ok=True)
    shards, eids, rows = [], [], {m: [] for m in modalities}
    for eid, volume in volumes:
        eids.append(int(eid))
        for m in modalities:
            rows[m].append(volume[m])
        if len(eids) == SHARD_ROWS:
            shards.append(write_shard(folder, f"part-{len(shards):05d}.parquet", eids, rows, shape))
            eids, rows = [], {m: [] for m in modalities}
    if eids:
        shards.append(write_shard(folder, f"part-{len(shards):05d}.parquet", eids, rows, shape))
    if sum(s["rows"] for s in shards) != n_subjects:
        raise ValueError(f"wrote {sum(s['rows'] for s in shards)} subjects, expected {n_subjects}")
    return write_manifest(folder, shards, shape=shape, voxel_mm=voxel_mm, affine=affine, modalities=modalities,
                          extra=extra)


def write_shard(folder: Path, name: str, eids: list[int], volumes: dict[str, list[np.ndarray]],
                shape: tuple[int, int, int]) -> dict:
    """One shard of subjects `eids` (ascending) with their float volumes per modality, quantised; written under a
    temporary name and renamed. Returns its manifest entry."""
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    schema = pa.schema([("eid", pa.int64())] + [f for m in volumes for f in
                                                 ((m, pa.list_(pa.uint8(), size)), (f"{m}_scale", pa.float32()))],
                       metadata={"comical:shape": json.dumps(shape)})
    columns = {"eid": pa.array(eids, pa.int64())}
    for m, values in volumes.items():
        quantised = [quantize(v) for v in values]
        columns[m] = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate([q.ravel() for q, _ in quantised])),
                                                       size)
        columns[f"{m}_scale"] = pa.array([scale for _, scale in quantised], pa.float32())
    table = pa.table(columns, schema=schema)
    partial = folder / f".{name}.partial"
    pq.write_table(table, partial, row_group_size=ROW_GROUP_ROWS, compression="zstd")
    os.replace(partial, folder / name)
    return {"file": name, "rows": table.num_rows, "first_eid": int(eids[0]), "last_eid": int(eids[-1]),
            "bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}


def write_manifest(folder: Path, shards: list[dict], *, shape, voxel_mm: float, affine: np.ndarray,
                   modalities: list[str], extra: dict | None = None) -> dict:
    """The store's manifest.json over its shards, written last (a store with a manifest is whole)."""
    manifest = {"format": FORMAT, "shape": [int(s) for s in shape], "voxel_mm": float(voxel_mm),
                "affine": np.asarray(affine).round(6).tolist(), "dtype": "uint8",
                "modalities": list(modalities), "scale": "intensity = value x <modality>_scale", "order": "C (x, y, z)",
                **(extra or {}), "n_subjects": sum(s["rows"] for s in shards), "shards": shards}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def quantize(volume: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 values and the scale that maps them back: volume ~ values x scale (max error scale / 2)."""
    top = float(volume.max())
    scale = top / 255 if top > 0 else 1.0
    return np.round(volume / scale).clip(0, 255).astype(np.uint8), np.float32(scale)


@dataclasses.dataclass
class ImageStore:
    """A checked image store (`open_image_store`)."""

    folder: Path
    manifest: dict
    eids: np.ndarray  # every subject, in store order

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["shape"])

    @property
    def modalities(self) -> list[str]:
        return self.manifest["modalities"]

    @property
    def files(self) -> list[str]:
        return [str(self.folder / s["file"]) for s in self.manifest["shards"]]

    def dataset(self, modalities: Iterable[str], eids: np.ndarray | None = None, *, num_cpus: float = 0.25):
        """A Ray Data dataset of `eid` and each modality's values and scale, for the subjects `eids` (all if
        None), read lazily shard by shard, row group by row group."""
        from ray.data.expressions import col

        from comical.data_io.ray_parquet import read_parquet

        columns = ["eid"] + [c for m in self._check(modalities) for c in (m, f"{m}_scale")]
        # a column selection and an Arrow predicate (Ray Data's optimiser may push both into the Parquet read; not
        # measured here)
        data = read_parquet(self.files, num_cpus=num_cpus).select_columns(columns)
        return data if eids is None else data.filter(expr=col("eid").is_in([int(e) for e in eids]))

    def read(self, modality: str, eids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Volumes as float32 (subjects x shape) and their eids, in store order: for small sets on one machine;
        training streams (`dataset`), evaluation goes `batches` at a time."""
        parts = list(self.batches(modality, eids))
        if not parts:
            return np.zeros((0, *self.shape), np.float32), np.zeros(0, np.int64)
        return np.concatenate([v for v, _ in parts]), np.concatenate([e for _, e in parts])

    def batches(self, modality: str, eids: np.ndarray | None = None, batch_size: int = 256):
        """(float32 volumes, eids) of the subjects `eids` (all if None), in store order, one row group's worth or
        less at a time: memory stays that of a batch however large the store."""
        self._check([modality])
        wanted = None if eids is None else pa.array(np.asarray(eids, np.int64))
        for file in self.files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size, columns=["eid", modality, f"{modality}_scale"]):
                keep = (np.ones(batch.num_rows, bool) if wanted is None
                        else pc.is_in(batch.column("eid"), value_set=wanted).to_numpy(zero_copy_only=False))
                if keep.any():
                    batch = batch.filter(pa.array(keep))
                    yield (decode(batch.column(modality), batch.column(f"{modality}_scale").to_numpy(), self.shape),
                           batch.column("eid").to_numpy())

    def _check(self, modalities: Iterable[str]) -> list[str]:
        modalities = list(modalities)
        absent = [m for m in modalities if m not in self.modalities]
        if absent:
            raise InputError(f"{self.folder}: no {absent} images; the store holds {self.modalities}")
        return modalities


def store_identity(folder: str | Path) -> str:
    """sha256 of the store's manifest, which lists every shard's sha256: two stores with one identity hold the same
    volumes."""
    return hashlib.sha256((Path(folder) / "manifest.json").read_bytes()).hexdigest()


def decode(values, scale: np.ndarray, shape) -> np.ndarray:
    """uint8 rows (a FixedSizeList array or an (n, prod(shape)) array) -> float32 volumes (n, *shape)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.FixedSizeListArray):
        values = np.asarray(values.flatten()).reshape(len(values), math.prod(shape))
    return (np.asarray(values, np.float32) * np.asarray(scale, np.float32)[:, None]).reshape(-1, *shape)


def open_image_store(folder: str | Path, cohort_eids: Iterable | None = None, *,
                     verify_checksums: bool = False) -> ImageStore:
    """Check an image store before anything is computed: its manifest, every shard's presence, size (a truncated
    copy fails here), Parquet footer, columns, value count per row (the manifest's shape) and subjects (each known
    to the cohort, none twice). `verify_checksums` reads every byte against the manifest's sha256 (slow on a
    biobank: minutes per 100 GB)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise InputError(f"{path}: file not found (an image store is written by `comical simulate --images`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format {manifest.get('format')!r}; expected {FORMAT!r}")
    absent = [k for k in ("shape", "modalities", "shards", "voxel_mm", "affine") if k not in manifest]
    if absent:
        raise InputError(f"{path}: no {absent[0]!r} key; an image store manifest names {FORMAT!r}'s keys")
    size = math.prod(manifest["shape"])
    eids = []
    for shard in manifest["shards"]:
        file = folder / shard["file"]
        if not file.is_file():
            raise InputError(f"{file}: file not found (listed in {path})")
        if file.stat().st_size != shard["bytes"]:
            raise InputError(f"{file}: {file.stat().st_size} bytes, the manifest says {shard['bytes']} "
                             "(truncated or replaced)")
        if verify_checksums and _sha256(file) != shard["sha256"]:
            raise InputError(f"{file}: sha256 differs from the manifest's (the file changed after it was written)")
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{file}: not a readable Parquet file ({e})") from None
        schema = parquet.schema_arrow
        if "eid" not in schema.names or schema.field("eid").type != pa.int64():
            raise InputError(f"{file}: no int64 column 'eid' (the subject of each volume)")
        for m in manifest["modalities"]:
            for column, kind in ((m, pa.list_(pa.uint8(), size)), (f"{m}_scale", pa.float32())):
                if column not in schema.names:
                    raise InputError(f"{file}: no column {column!r}; expected eid and, per modality, <m> and <m>_scale")
                if schema.field(column).type != kind:
                    raise InputError(f"{file}, column {column}: {schema.field(column).type}; expected {kind} (a "
                                     f"volume of shape {tuple(manifest['shape'])} from {path.name})")
        if parquet.metadata.num_rows != shard["rows"]:
            raise InputError(f"{file}: {parquet.metadata.num_rows} rows, the manifest says {shard['rows']}")
        eids.append(parquet.read(columns=["eid"]).column("eid").to_numpy())
    eids = np.concatenate(eids) if eids else np.array([], np.int64)
    repeated = eids[np.flatnonzero(np.diff(np.sort(eids)) == 0)]
    if repeated.size:
        raise InputError(f"{folder}: subject {repeated[0]} appears more than once")
    if cohort_eids is not None:
        known = np.asarray(list(cohort_eids), dtype=np.int64)
        unknown = eids[~np.isin(eids, known)]
        if unknown.size:
            raise InputError(f"{folder}: {unknown.size} subjects not in the cohort (first: eid {unknown[0]})")
    return ImageStore(folder, manifest, eids)
