"""Augmentation of 3-D volumes on the training workers, with MONAI's random transforms (seeded per worker).

Two levels (`GemcontConfig.augment`):
- "intensity": Gaussian intensity noise (sd 0.02; simulated intensities run 0 to about 1) on half the volumes.
  Keeps every voxel where it is, so a localized pattern stays aligned across subjects.
- "spatial": the above plus a random affine (rotation up to ~6 degrees, scaling 5%, translation 2 voxels), a random
  crop of 90% of each axis padded back to the volume's shape, and Gaussian blur.
Every output keeps the input's shape. MONAI is imported when a worker builds the transform, so the engine's import
stays light. On the simulated cohort the spatial level stopped GEMCONT from learning the planted latent at 8 mm
(SCIENCE.md), hence the default is "intensity".
"""

from __future__ import annotations

import torch

LEVELS = ("off", "intensity", "spatial")


class VolumeAugment:
    """`augment(volumes)`: a batch (B, 1, X, Y, Z) -> the same shape, each volume transformed independently."""

    def __init__(self, shape: tuple[int, int, int], seed: int, level: str = "spatial"):
        from monai import transforms as T

        if level not in LEVELS[1:]:
            raise ValueError(f"augmentation level {level!r}: expected intensity or spatial")
        crop = [max(1, round(0.9 * s)) for s in shape]
        spatial = [
            T.RandAffine(prob=0.8, rotate_range=(0.1, 0.1, 0.1), scale_range=(0.05, 0.05, 0.05),
                         translate_range=(2, 2, 2), padding_mode="zeros", mode="bilinear"),
            T.RandSpatialCrop(roi_size=crop, random_size=False),
            T.ResizeWithPadOrCrop(spatial_size=shape),
        ]
        blur = [T.RandGaussianSmooth(prob=0.3, sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0))]
        noise = [T.RandGaussianNoise(prob=0.5, std=0.02)]
        self.transform = T.Compose(spatial + noise + blur if level == "spatial" else noise)
        self.transform.set_random_state(seed=seed)

    def __call__(self, volumes: torch.Tensor) -> torch.Tensor:
        out = [torch.as_tensor(self.transform(v)) for v in volumes]
        return torch.stack(out).to(volumes.dtype)
