"""Tissue masks on working images.

Background is estimated as the median colour of the image border (bright-field glass is white, dark-field
or fluorescence backgrounds are dark: both work), tissue is what differs from it by more than an
Otsu threshold on the colour distance (floored, so a blank slide's noise never counts as tissue).
On a pale stain such as cytokeratin IHC, Otsu splits the strongly stained structures from the pale
tissue instead of tissue from glass: when its mask holds less than half of what stands clearly above
the glass noise, the threshold drops to a few noise levels above the background instead. Otsu stays
otherwise, because the low threshold also takes in faint smears and out-of-focus margins.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import InputError

MIN_CONTRAST = 18.0  # RGB distance (0..441) below which nothing is called tissue


def tissue_mask(rgb: np.ndarray, min_fraction: float = 0.005, source: str | None = None
                ) -> tuple[np.ndarray, float]:
    """Boolean mask (H, W) and its tissue fraction. Raises InputError(source) on a blank slide."""
    from skimage.filters import threshold_otsu

    image = np.asarray(rgb, dtype=np.float32)
    h, w = image.shape[:2]
    band = max(1, int(round(0.02 * min(h, w))))
    border = np.concatenate([image[:band].reshape(-1, 3), image[-band:].reshape(-1, 3),
                             image[:, :band].reshape(-1, 3), image[:, -band:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    distance = np.sqrt(((image - background) ** 2).sum(axis=2))
    distance = ndimage.gaussian_filter(distance, sigma=max(1.0, min(h, w) / 512))
    if float(distance.max()) - float(distance.min()) < 1e-3:
        threshold = np.inf
    else:
        noise = float(np.median(np.sqrt(((border - background) ** 2).sum(axis=1))))
        otsu = max(float(threshold_otsu(distance)), MIN_CONTRAST)
        near_glass = max(MIN_CONTRAST + 4 * noise, MIN_CONTRAST)
        split_tissue = near_glass < otsu and (distance > otsu).mean() < 0.5 * (distance > near_glass).mean()
        threshold = near_glass if split_tissue else otsu
    mask = distance > threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    mask = _drop_small_components(mask, min_pixels=max(16, int(1e-4 * h * w)))
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    fraction = float(mask.mean())
    if fraction < min_fraction:
        raise InputError(source, f"no tissue found: {fraction:.2%} of the slide differs from its "
                                 f"background (need at least {min_fraction:.2%}); is the slide blank?")
    return mask, fraction


def _drop_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """Remove connected specks smaller than min_pixels (dust, debris). Plain ndimage: the
    scikit-image equivalent changed its keyword between versions the conda envs pin."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def tissue_tiles(mask: np.ndarray, tile: int, min_tissue: float) -> np.ndarray:
    """(N, 4) int32 tiles (x, y, w, h) in working pixels whose tissue share is at least `min_tissue`."""
    h, w = mask.shape
    tiles = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            cell = mask[y:y + tile, x:x + tile]
            if cell.mean() >= min_tissue:
                tiles.append((x, y, cell.shape[1], cell.shape[0]))
    return np.asarray(tiles, dtype=np.int32).reshape(-1, 4)
