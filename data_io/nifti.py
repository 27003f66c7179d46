"""Users' NIfTI volumes for the image store (`comical images import`): read with nibabel, checked, put on one grid,
intensity-normalised.

- Checks: the file exists and decompresses whole (a truncated .gz fails here, not later), the volume is 3-D (a 4-D
  file with one volume is taken as 3-D), every voxel is finite, some voxel is above 0.
- Grid: the first subject's volume, or with `voxel_mm` that volume's field of view at `voxel_mm` isotropic voxels
  (nibabel.processing.resample_to_output). A volume on another grid (shape or affine) is resampled to it with
  trilinear interpolation (nibabel.processing.resample_from_to) when `voxel_mm` is given, and refused otherwise.
- Intensity: each volume divided by the 99.5th percentile of its voxels above 0 and clipped to [0, 1], so one bright
  outlier voxel does not crush the rest and scanners' units do not matter; the divisor is reported per volume.
- An atlas is resampled to the grid with nearest-neighbour interpolation (labels stay labels).
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np

NORMALISE_PERCENTILE = 99.5
AFFINE_TOLERANCE_MM = 1e-3


class VolumeError(Exception):
    """One subject's volume cannot be used: the message says why (the caller names the subject and file)."""


@dataclasses.dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_sizes(self) -> list[float]:
        return [float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0))]

    def holds(self, shape, affine) -> bool:
        return tuple(shape) == self.shape and np.allclose(affine, self.affine, atol=AFFINE_TOLERANCE_MM)


def _load(path: Path):
    """(nibabel image, its data as float64 array), the whole file read; VolumeError when it cannot be."""
    import nibabel
    from nibabel.filebasedimages import ImageFileError

    if not path.is_file():
        raise VolumeError("missing")
    try:
        image = nibabel.load(path)
        data = np.asarray(image.dataobj, dtype=np.float64)
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as err:
        raise VolumeError(f"unreadable ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{data.ndim}-D, shape {data.shape}; expected a 3-D volume")
    return image, data


def reference_grid(path: Path, voxel_mm: float | None = None) -> Grid:
    """The store's grid from its first volume (module docstring)."""
    import nibabel
    from nibabel.processing import resample_to_output

    image, data = _load(path)
    if voxel_mm is None:
        return Grid(tuple(int(s) for s in data.shape), np.asarray(image.affine, dtype=np.float64))
    resampled = resample_to_output(nibabel.Nifti1Image(data.astype(np.float32), image.affine), voxel_mm, order=1)
    return Grid(tuple(int(s) for s in resampled.shape), np.asarray(resampled.affine, dtype=np.float64))


def read_volume(path: Path, grid: Grid, *, resample: bool) -> tuple[np.ndarray, float]:
    """(float32 volume on `grid`, normalised to [0, 1]; the divisor) of one file; VolumeError when it cannot be."""
    import nibabel
    from nibabel.processing import resample_from_to

    image, data = _load(path)
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise VolumeError(f"{bad} non-finite voxels (NaN or inf)")
    if not grid.holds(data.shape, image.affine):
        if not resample:
            raise VolumeError(f"shape {data.shape} and affine differ from the first volume's {grid.shape} grid; "
                              "give --voxel-mm to resample every volume to one grid")
        data = np.asarray(resample_from_to(nibabel.Nifti1Image(data.astype(np.float32), image.affine),
                                           (grid.shape, grid.affine), order=1).dataobj, dtype=np.float64)
    above = data[data > 0]
    if not above.size:
        raise VolumeError("no voxel above 0")
    divisor = float(np.percentile(above, NORMALISE_PERCENTILE))
    return np.clip(data / divisor, 0, 1).astype(np.float32), divisor


def resample_atlas(path: Path, grid: Grid) -> np.ndarray:
    """An atlas's integer labels on `grid` (nearest neighbour); ValueError naming what is wrong."""
    import nibabel
    from nibabel.processing import resample_from_to

    try:
        image, data = _load(path)
    except VolumeError as err:
        raise ValueError(str(err)) from None
    if not np.allclose(data, np.round(data)):
        raise ValueError("labels are not integers; expected a label atlas (one integer per region, 0 or -1 outside)")
    if not grid.holds(data.shape, image.affine):
        data = np.asarray(resample_from_to(nibabel.Nifti1Image(data.astype(np.float32), image.affine),
                                           (grid.shape, grid.affine), order=0, cval=-1).dataobj)
    return np.round(data).astype(np.int32)
