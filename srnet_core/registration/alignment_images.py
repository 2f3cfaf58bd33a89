"""What the pre-alignment compares: two stain-independent views of a working RGB image, computed the
same way for every stain and without the prepare stage's tissue mask.

- `occupancy`: how much of the neighbourhood is stained at all (anything that differs from the glass
  by more than a few noise levels), smoothed over ~1.5 % of the image. Sparse tissue (alveolar walls,
  loose stroma) counts as tissue in a strong H&E and in a pale IHC stain alike, where an Otsu mask keeps
  only what one stain makes dark.
- `structure`: darkness rank-normalised over the whole frame (any monotonic stain change leaves it
  unchanged), so dense tissue is bright and glass dark in both images.

The glass colour is read off the brightest pixels (the darkest for a dark-field image), not off the
image border, so a frame that tissue fills edge to edge still has a background estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
MIN_STAIN = 10.0        # RGB distance from the glass always called stained (JPEG noise is ~2-4)
NOISE_LEVELS = 4.0      # ... or this many times the glass's own noise, when that is larger


@dataclass
class AlignmentViews:
    occupancy: np.ndarray     # (H, W) float32 in [0, 1]
    structure: np.ndarray     # (H, W) float32 in [0, 1]
    stained: np.ndarray       # (H, W) bool: the per-pixel decision occupancy smooths
    glass: np.ndarray         # (3,) the background colour found
    threshold: float          # RGB distance above which a pixel is stained

    def stack(self) -> np.ndarray:
        """(2, H, W): occupancy, structure (the channels of affine.similarity)."""
        return np.stack([self.occupancy, self.structure]).astype(np.float32)

    def mask(self, level: float = 0.5) -> np.ndarray:
        return self.occupancy >= level


def alignment_views(rgb: np.ndarray) -> AlignmentViews:
    image = np.asarray(rgb, dtype=np.float32)[..., :3]
    h, w = image.shape[:2]
    lum = image @ LUMA
    band = max(1, int(round(0.02 * min(h, w))))
    border = np.concatenate([lum[:band].ravel(), lum[-band:].ravel(), lum[:, :band].ravel(), lum[:, -band:].ravel()])
    dark_field = float(np.median(border)) < float(np.median(lum)) and float(np.median(lum)) < 100
    lo, hi = np.percentile(lum, [1, 99])
    glass_pixels = lum <= lo if dark_field else lum >= hi
    glass = np.median(image[glass_pixels], axis=0)
    distance = np.sqrt(((image - glass) ** 2).sum(axis=2))
    noise = float(np.median(distance[glass_pixels])) + 1e-3
    threshold = max(MIN_STAIN, NOISE_LEVELS * noise)
    stained = ndimage.gaussian_filter(distance, 1.0) > threshold
    occupancy = ndimage.gaussian_filter(stained.astype(np.float32), max(1.0, 0.015 * max(h, w)), mode="nearest")
    darkness = (lum if dark_field else 255.0 - lum).astype(np.float32)
    # rank of each value, equal values sharing the mean of their ranks (so flat glass stays flat)
    uniq, inverse, counts = np.unique(darkness.ravel(), return_inverse=True, return_counts=True)
    below = np.cumsum(counts) - counts
    ranks = ((below + 0.5 * (counts - 1)) / max(1, darkness.size - 1)).astype(np.float32)[inverse]
    return AlignmentViews(occupancy.astype(np.float32), ranks.reshape(h, w), stained, glass, float(threshold))
