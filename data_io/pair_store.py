"""The pair store (docs/architecture.md): Parquet shards of small integer columns, read by Ray Data, expanded in torch.

Worker-side code: imports only numpy, pyarrow, torch and ray (the GPU image has no polars).

    ds = pair_dataset(store, "train")                 # ray.data.Dataset over DIR/train/*.parquet
    batch = next(ds.iter_torch_batches(batch_size=4096))
    tensors = expand_pairs(batch, n_bins=manifest["n_bins"])
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from comical.data_io.errors import InputError

SPLITS = ("train", "val", "test")
PAIR_SCHEMA = pa.schema([
    ("subject", pa.int32()),  # row in subjects.parquet
    ("snp", pa.int16()),  # index into manifest["snps"]
    ("idp", pa.int16()),  # index into manifest["idps"]
    ("genotype_token", pa.int8()),  # index into manifest["vocabulary"]; 0 = missing call
    ("idp_bin", pa.int16()),  # PLE bin of this subject's IDP value
    ("idp_frac", pa.float32()),  # position inside the bin, [0, 1)
    ("disease", pa.int8()),  # index into manifest["diseases"]: the disease that mediates the pair
])
ROW_GROUP_ROWS = 1 << 18  # 256k pairs (4 MiB of columns): small enough to stream, large enough to compress


def write_pair_split(folder: Path, columns: dict[str, np.ndarray], *, rows_per_file: int = 1 << 22) -> int:
    """Write one split as `part-00000.parquet`, ... (zstd, 256k-row groups); return the number of pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(columns["subject"])
    for part, start in enumerate(range(0, max(n, 1), rows_per_file)):
        table = pa.table({f.name: pa.array(columns[f.name][start:start + rows_per_file], type=f.type)
                          for f in PAIR_SCHEMA}, schema=PAIR_SCHEMA)
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=ROW_GROUP_ROWS,
                       compression="zstd")
    return n


def read_manifest(store: str | Path) -> dict:
    """The store's manifest.json, checked to be a pair store."""
    path = Path(store) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{store}: not a pair store (no manifest.json); make one with `comical pairs`") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in ("buckets", "snps", "idps", "vocabulary", "n_bins", "splits") if k not in manifest]
    if missing:
        raise InputError(f"{path}: not a pair-store manifest (missing {missing})")
    return manifest


def pair_dataset(store: str | Path, split: str):
    """The split as a Ray Data dataset (one row per pair, the PAIR_SCHEMA columns)."""
    from comical.data_io.ray_parquet import read_parquet

    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {SPLITS}")
    read_manifest(store)
    return read_parquet(str(Path(store) / split), schema=PAIR_SCHEMA)


def ple_vectors(idp_bin, idp_frac, n_bins: int):
    """PLE vectors (pairs x n_bins) in torch: ones before the bin, the fraction at it, zeros after."""
    import torch

    position = torch.arange(n_bins, device=idp_bin.device)
    bin_ = idp_bin.long().unsqueeze(1)
    return (position < bin_).to(idp_frac.dtype) + (position == bin_).to(idp_frac.dtype) * idp_frac.unsqueeze(1)


def expand_pairs(batch: dict, n_bins: int) -> dict:
    """A batch of stored columns (torch tensors) -> the encoders' inputs: ids as int64, PLE as float32."""
    return {
        "snp": batch["snp"].long(),
        "genotype_token": batch["genotype_token"].long(),
        "idp": batch["idp"].long(),
        "ple": ple_vectors(batch["idp_bin"], batch["idp_frac"].float(), n_bins),
        "disease": batch["disease"].long(),
        "subject": batch["subject"].long(),
    }
