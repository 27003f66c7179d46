"""Simulated brain volumes: per-subject T1- and T2-weighted images made offline from the MNI152 templates.

nilearn ships the ICBM152 2009 templates (T1, grey- and white-matter probability maps) inside its wheel; its atlases
are downloaded, so the regions here are derived from the templates instead (`Template`):
- the grey-matter map (probability > 0.25) is cut into one parcel per IDP by k-means on voxel coordinates, each
  hemisphere on its own (names with Left/Right), the midline strip (|x| < 6 mm) for the vermis and brain stem;
  the 15 FIRST subcortical names take the parcels nearest the brain's centre, the FAST cortical and cerebellar
  names (in UK Biobank's order, which runs roughly front to back) take the others sorted front to back. The
  names label parcels of a k-means cut: they are not the Harvard-Oxford regions of the same name;
- the parcels are written as images/atlas.nii.gz (label = row of images/atlas_labels.csv, -1 outside);
- cerebrospinal fluid is the brain mask minus grey and white matter; the ventricles are its part within 30 mm of
  the centre.
A subject's volume (`_subject_maps`, `_contrast`):
- each parcel's grey matter scaled by the subject's IDP over the cohort's mean (regional grey-matter scaling);
- age: cortex thinned (grey matter x (1 - 0.04 age_z)) and ventricles enlarged (scaled about their centre by
  1 + 0.15 age_z, pushing out the tissue they cover); tissue lost becomes CSF (the fractions sum to 1 in the brain);
- the planted genetic latent (truth/image_latent.parquet): the planted AD liability of AD's causal catalog variants
  (a weighted sum with their planted effects, standardised; listed in truth/image_latent_variants.parquet); it scales grey matter by (1 + LATENT_EFFECT x latent) under a Gaussian blob (sd 8 mm) centred on
  one parcel (truth/image_latent.json names it);
- head size: the whole volume scaled about the centre by the cube root of the subject's total IDP volume relative
  to the cohort's, after regressing out age (atrophy shrinks the brain, not the head);
- contrast: T1 (white matter bright, CSF dark) and T2 (CSF bright) from the same tissue maps, each with its own
  smooth multiplicative bias field and Gaussian noise; stored as uint8 with a per-volume scale (data_io.images);
- only with `--signal K > 1`, a second genetic latent seen in T2 alone (paper 003 needs content the two contrasts do
  not share): MS's planted liability from its causal catalog variants (truth/image_latent_t2.parquet, its variants
  in truth/image_latent_t2_variants.parquet) brightens white matter in T2, x (1 + T2_LATENT_EFFECT x sqrt(K - 1) x
  latent) under a Gaussian blob (sd 10 mm) beside the ventricles, as MS lesions do. None at K <= 1: the default
  cohort's volumes are as before.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
from scipy import ndimage

from comical.data_io.ukb_fields import FIRST_IDPS, IDPS

MODALITIES = ("t1", "t2")
# tissue intensities (arbitrary units): T1 white > grey > CSF; T2 CSF > grey > white
_INTENSITY = {"t1": {"gm": 0.55, "wm": 0.85, "csf": 0.12}, "t2": {"gm": 0.55, "wm": 0.35, "csf": 1.0}}
_NOISE_SD = {"t1": 0.02, "t2": 0.03}
LATENT_EFFECT = 0.15  # grey matter x (1 + this x latent) at the blob's centre
T2_LATENT_EFFECT = 0.1  # T2 white matter x (1 + this x sqrt(K - 1) x the T2-only latent) at its blob's centre
T2_LATENT_OFFSET_MM = (20.0, 0.0, 10.0)  # its blob's centre from the ventricles' (right, periventricular)
_LATENT_REGION = "Volume_of_grey_matter_in_Left_Precuneous_Cortex"


@dataclasses.dataclass
class Template:
    """The MNI152 tissue maps at one voxel size, cropped to the brain, and the IDP parcels cut from them."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray  # the CSF near the centre (probability)
    inside: np.ndarray  # brain mask: grey, white and CSF fractions sum to 1 here
    labels: np.ndarray  # parcel of each voxel: index into IDPS, -1 outside grey matter
    affine: np.ndarray  # voxel -> MNI mm of the cropped grid
    voxel_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    def mm(self) -> np.ndarray:
        """MNI coordinates (mm) of every voxel, shape + (3,)."""
        grid = np.stack(np.meshgrid(*(np.arange(s) for s in self.shape), indexing="ij"), -1)
        return grid @ self.affine[:3, :3].T + self.affine[:3, 3]


def load_template(voxel_mm: float, seed: int = 0) -> Template:
    """The templates resampled to `voxel_mm` (nilearn, offline), cropped to the brain mask plus one voxel."""
    import warnings

    from nilearn import datasets, image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notes on resampling and its future defaults
        maps = {name: image.resample_img(load(resolution=1), target_affine=np.diag([voxel_mm] * 3),
                                         interpolation="continuous", force_resample=True, copy_header=True)
                for name, load in (("gm", datasets.load_mni152_gm_template), ("wm", datasets.load_mni152_wm_template),
                                   ("mask", datasets.load_mni152_brain_mask))}
    affine = maps["gm"].affine
    gm, wm, mask = (np.clip(np.asarray(maps[k].get_fdata(), np.float32), 0, 1) for k in ("gm", "wm", "mask"))
    inside = ((mask > 0.5) | (gm > 0.1) | (wm > 0.1))
    lo = np.maximum(np.argwhere(inside).min(0) - 1, 0)
    hi = np.argwhere(inside).max(0) + 2
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    gm, wm, inside = gm[crop], wm[crop], inside[crop]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo
    total = np.maximum(gm + wm, 1e-6)
    over = total > 1  # the two maps can overlap after resampling
    gm, wm = np.where(over, gm / total, gm), np.where(over, wm / total, wm)
    csf = np.where(inside, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)
    inside = inside.astype(np.float32)
    template = Template(gm, wm, csf, np.zeros_like(csf), inside, np.full(gm.shape, -1, np.int16), affine, voxel_mm)
    xyz = template.mm()
    centre = (xyz * inside[..., None]).sum((0, 1, 2)) / inside.sum()
    template.ventricles = np.where(np.linalg.norm(xyz - centre, axis=-1) < 30, csf, 0).astype(np.float32)
    template.labels = _parcellate(gm, xyz, centre, seed)
    return template


def _parcellate(gm: np.ndarray, xyz: np.ndarray, centre: np.ndarray, seed: int) -> np.ndarray:
    """One k-means parcel of the grey matter per IDP (see the module's docstring)."""
    from sklearn.cluster import KMeans

    labels = np.full(gm.shape, -1, np.int16)
    grey = gm > 0.25
    x = xyz[..., 0]
    sides = {"Left": grey & (x < -6), "Right": grey & (x > 6), "": grey & (np.abs(x) <= 6)}
    for side, where in sides.items():
        names = [n for n in IDPS if (side in n.split("_") if side else not ({"Left", "Right"} & set(n.split("_"))))]
        points = xyz[where]
        if len(points) < len(names):
            raise ValueError(f"{len(points)} grey-matter voxels on side {side or 'midline'!r} for {len(names)} "
                             "parcels: use a smaller voxel size")
        km = KMeans(len(names), n_init=1, random_state=seed).fit(points)
        centres = km.cluster_centers_
        first = [n for n in names if n in FIRST_IDPS]
        central = list(np.argsort(np.linalg.norm(centres - centre, axis=1))[:len(first)])
        rest = [k for k in np.argsort(-centres[:, 1]) if k not in central]  # front (high y) to back
        parcel_name = dict(zip(central, first)) | dict(zip(rest, [n for n in names if n not in FIRST_IDPS]))
        voxels = np.argwhere(where)
        labels[tuple(voxels.T)] = np.array([IDPS.index(parcel_name[k]) for k in range(len(names))])[km.labels_]
    return labels


def write_images(out: Path, *, eid: np.ndarray, idps: np.ndarray, age: np.ndarray, latent_genotypes: np.ndarray,
                 variant_ids: list[str], weights: np.ndarray, freq: np.ndarray, disease: str,
                 modalities=MODALITIES, voxel_mm: float = 4.0, seed: int = 0, signal: float = 1.0,
                 t2_latent: dict | None = None) -> dict:
    """`out/images/` (shards + manifest, data_io.images, and the parcels) and the latent's truth in `out/truth/`;
    returns the image manifest. `idps`: subjects x IDPS volumes; the latent is the weighted sum (`weights`) of the
    standardised true genotypes `latent_genotypes` (subjects x variants `variant_ids`, allele frequencies `freq`):
    the planted genetic liability of `disease` they carry, so a model guided by that disease's variant panel has an
    image pattern to find. `signal` (the cohort's --signal K) scales the latent's effect by sqrt(K). `t2_latent`
    (genotypes, variant_ids, weights, freq, disease; the caller gives it only when K > 1): the T2-only latent."""
    from comical.data_io.images import write_image_store

    effect = LATENT_EFFECT * np.sqrt(signal)  # exactly LATENT_EFFECT at K = 1
    rng = np.random.default_rng(np.random.SeedSequence([seed, 16]))
    template = load_template(voxel_mm, seed)
    latent = _liability(latent_genotypes, weights, freq)
    blob = _blob(template, IDPS.index(_LATENT_REGION))
    t2_shift = np.zeros(len(eid))
    if t2_latent is not None:
        t2_shift = _liability(t2_latent["genotypes"], t2_latent["weights"], t2_latent["freq"])
        t2_blob = _blob_at(template, _ventricles_centre(template) + np.array(T2_LATENT_OFFSET_MM), sd_mm=10.0)
        t2_effect = T2_LATENT_EFFECT * np.sqrt(max(signal - 1, 0.0))
    ratio = idps / idps.mean(0)
    age_z = (age - age.mean()) / age.std()
    total = np.log(idps.sum(1))
    head = np.exp((total - np.polyval(np.polyfit(age_z, total, 1), age_z)) / 3)  # head size: total volume, not atrophy

    def volumes():
        for i in range(len(eid)):
            tissue = _subject_maps(template, ratio[i], age_z[i], latent[i] * effect, blob)
            if t2_latent is not None:  # white matter brighter (or darker) in T2 alone; never below a tenth
                tissue["t2_wm_gain"] = np.maximum(1 + t2_effect * t2_shift[i] * t2_blob, 0.1)
            yield eid[i], {m: _contrast(tissue, m, head[i], rng) for m in modalities}

    manifest = write_image_store(out / "images", volumes(), len(eid), shape=template.shape,
                                 voxel_mm=template.voxel_mm, affine=template.affine, modalities=modalities)
    import nibabel  # nilearn's own dependency

    nibabel.save(nibabel.Nifti1Image(template.labels, template.affine), out / "images" / "atlas.nii.gz")
    pl.DataFrame({"label": np.arange(len(IDPS)), "idp": IDPS}).write_csv(out / "images" / "atlas_labels.csv")
    truth = out / "truth"
    truth.mkdir(exist_ok=True)
    pl.DataFrame({"eid": eid, "latent": latent}).write_parquet(truth / "image_latent.parquet")
    pl.DataFrame({"variant_id": variant_ids, "weight": weights}).write_parquet(
        truth / "image_latent_variants.parquet")
    (truth / "image_latent.json").write_text(json.dumps({
        "region": _LATENT_REGION, "effect": f"grey matter x (1 + {effect:g} x latent) under a Gaussian blob "
        "of sd 8 mm at the region's centre", "latent": "standardised weighted sum of the standardised genotypes of "
        "image_latent_variants.parquet: the planted liability of the disease its causal catalog variants carry",
        "disease": disease, "n_variants": len(variant_ids),
        **({"t2_only": {"disease": t2_latent["disease"], "n_variants": len(t2_latent["variant_ids"]),
                        "effect": f"T2 white matter x (1 + {t2_effect:g} x latent) under a Gaussian blob of sd 10 mm "
                                  f"centred {T2_LATENT_OFFSET_MM} mm from the ventricles' centre; T1 unchanged",
                        "latent": "image_latent_t2.parquet (eid, latent), variants and weights in "
                                  "image_latent_t2_variants.parquet"}} if t2_latent is not None else {})},
        indent=2) + "\n")
    if t2_latent is not None:
        pl.DataFrame({"eid": eid, "latent": t2_shift}).write_parquet(truth / "image_latent_t2.parquet")
        pl.DataFrame({"variant_id": t2_latent["variant_ids"], "weight": t2_latent["weights"]}).write_parquet(
            truth / "image_latent_t2_variants.parquet")
    return manifest


def _liability(genotypes: np.ndarray, weights: np.ndarray, freq: np.ndarray) -> np.ndarray:
    """The standardised weighted sum of standardised true allele counts: a disease's planted liability."""
    g = (genotypes - 2 * freq) / np.sqrt(2 * freq * (1 - freq))
    latent = g @ weights
    return (latent - latent.mean()) / latent.std()


def _ventricles_centre(template: Template) -> np.ndarray:
    """The ventricles' centre of mass in MNI mm."""
    voxel = np.array(ndimage.center_of_mass(template.ventricles))
    return template.affine[:3, :3] @ voxel + template.affine[:3, 3]


def _blob(template: Template, label: int) -> np.ndarray:
    return _blob_at(template, template.mm()[template.labels == label].mean(0), sd_mm=8.0)


def _blob_at(template: Template, centre: np.ndarray, sd_mm: float) -> np.ndarray:
    return np.exp(-((template.mm() - centre) ** 2).sum(-1) / (2 * sd_mm ** 2)).astype(np.float32)


def _subject_maps(t: Template, ratio: np.ndarray, age_z: float, shift: float, blob: np.ndarray) -> dict:
    """One subject's grey, white and CSF maps; `shift`: the latent times its effect (grey matter x (1 + shift) at
    the blob's centre, never below a tenth: a strong --signal must not make tissue negative)."""
    scale = np.where(t.labels >= 0, ratio[t.labels.clip(min=0)], 1.0).astype(np.float32)
    gm = t.gm * scale * (1 - 0.04 * age_z) * np.maximum(1 + shift * blob, 0.1)
    ventricles = _zoom(t.ventricles, 1 + 0.15 * np.clip(age_z, -2, 2), ndimage.center_of_mass(t.ventricles))
    keep = 1 - np.clip(ventricles - t.ventricles, 0, 1)  # tissue the enlarged ventricles now cover
    gm, wm = np.clip(gm * keep, 0, 1), t.wm * keep
    # what the tissue lost (or gained) is CSF: the fractions sum to 1 in the brain
    return {"gm": gm, "wm": wm, "csf": t.inside * np.clip(1 - gm - wm, 0, 1)}


def _zoom(volume: np.ndarray, factor: float, centre=None) -> np.ndarray:
    """`volume` scaled by `factor` about `centre` (voxels; default the grid's centre), linear, zero outside."""
    centre = (np.array(volume.shape) - 1) / 2 if centre is None else np.asarray(centre)
    return ndimage.affine_transform(volume, np.eye(3) / factor, offset=centre - centre / factor, order=1)


def _contrast(tissue: dict, modality: str, head: float, rng: np.random.Generator) -> np.ndarray:
    """One modality's volume: tissue intensities, head-size scaling, a smooth bias field and noise."""
    gain = {"wm": tissue["t2_wm_gain"]} if modality == "t2" and "t2_wm_gain" in tissue else {}
    values = sum(_INTENSITY[modality][k] * tissue[k] * gain.get(k, 1) for k in ("gm", "wm", "csf"))
    values = _zoom(values.astype(np.float32), head)
    axes = [np.linspace(-1, 1, s) for s in values.shape]
    grid = np.meshgrid(*axes, indexing="ij")
    bias = 1 + sum(c * a for c, a in zip(rng.normal(0, 0.05, 3), grid)) + rng.normal(0, 0.03) * grid[0] * grid[1]
    noisy = values * bias + rng.normal(0, _NOISE_SD[modality], values.shape)
    return np.clip(noisy, 0, None).astype(np.float32)
