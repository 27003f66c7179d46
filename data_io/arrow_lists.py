"""Fixed-size list columns: a 2-D numpy array (rows x width) to and from one Arrow column (how resident tasks store
a row's vector: images, genotypes, features)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def to_fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows x width) array as one fixed-size list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel()), values.shape[1])


def from_fixed_list(column: pa.ChunkedArray | pa.FixedSizeListArray, dtype) -> np.ndarray:
    """A fixed-size list column as a (rows x width) array of `dtype`."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy().astype(dtype, copy=False).reshape(len(column), -1)
