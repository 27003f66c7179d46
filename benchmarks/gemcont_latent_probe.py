"""How much of GEMCONT's planted image latent simple image summaries carry: a probe towards its ceiling (issue 32).

    python benchmarks/gemcont_latent_probe.py COHORT [--modality t1] [--subjects 300] [--seed 0]

COHORT: a simulated cohort with images and truth (`comical simulate --images t1,t2`). On a seeded draw of subjects,
the 5-fold ridge R^2 (distributed/metrics.ridge_r2, as `test_metrics.json` reports `latent_r2_*`) of the planted
latent (truth/image_latent.parquet) from: the planted blob's weighted intensity alone (the Gaussian of sd 8 mm at the
region truth/image_latent.json names, built from the store's atlas and affine as the simulator builds it); the atlas
regions' mean intensities; both; and the raw voxels. Demo cohort (T1, 8 mm, 300 subjects), 2026-12-07: 0.018,
0.302, 0.347, 0.258. A model that knows only where the latent was planted is therefore no ceiling: the region's own
IDP variation swamps the planted scaling (the note on issue 32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel
import numpy as np
import polars as pl

from comical.data_io.images import open_image_store
from comical.data_io.ukb_fields import IDPS
from comical.distributed.metrics import ridge_r2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort", type=Path)
    parser.add_argument("--modality", default="t1")
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    store = open_image_store(args.cohort / "images")
    region = json.loads((args.cohort / "truth" / "image_latent.json").read_text())["region"]
    labels = np.asarray(nibabel.load(args.cohort / "images" / "atlas.nii.gz").dataobj).astype(int).reshape(-1)
    affine = np.array(store.manifest["affine"])
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in store.shape), indexing="ij"), -1).reshape(-1, 3)
    xyz = grid @ affine[:3, :3].T + affine[:3, 3]
    centre = xyz[labels == IDPS.index(region)].mean(0)
    blob = np.exp(-((xyz - centre) ** 2).sum(-1) / (2 * 8.0 ** 2))
    rng = np.random.default_rng(args.seed)
    eids = np.sort(store.eids[rng.permutation(len(store.eids))[:args.subjects]])
    volumes, eids = store.read(args.modality, eids)
    truth = pl.read_parquet(args.cohort / "truth" / "image_latent.parquet")
    z = truth["latent"].to_numpy()[np.searchsorted(truth["eid"].to_numpy(), eids)]
    voxels = volumes.reshape(len(volumes), -1).astype(np.float64)
    feature = voxels @ blob / blob.sum()
    means = np.stack([voxels[:, labels == k].mean(1) for k in range(len(IDPS)) if (labels == k).any()], 1)
    for name, x in (("planted blob alone", feature[:, None]), ("region means", means),
                    ("blob + region means", np.column_stack([feature, means])), ("raw voxels", voxels)):
        print(f"{name}: R^2 {ridge_r2(x, z):.3f}")


if __name__ == "__main__":
    main()
