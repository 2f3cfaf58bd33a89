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
        return self._newton(r, p, tol)

    def _newton(self, r: np.ndarray, p: np.ndarray, tol: float, iterations: int = 50) -> np.ndarray:
        """Points where the fixed-point iteration did not settle (|grad u| >= 1 there: strong local
        expansion, as classical methods' fields can have) are solved for p + u(p) = r by damped Newton
        steps with the field's own Jacobian; they start from the best iterate seen."""
        def residual(x, target):
            return x + sample_field(self.field, x) - target

        res = residual(p, r)
        bad = np.hypot(*res.T) > tol
        if not bad.any():
            return p
        target = r[bad]
        grads = [np.gradient(self.field[c].astype(np.float64)) for c in range(2)]   # d/dy, d/dx per component
        x, e = p[bad].copy(), res[bad]
        for _ in range(iterations):
            coords = [x[:, 1], x[:, 0]]
            jac = np.empty((len(x), 2, 2))
            for c in range(2):
                jac[:, c, 0] = ndimage.map_coordinates(grads[c][1], coords, order=1, mode="nearest")
                jac[:, c, 1] = ndimage.map_coordinates(grads[c][0], coords, order=1, mode="nearest")
            jac[:, 0, 0] += 1.0
            jac[:, 1, 1] += 1.0
            det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
            det = np.where(np.abs(det) < 1e-9, 1e-9, det)
            step = np.stack([jac[:, 1, 1] * e[:, 0] - jac[:, 0, 1] * e[:, 1],
                             jac[:, 0, 0] * e[:, 1] - jac[:, 1, 0] * e[:, 0]], axis=1) / det[:, None]
            length = np.hypot(*step.T)[:, None]
            step *= np.minimum(1.0, 2.0 / np.maximum(length, 1e-12))      # at most 2 px per step
            trial = x - step
            trial_e = residual(trial, target)
            better = np.hypot(*trial_e.T) < np.hypot(*e.T)
            x[better], e[better] = trial[better], trial_e[better]
            if not better.any() or np.hypot(*e.T).max() < tol:
                break
        p = p.copy()
        p[bad] = x
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
