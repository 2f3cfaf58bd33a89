"""Coordinate conventions, written down once.

Points are (x, y) = (column, row) in pixels of the full-resolution image, origin top-left, and an
integer coordinate is the *centre* of that pixel (as numpy indexing and ANHIR/ImageJ landmark files
have it). A working image made by downsampling keeps pixel centres aligned with the area they average
(as pyramid levels, JPEG shrink-on-load and libvips do), so with s = working px per full-res px:

    x_work = (x_full + 0.5) * s - 0.5        x_full = (x_work + 0.5) / s - 0.5

This departs from DESIGN.md's `x_work = x_full * s`, which is the same formula for pixel *corners*;
with centres it would shift points by (1/s - 1)/2 full-res pixels (7.5 px for s = 1/16), enough to
matter next to ANHIR's best median rTRE (~1e-4 of the diagonal) whenever two images differ in scale.
"""

from __future__ import annotations

import numpy as np


def full_to_work(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Map (N, 2) full-resolution (x, y) to working-image (x, y); scale = (s_x, s_y)."""
    p = np.asarray(points, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    return (p + 0.5) * s - 0.5


def work_to_full(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Inverse of full_to_work."""
    p = np.asarray(points, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    return (p + 0.5) / s - 0.5
