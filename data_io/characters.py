"""Handwriting-like character images made offline, the stand-in for EMNIST (paper 001 section 3.1), which cannot be
downloaded here.

The 62 EMNIST classes (0-9, A-Z, a-z) are rendered from 12 fonts that matplotlib ships (DejaVu, STIX and Computer
Modern: sans, serif, mono, bold, italic) with FreeType, at twice the output resolution (56 x 56). Each sample then
gets its own jitter, so no two images of a class are alike: a stroke width (grey dilation by 1-3 pixels), a random
affine map without rotation (scale 0.8-1.1 per axis, shear +-0.2, shift +-2 pixels) and an elastic displacement (a
Gaussian-smoothed random field, sigma 4 px, about 1.5 px), then the rotation the simulation asks for, all in one
bilinear resampling; the 56 x 56 result is averaged 2 x 2 to 28 x 28 uint8, as EMNIST's size.

Rotations are counter-clockwise in degrees as the image is displayed (row 0 at the top), the convention of
`scipy.ndimage.rotate`, which the tests compare with.
"""

from __future__ import annotations

import functools
import os
import string
from pathlib import Path

import numpy as np
from scipy import ndimage

CLASSES = string.digits + string.ascii_uppercase + string.ascii_lowercase  # EMNIST ByClass order: 62 classes
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf",
         "DejaVuSerif-Italic.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf",
         "cmti10.ttf")
SIZE = 28  # output pixels (EMNIST)
_FINE = 2 * SIZE  # jitter and rotation are resampled at twice the resolution, then averaged down
_BOX = 40  # a glyph's larger side in fine pixels (EMNIST centres characters in a 20 x 20 box of the 28 x 28)


@functools.cache
def glyph_templates() -> np.ndarray:
    """(classes, fonts, 56, 56) float32 in [0, 1]: every class in every font, scaled to the box and centred by its
    bounding box."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    out = np.zeros((len(CLASSES), len(FONTS), _FINE, _FINE), np.float32)
    for f, name in enumerate(FONTS):
        font = FT2Font(os.fspath(folder / name))
        for c, char in enumerate(CLASSES):
            font.set_size(96, 72)
            font.set_text(char)
            font.draw_glyphs_to_bitmap(antialiased=True)
            ink = np.asarray(font.get_image(), np.float32) / 255.0
            rows, cols = np.flatnonzero(ink.max(1) > 0.05), np.flatnonzero(ink.max(0) > 0.05)
            ink = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            zoom = _BOX / max(ink.shape)
            ink = np.clip(ndimage.zoom(ink, zoom, order=1), 0, 1)
            top, left = (_FINE - ink.shape[0]) // 2, (_FINE - ink.shape[1]) // 2
            out[c, f, top:top + ink.shape[0], left:left + ink.shape[1]] = ink[:_FINE - top, :_FINE - left]
    return out


def render(labels: np.ndarray, fonts: np.ndarray, angles: np.ndarray, *, seed: int, rows: np.ndarray | None = None,
           jitter: bool = True) -> np.ndarray:
    """(n, 28, 28) uint8 images of classes `labels` in fonts `fonts`, each rotated by its angle in `angles`
    (degrees, counter-clockwise), with its own jitter (none with `jitter=False`).

    Sample i's jitter is drawn from (seed, rows[i]) (rows: the subjects, default 0..n-1), not from its angle or its
    place in this call: the same subjects rotated by other angles (another h_g or alpha_max of the simulation)
    keep their handwriting."""
    templates = glyph_templates()
    n = len(labels)
    rows = np.arange(n) if rows is None else rows
    out = np.empty((n, SIZE, SIZE), np.uint8)
    centre = (_FINE - 1) / 2
    grid = np.stack(np.meshgrid(np.arange(_FINE), np.arange(_FINE), indexing="ij")).reshape(2, -1) - centre
    for i in range(n):
        sample = np.random.default_rng([seed, int(rows[i])]) if jitter else None
        image = templates[labels[i], fonts[i]]
        jitter_map, shift, elastic = np.eye(2), np.zeros(2), 0.0
        if sample is not None:
            width = int(sample.integers(1, 4))
            if width > 1:
                image = ndimage.grey_dilation(image, size=(width, width))
            scale = sample.uniform(0.8, 1.1, size=2)
            shear = sample.uniform(-0.2, 0.2)
            jitter_map = np.array([[scale[0], 0.0], [shear * scale[1], scale[1]]])
            shift = sample.uniform(-2, 2, size=2)
            field = sample.normal(size=(2, _FINE, _FINE))
            elastic = np.stack([ndimage.gaussian_filter(d, 4.0) for d in field]).reshape(2, -1)
            elastic *= 1.5 / max(elastic.std(), 1e-12)
        # output pixel -> source pixel: undo the shift, the rotation, then the jitter map. In (row, col)
        # coordinates with rows growing downwards, a counter-clockwise turn on screen by theta is `turn`; its
        # inverse is its transpose
        theta = np.deg2rad(angles[i])
        turn = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        source = np.linalg.inv(jitter_map) @ (turn.T @ (grid - shift[:, None])) + elastic + centre
        fine = ndimage.map_coordinates(image, source, order=1, mode="constant", cval=0.0).reshape(_FINE, _FINE)
        out[i] = np.clip(fine.reshape(SIZE, 2, SIZE, 2).mean((1, 3)) * 255 + 0.5, 0, 255).astype(np.uint8)
    return out


def sample_sheet(images: np.ndarray, path: Path, *, columns: int = 16, titles: list[str] | None = None) -> None:
    """A PNG grid of images (n, 28, 28), with optional per-image titles (the class and the angle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 0.8, rows * 0.9), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k], cmap="gray", vmin=0, vmax=255)
            if titles:
                ax.set_title(titles[k], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
