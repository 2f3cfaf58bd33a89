"""Affine pre-alignment, robust to any rotation and to flips (the seed assumes affinely aligned input).

Both images become a stain-independent *tissue density* (inverted luminance, rank-normalised over the
tissue, 0 on background), so an H&E slide and its IHC neighbour look alike. Then:

1. multi-start: at a coarse size (`search_size`), every rotation in `angles` steps, with and without a
   mirror flip, is started from moment matching (tissue centroids aligned, scale from the tissue areas)
   and scored by `similarity` (outline overlap plus sign-blind local correlation of the inner structure);
2. the best `refine_top` starts are refined as full affine maps by gradient descent on 1 - similarity, first
   at `search_size` on blurred images, then at `refine_size`;
3. the best final score wins.

The result maps fixed *working* pixels to moving working pixels (centre convention, coords.py), the
`affine` of transform.Transform.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..optim import SingleTensorAdam

log = logging.getLogger(__name__)


@dataclass
class AffineSettings:
    search_size: int = 128          # longest side of the multi-start search images
    refine_size: int = 256          # longest side of the final refinement
    angles: int = 36                # rotation starts (every 360/angles degrees)
    flips: bool = True              # also try the mirrored moving image
    refine_top: int = 3             # starts refined
    iterations: int = 100           # gradient steps per refinement level
    lr: float = 0.004


@dataclass
class AffineResult:
    matrix: np.ndarray              # (2, 3) fixed working (x, y) -> moving working (x, y)
    score: float                    # `similarity` after alignment (at refine_size)
    score_identity: float           # the same with the images only stretched onto each other
    angle_deg: float                # the winning start
    flipped: bool
    seconds: float
    settings: dict

    def to_json(self) -> dict:
        return {"format": "srnet-affine-1", "matrix": self.matrix.tolist(), "score": self.score,
                "score_identity": self.score_identity, "start_angle_deg": self.angle_deg,
                "start_flipped": self.flipped, "seconds": self.seconds, "settings": self.settings}


def tissue_density(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) float32: 0 on background, 0.2..1 on tissue by the share of tissue pixels brighter than
    each pixel (any monotonic stain change leaves it unchanged)."""
    lum = (np.asarray(rgb, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(lum.shape, np.float32)
    if mask.any():
        counts = np.bincount(lum[mask], minlength=256).astype(np.float64)
        brighter = (counts.sum() - np.cumsum(counts) + 0.5 * counts) / counts.sum()
        out[mask] = (0.2 + 0.8 * brighter).astype(np.float32)[lum[mask]]
    return out


def _to_tensor(density: np.ndarray) -> torch.Tensor:
    """(1, 2, H, W): the tissue outline (mask), then the density."""
    d = np.ascontiguousarray(density, dtype=np.float32)
    return torch.from_numpy(np.stack([(d > 0).astype(np.float32), d]))[None]


def shrink(image: torch.Tensor, longest: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """Area-average to `longest` px on the longest side; returns the image and (s_x, s_y), output px
    per input px (centre-aligned like every other resampling here)."""
    h, w = image.shape[-2:]
    f = min(1.0, longest / max(h, w))
    oh, ow = max(1, round(h * f)), max(1, round(w * f))
    if (oh, ow) == (h, w):
        return image, (1.0, 1.0)
    return F.interpolate(image, size=(oh, ow), mode="area"), (ow / w, oh / h)


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return image
    r = max(1, int(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=image.dtype)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    k = k / k.sum()
    c = image.shape[1]
    out = F.conv2d(F.pad(image, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def homogeneous(matrix) -> np.ndarray:
    m = np.eye(3)
    m[:2] = np.asarray(matrix, dtype=np.float64).reshape(2, 3)
    return m


def rescale_matrix(matrix: np.ndarray, fixed_scale: tuple[float, float], moving_scale: tuple[float, float]
                   ) -> np.ndarray:
    """A map between grids sampled at scales s_f, s_m (new px per old px) -> the map between the old
    grids: x_new = s (x_old + 0.5) - 0.5 on each side."""
    def c(s):
        return np.array([[s[0], 0, 0.5 * s[0] - 0.5], [0, s[1], 0.5 * s[1] - 0.5], [0, 0, 1.0]])
    return (np.linalg.inv(c(moving_scale)) @ homogeneous(matrix) @ c(fixed_scale))[:2]


def affine_grid(matrix: torch.Tensor, fixed_hw: tuple[int, int], moving_hw: tuple[int, int]) -> torch.Tensor:
    """grid_sample grid (N, H, W, 2) for (N, 2, 3) pixel matrices fixed (x, y) -> moving (x, y)."""
    h, w = fixed_hw
    ys, xs = torch.meshgrid(torch.arange(h, dtype=matrix.dtype), torch.arange(w, dtype=matrix.dtype),
                            indexing="ij")
    p = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)
    q = torch.einsum("nij,pj->npi", matrix, p)
    size = torch.tensor([moving_hw[1], moving_hw[0]], dtype=matrix.dtype)
    return ((2 * q + 1) / size - 1).reshape(matrix.shape[0], h, w, 2)


def warp_affine(moving: torch.Tensor, matrix, fixed_hw: tuple[int, int], mode: str = "bilinear",
                padding_mode: str = "zeros") -> torch.Tensor:
    """Resample the moving image (N or 1, C, Hm, Wm) onto the fixed grid through pixel matrices."""
    m = torch.as_tensor(np.asarray(matrix) if not torch.is_tensor(matrix) else matrix, dtype=torch.float32)
    m = m.reshape(-1, 2, 3)
    grid = affine_grid(m, fixed_hw, tuple(moving.shape[-2:]))
    src = moving.expand(m.shape[0], -1, -1, -1) if moving.shape[0] == 1 else moving
    return F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Global NCC per batch item of (N, 1, H, W) tensors."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-12)


def local_ncc2(a: torch.Tensor, b: torch.Tensor, window: int = 7, eps: float = 1e-4) -> torch.Tensor:
    """Mean squared local NCC per batch item: blind to the sign of the correlation, so a structure that
    one stain makes dark and the other bright (kidney medulla in H&E vs cytokeratin) still matches."""
    def box(x):
        return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)
    ma, mb = box(a), box(b)
    cross = box(a * b) - ma * mb
    var_a, var_b = (box(a * a) - ma * ma).clamp(min=0), (box(b * b) - mb * mb).clamp(min=0)
    return (cross * cross / (var_a * var_b + eps)).flatten(1).mean(1)


def similarity(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Per batch item, in [-0.5, 1]: half the global NCC of the tissue masks (channel 0: the outline),
    half the squared local NCC of the densities (channel 1: inner structure, either contrast)."""
    return 0.5 * ncc(fixed[:, :1], warped[:, :1]) + 0.5 * local_ncc2(fixed[:, 1:], warped[:, 1:])


def _moments(image: np.ndarray) -> tuple[np.ndarray, float]:
    ys, xs = np.nonzero(image > 0)
    if len(xs) == 0:
        return np.array([image.shape[1] / 2, image.shape[0] / 2]), 1.0
    return np.array([xs.mean(), ys.mean()]), float(len(xs))


def _starts(fixed: np.ndarray, moving: np.ndarray, settings: AffineSettings) -> list[tuple[float, bool, np.ndarray]]:
    cf, af = _moments(fixed)
    cm, am = _moments(moving)
    s = math.sqrt(am / af)
    starts = []
    for flip in ((False, True) if settings.flips else (False,)):
        for i in range(settings.angles):
            theta = 2 * math.pi * i / settings.angles
            rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
            lin = s * rot @ (np.diag([-1.0, 1.0]) if flip else np.eye(2))
            starts.append((math.degrees(theta), flip, np.hstack([lin, (cm - lin @ cf)[:, None]])))
    return starts


def _refine(fixed: torch.Tensor, moving: torch.Tensor, matrix: np.ndarray, settings: AffineSettings
            ) -> tuple[np.ndarray, float]:
    """Gradient descent on 1 - similarity over the six affine parameters (translation scaled by the image
    size so that one learning rate suits all six)."""
    base = torch.as_tensor(matrix, dtype=torch.float32)[None]
    size = float(max(fixed.shape[-2:]))
    scale = torch.tensor([[1.0, 1.0, size], [1.0, 1.0, size]])
    delta = torch.zeros(1, 2, 3, requires_grad=True)
    opt = SingleTensorAdam(delta, lr=settings.lr)
    hw = tuple(fixed.shape[-2:])
    for _ in range(settings.iterations):
        loss = 1 - similarity(fixed, warp_affine(moving, base + delta * scale, hw))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = (base + delta * scale).detach()
    with torch.no_grad():
        score = float(similarity(fixed, warp_affine(moving, final, hw))[0])
    return final[0].numpy().astype(np.float64), score


def pre_align(fixed_density: np.ndarray, moving_density: np.ndarray, settings: AffineSettings | None = None
              ) -> AffineResult:
    """Affine map fixed working px -> moving working px between two tissue-density images."""
    settings = settings or AffineSettings()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    f_full, m_full = _to_tensor(fixed_density), _to_tensor(moving_density)
    f_s, sf = shrink(f_full, settings.search_size)
    m_s, sm = shrink(m_full, settings.search_size)
    starts = _starts(f_s[0, 1].numpy(), m_s[0, 1].numpy(), settings)
    f_blur, m_blur = blur(f_s, 1.5), blur(m_s, 1.5)
    with torch.no_grad():
        scores = similarity(f_blur.expand(len(starts), -1, -1, -1),
                     warp_affine(m_blur, np.stack([m for _, _, m in starts]), tuple(f_s.shape[-2:])))
    order = np.argsort(-scores.numpy())[: settings.refine_top]
    f_r, sfr = shrink(f_full, settings.refine_size)
    m_r, smr = shrink(m_full, settings.refine_size)
    best = None
    for i in order:
        angle, flipped, start = starts[i]
        coarse, _ = _refine(f_blur, m_blur, start, settings)
        # from search-grid pixels to refine-grid pixels
        work = rescale_matrix(coarse, sf, sm)
        fine = rescale_matrix(work, (1 / sfr[0], 1 / sfr[1]), (1 / smr[0], 1 / smr[1]))
        fine, score = _refine(blur(f_r, 1.0), blur(m_r, 1.0), fine, settings)
        log.info("affine start %5.1f deg%s: coarse score %.3f -> refined %.3f", angle,
                 " flipped" if flipped else "", float(scores[i]), score)
        if best is None or score > best[0]:
            best = (score, angle, flipped, rescale_matrix(fine, sfr, smr))
    score, angle, flipped, matrix = best
    # the images only stretched onto each other (what "no pre-alignment" would look like)
    rx, ry = m_r.shape[-1] / f_r.shape[-1], m_r.shape[-2] / f_r.shape[-2]
    stretch = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5]])
    with torch.no_grad():
        score_identity = float(similarity(blur(f_r, 1.0), warp_affine(blur(m_r, 1.0), stretch, tuple(f_r.shape[-2:])))[0])
    return AffineResult(matrix, score, score_identity, angle, flipped, time.perf_counter() - t0, asdict(settings))
