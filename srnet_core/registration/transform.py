"""The whole transform, written down once: the affine step, then the dense field.

Fixed working pixel p (centre convention, see coords.py) corresponds to the moving working point

    T(p) = A (p + u(p))          A: 2x3 affine, fixed working -> moving working coordinates

so the registered moving image is moving(T(p)): first the affine-resampled moving image, then the
field on the fixed grid (DESIGN.md: `affine` then `field`, backward). Fixed landmarks go to the moving
frame by evaluating T; moving landmarks come to the fixed frame by solving p + u(p) = A^-1 q with a
fixed-point iteration (a contraction wherever |grad u| < 1, i.e. for any sensible smooth field).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..coords import full_to_work, work_to_full


def sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear u at (N, 2) working points (x, y); outside the grid the border value is used."""
    coords = [points[:, 1], points[:, 0]]
    return np.stack([ndimage.map_coordinates(field[c].astype(np.float64), coords, order=1, mode="nearest")
                     for c in range(2)], axis=1)


@dataclass
class Transform:
    affine: np.ndarray            # (2, 3)
    field: np.ndarray             # (2, H, W) on the fixed working grid, pixels; may be zeros
    fixed_scale: tuple[float, float]
    moving_scale: tuple[float, float]

    def fixed_to_moving_work(self, p: np.ndarray) -> np.ndarray:
        r = p + sample_field(self.field, p)
        return r @ self.affine[:, :2].T + self.affine[:, 2]

    def moving_to_fixed_work(self, q: np.ndarray, iterations: int = 100, tol: float = 1e-6) -> np.ndarray:
        r = (q - self.affine[:, 2]) @ np.linalg.inv(self.affine[:, :2]).T
        p = r.copy()
        for _ in range(iterations):
            nxt = r - sample_field(self.field, p)
            if np.abs(nxt - p).max() < tol:
                return nxt
            p = nxt
        return p

    def fixed_to_moving(self, points_full: np.ndarray) -> np.ndarray:
        """Full-resolution fixed landmarks -> full-resolution moving coordinates."""
        q = self.fixed_to_moving_work(full_to_work(points_full, self.fixed_scale))
        return work_to_full(q, self.moving_scale)

    def moving_to_fixed(self, points_full: np.ndarray) -> np.ndarray:
        """Full-resolution moving landmarks -> full-resolution fixed coordinates (ANHIR's warped
        moving landmarks)."""
        p = self.moving_to_fixed_work(full_to_work(points_full, self.moving_scale))
        return work_to_full(p, self.fixed_scale)
