"""Paper 001's simulation (section 3.1): character images rotated by a genetic latent trait.

A population of subjects is fixed by a seed: each has a character (class and font, stratified over the 62 classes),
its handwriting jitter (data_io/characters.py), genotypes at S causal variants G_ij ~ Binomial(2, f_j) with
f_j ~ U(0.05, 0.5), genotypes at 1,000 null variants drawn the same way (never shown to a model: the negative
control of the embedding GWAS, enough to see its calibration), effects beta_j in {-1, 1} with equal probability, and environmental noise
z_n ~ N(0, I). A setting then gives

    z = sqrt(h_g) * std(G beta) + sqrt(1 - h_g) * std(z_n)          (eq. 4; std = standardised over the population)
    alpha = alpha_max * tanh(c * z)                                  (degrees; c = 0.5, so |c z| < 1 for 95% of
                                                                      subjects, where tanh is nearly linear)

and every image is rotated by its alpha. Only z and alpha change between settings of h_g and alpha_max: the same
subjects keep their genotypes, characters and handwriting. The first `n_test` subjects are the fixed test set;
training split k draws its training and validation subjects from its own pool of the rest (`pool` subjects, disjoint
from the other splits' pools), so the splits' spread is that of independent training samples.

A data set folder (`write_split`), read by the `sim-*` tasks (distributed/tasks/rotation.py):

    manifest.json       format, the setting, the split, sizes, c, the causal effects and frequencies
    train/, val/, test/ part-00000.parquet: row (the subject), label, font, z, alpha, image (784 uint8, row-major
                        28 x 28), genotypes (S int8, the model's genetic input)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from comical.data_io.arrow_lists import to_fixed_list
from comical.data_io.characters import CLASSES, FONTS, render
from comical.data_io.output_dir import write_atomic

FORMAT = "comical rotation simulation 1"
TANH_SCALE = 0.5  # c of alpha = alpha_max tanh(c z)


@dataclasses.dataclass(frozen=True)
class Population:
    """The subjects of one seed (everything but the setting's z and alpha)."""

    labels: np.ndarray  # (n,) class index into CLASSES
    fonts: np.ndarray  # (n,) index into FONTS
    genotypes: np.ndarray  # (n, S) int8, causal
    null_genotypes: np.ndarray  # (n, N_NULL) int8, no effect
    beta: np.ndarray  # (S,) +-1
    frequency: np.ndarray  # (S,) allele frequency of the causal variants
    noise: np.ndarray  # (n,) z_n
    seed: int

    def latent(self, h_g: float) -> np.ndarray:
        """z of eq. 4 for genetic variance explained h_g."""
        if not 0.0 <= h_g <= 1.0:
            raise ValueError(f"h_g {h_g}: expected 0..1")
        return np.sqrt(h_g) * _standardise(self.genotypes @ self.beta) + np.sqrt(1 - h_g) * _standardise(self.noise)


def population(n: int, n_variants: int, *, seed: int, n_null: int = 1000) -> Population:
    """n subjects with S = n_variants causal variants and `n_null` null variants, fixed by the seed."""
    rng = np.random.default_rng([seed, 1])
    labels = rng.permutation(np.arange(n) % len(CLASSES))  # stratified over the classes
    fonts = rng.integers(0, len(FONTS), size=n)
    frequency = rng.uniform(0.05, 0.5, size=n_variants)
    genotypes = rng.binomial(2, frequency, size=(n, n_variants)).astype(np.int8)
    null = rng.binomial(2, rng.uniform(0.05, 0.5, size=n_null), size=(n, n_null)).astype(np.int8)
    beta = rng.choice([-1.0, 1.0], size=n_variants)
    return Population(labels, fonts, genotypes, null, beta, frequency, rng.normal(size=n), seed)


def angles(z: np.ndarray, alpha_max: float) -> np.ndarray:
    """alpha = alpha_max tanh(c z), degrees."""
    return alpha_max * np.tanh(TANH_SCALE * z)


def split_rows(n: int, n_test: int, pool: int, n_train: int, n_val: int, split: int,
               seed: int) -> dict[str, np.ndarray]:
    """Subjects of each part: the fixed test set (the first n_test), and split `split`'s training and validation
    subjects drawn from its own pool, subjects n_test + split * pool up to the next pool."""
    start = n_test + split * pool
    if n_train + n_val > pool or start + pool > n:
        raise ValueError(f"split {split}: {n_train} training + {n_val} validation subjects from a pool of {pool} "
                         f"after {n_test} test subjects: the population has {n}")
    mine = np.random.default_rng([seed, 2, split]).permutation(np.arange(start, start + pool))
    return {"train": np.sort(mine[:n_train]), "val": np.sort(mine[n_train:n_train + n_val]), "test": np.arange(n_test)}


def write_split(folder: Path, people: Population, *, h_g: float, alpha_max: float, n_test: int, pool: int,
                n_train: int, n_val: int, split: int, test_images: np.ndarray | None = None) -> dict:
    """One setting and training split as a data set folder (see the module docstring); returns the manifest.
    `test_images`: the test set's images of this setting when already rendered (they do not depend on the split)."""
    z = people.latent(h_g)
    alpha = angles(z, alpha_max)
    rows = split_rows(len(z), n_test, pool, n_train, n_val, split, people.seed)
    for part, index in rows.items():
        images = test_images if part == "test" and test_images is not None else \
            render(people.labels[index], people.fonts[index], alpha[index], seed=people.seed, rows=index)
        columns = {"row": pa.array(index.astype(np.int64)), "label": pa.array(people.labels[index].astype(np.int16)),
                   "font": pa.array(people.fonts[index].astype(np.int16)), "z": pa.array(z[index]),
                   "alpha": pa.array(alpha[index]), "image": to_fixed_list(images.reshape(len(index), -1)),
                   "genotypes": to_fixed_list(people.genotypes[index])}
        (folder / part).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), folder / part / "part-00000.parquet", compression="zstd")
    manifest = {"format": FORMAT, "h_g": h_g, "alpha_max": alpha_max, "tanh_scale": TANH_SCALE, "split": split,
                "seed": people.seed, "n_population": len(z), "pool": pool, "n_variants": int(people.genotypes.shape[1]),
                "splits": {part: int(len(index)) for part, index in rows.items()},
                "beta": people.beta.tolist(), "frequency": people.frequency.tolist()}
    write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def test_images(people: Population, *, h_g: float, alpha_max: float, n_test: int) -> np.ndarray:
    """The fixed test set's images of a setting (rendered once, shared by its splits)."""
    index = np.arange(n_test)
    alpha = angles(people.latent(h_g), alpha_max)
    return render(people.labels[index], people.fonts[index], alpha[index], seed=people.seed, rows=index)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()
