"""Pre-alignment cases with known truth, made from real tissue: what the pre-alignment must survive on
pairs it has never seen.

One texture (an image against itself re-stained: HED channels changed), exact truth:
- `restain`: most of the slide, glass border included, turned by any angle, perhaps mirrored, scaled
  0.9-1.1;
- `frame`: windows that tissue fills edge to edge (no glass border to outline): the fixed one as it is,
  the moving one about a shifted centre, turned, mirrored, scaled the same way;
- `faint`: `frame` with the moving stain also faded towards the glass, so that its sparse tissue falls
  out of an Otsu tissue mask while the fixed image's stays in (the masks disagree in area).
Two stains:
- `cross`: `frame` on a real cross-stain pair; the truth is the pair's expert landmarks, so it also
  holds the pair's own non-rigid deformation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class Case:
    name: str
    kind: str
    fixed: np.ndarray            # (H, W, 3) uint8
    moving: np.ndarray
    fixed_points: np.ndarray     # (N, 2) x, y in fixed px
    moving_points: np.ndarray    # (N, 2) the same places in moving px
    angle_deg: float
    flipped: bool
    scale: float

    @property
    def diagonal(self) -> float:
        return float(np.hypot(*self.fixed.shape[:2]))


def glass_colour(rgb: np.ndarray) -> np.ndarray:
    lum = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.median(rgb[lum >= np.percentile(lum, 99)], axis=0)


def _render(rgb: np.ndarray, matrix: np.ndarray, shape: tuple[int, int], fill: np.ndarray) -> np.ndarray:
    """Resample `rgb` so that output px q shows rgb at inv(matrix) q; matrix (2, 3) maps rgb px -> output px."""
    m = np.eye(3)
    m[:2] = matrix
    inv = np.linalg.inv(m)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])          # ndimage works in (row, col)
    s = swap @ inv @ swap
    out = np.stack([ndimage.affine_transform(rgb[..., c].astype(np.float32), s[:2, :2], s[:2, 2], output_shape=shape,
                                             order=1, cval=float(fill[c])) for c in range(3)], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _fade(rgb: np.ndarray, strength: float) -> np.ndarray:
    """Fade towards the glass: pale structures fade most, so sparse tissue drops below an Otsu mask."""
    glass = glass_colour(rgb).astype(np.float32)
    diff = rgb.astype(np.float32) - glass
    return np.clip(np.rint(glass + diff * strength), 0, 255).astype(np.uint8)


def make_case(name: str, kind: str, fixed_rgb: np.ndarray, moving_rgb: np.ndarray, fixed_points: np.ndarray,
              moving_points: np.ndarray, rng: np.random.Generator, crop: float | None = None, angle: float | None = None,
              flipped: bool | None = None, scale: float | None = None, fade: float = 0.3) -> Case:
    """One case from a pair (for the one-texture kinds, pass the same image and points twice). Points are
    px of each image; angle, flipped and scale are drawn unless given; `crop`: the fixed window's share of
    each side (None: 0.9 for `restain`, 0.6 otherwise)."""
    crop = crop if crop is not None else (0.9 if kind == "restain" else 0.6)
    if kind not in ("restain", "frame", "faint", "cross"):
        raise ValueError(f"unknown case kind {kind!r}")
    if kind != "cross":
        from ..demo import Stain, restain
        moving_rgb = restain(moving_rgb, Stain(h=rng.uniform(0.6, 1.5), e=rng.uniform(0.5, 1.5), d=rng.uniform(0.6, 1.6),
                                               gain=rng.uniform(0.95, 1.05), gamma=rng.uniform(0.85, 1.15)))
    h, w = fixed_rgb.shape[:2]
    ch, cw = int(crop * h), int(crop * w)
    y0, x0 = int(rng.uniform(0, h - ch)), int(rng.uniform(0, w - cw))
    fixed = fixed_rgb[y0:y0 + ch, x0:x0 + cw]
    if kind == "faint":
        moving_rgb = _fade(moving_rgb, fade)
    drawn = float(rng.uniform(0, 360)), bool(rng.uniform() < 0.5), float(rng.uniform(0.9, 1.1))
    angle = drawn[0] if angle is None else float(angle)
    flipped = drawn[1] if flipped is None else bool(flipped)
    scale = drawn[2] if scale is None else float(scale)
    t = np.deg2rad(angle)
    lin = scale * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ (
        np.diag([-1.0, 1.0]) if flipped else np.eye(2))
    # the moving view: a window about a centre near the fixed window's (shifted by up to 6 % of the crop),
    # turned and scaled, as large as fits inside the moving slide at this angle, so that it too is filled
    # edge to edge with whatever the slide holds there (no artificial straight tissue border)
    hm, wm = moving_rgb.shape[:2]
    centre = np.array([x0 + cw / 2, y0 + ch / 2]) + rng.uniform(-0.06, 0.06, size=2) * [cw, ch]
    side = min(cw, ch) * 0.9 * scale
    inv = np.linalg.inv(lin)
    half = lambda s: np.abs(inv) @ np.array([s / 2, s / 2])    # noqa: E731 - half extent in the source
    while side > 16 and not ((centre - half(side) >= 0).all() and (centre + half(side) <= [wm - 1, hm - 1]).all()):
        side *= 0.95
    side = int(side)
    matrix = np.hstack([lin, (np.array([side / 2, side / 2]) - lin @ centre)[:, None]])   # source px -> view px
    canvas = _render(moving_rgb, matrix, (side, side), glass_colour(moving_rgb))
    fp = fixed_points - [x0, y0]
    mp = moving_points @ lin.T + matrix[:, 2]
    inside = ((fp >= 0) & (fp < [cw, ch])).all(1) & ((mp >= 0) & (mp < [side, side])).all(1)
    return Case(name, kind, np.ascontiguousarray(fixed), canvas, fp[inside], mp[inside], angle, flipped, scale)


def grid_points(rgb: np.ndarray, n: int = 60) -> np.ndarray:
    """Points on a regular grid over the image (for `restain` cases, whose truth is exact everywhere)."""
    h, w = rgb.shape[:2]
    k = int(np.ceil(np.sqrt(n)))
    xs, ys = np.meshgrid(np.linspace(0.05 * w, 0.95 * w, k), np.linspace(0.05 * h, 0.95 * h, k))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def case_rtre(case: Case, matrix: np.ndarray) -> tuple[float, float]:
    """(initial, after) median rTRE of a case for a map fixed px -> moving px (the affine step's matrix
    with both scales 1)."""
    m = np.eye(3)
    m[:2] = matrix
    back = (np.linalg.inv(m) @ np.c_[case.moving_points, np.ones(len(case.moving_points))].T).T[:, :2]
    initial = np.median(np.hypot(*(case.moving_points - case.fixed_points).T)) / case.diagonal
    after = np.median(np.hypot(*(back - case.fixed_points).T)) / case.diagonal
    return float(initial), float(after)
