"""Affine pre-alignment that never makes a pair worse than leaving it unregistered.

Both images are compared through stain-independent views (alignment_images.py: how much of the
neighbourhood is stained at all, and darkness rank-normalised over the frame), which do not depend on
the prepare stage's tissue mask. The transform lives in each slide's full-resolution pixels, where
two sections of one tissue differ by a rotation, perhaps a mirror, a translation and a little
shrinkage; its scale, anisotropy and shear are bounded by construction (`max_scale`,
`max_anisotropy`, `max_shear`), never left to the optimiser.

Candidates come from three sources:
1. the unregistered pair itself (full-resolution pixels unchanged), always a candidate and the default;
2. a rotation search: every `360/angles` degrees, with and without a mirror, tissue centroids aligned
   at scale 1, scored at `search_size`; the best `refine_top` starts go on;
3. SIFT keypoints on the structure view matched by RANSAC to a similarity, as it is and mirrored.
Each is refined as a similarity (coarse, then at `refine_size`); the full affine is kept only where it
raises the score by `affine_margin`. The selection then needs agreement, not a thin win: a mirrored
result must beat the best unmirrored one by `flip_margin` and leaving the unregistered pair needs
`identity_margin`, and neither may be contradicted by the keypoints. Every candidate, its scores and
the reason for the choice go into the affine JSON; a runner-up within the margin is a close call.

The result maps fixed *working* pixels to moving working pixels (centre convention, coords.py), the
`affine` of transform.Transform.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..optim import SingleTensorAdam

log = logging.getLogger(__name__)


@dataclass
class AffineSettings:
    search_size: int = 128          # longest side of the rotation-search images
    refine_size: int = 256          # longest side of the final refinement
    angles: int = 36                # rotation starts (every 360/angles degrees)
    flips: bool = True              # also try the mirrored moving image
    refine_top: int = 3             # search starts refined
    iterations: int = 100           # gradient steps per refinement level
    lr: float = 0.004
    max_scale: float = 1.25         # bound on the mean scale between the slides' full-resolution px
    max_anisotropy: float = 1.2     # bound on the ratio of the two axis scales
    max_shear: float = 0.1          # bound on the shear
    affine_margin: float = 0.005    # score gain that earns the full affine over the similarity
    identity_margin: float = 0.01   # score gain needed to leave the unregistered pair
    flip_margin: float = 0.02       # score gain a mirrored result needs over the best unmirrored one
    keypoints: bool = True          # SIFT + RANSAC candidates and votes
    keypoint_size: int = 256        # longest side of the keypoint images


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


def weighted_ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """NCC per batch item of (N, 1, H, W) tensors over the weights `w` (the overlap of the two frames)."""
    a, b, w = a.flatten(1), b.flatten(1), w.flatten(1)
    total = w.sum(1, keepdim=True) + 1e-6
    a = a - (w * a).sum(1, keepdim=True) / total
    b = b - (w * b).sum(1, keepdim=True) / total
    return (w * a * b).sum(1) / torch.sqrt((w * a * a).sum(1) * (w * b * b).sum(1) + 1e-12)


def local_ncc2_map(a: torch.Tensor, b: torch.Tensor, window: int = 7, eps: float = 1e-4) -> torch.Tensor:
    """Squared local NCC per pixel: blind to the sign of the correlation, so a structure that one stain
    makes dark and the other bright (kidney medulla in H&E vs cytokeratin) still matches."""
    def box(x):
        return F.avg_pool2d(x, window, stride=1, padding=window // 2, count_include_pad=False)
    ma, mb = box(a), box(b)
    cross = box(a * b) - ma * mb
    var_a, var_b = (box(a * a) - ma * ma).clamp(min=0), (box(b * b) - mb * mb).clamp(min=0)
    return cross * cross / (var_a * var_b + eps)


MIN_OVERLAP = 0.3   # below this share of the fixed frame covered by the moving one, scores shrink
SEARCH_BLUR, REFINE_BLUR = 1.5, 1.0   # Gaussian sigma (px) of the search and refinement images
LOCAL_WINDOW = 7    # px, the window of the structure's local NCC
LNCC_EPS = 1e-6     # the local NCC's floor: rank-normalised views have local variances of ~1e-3
OUTLINE_WEIGHT = 0.5


def similarity_parts(fixed: torch.Tensor, warped: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(outline, structure, overlap) per batch item of (N, 3, H, W) warped images (occupancy, structure,
    validity) against (1, 2, H, W) fixed views: the NCC of the occupancies and the mean squared local NCC
    of the structures, both over the part of the fixed frame the moving frame covers."""
    valid = warped[:, 2:3]
    n = warped.shape[0]
    f = fixed.expand(n, -1, -1, -1)
    outline = weighted_ncc(f[:, :1], warped[:, :1], valid)
    lmap = local_ncc2_map(f[:, 1:2], warped[:, 1:2], LOCAL_WINDOW, LNCC_EPS)
    structure = (lmap * valid).flatten(1).sum(1) / (valid.flatten(1).sum(1) + 1e-6)
    overlap = valid.flatten(1).mean(1)
    return outline, structure, overlap


def similarity(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Per batch item, in [-0.5, 1]: half the outline NCC, half the structure's RMS local NCC (both on
    the scale of a correlation), shrunk when the frames overlap on less than MIN_OVERLAP of the fixed
    frame (no score from a sliver)."""
    outline, structure, overlap = similarity_parts(fixed, warped)
    return (OUTLINE_WEIGHT * outline + (1 - OUTLINE_WEIGHT) * torch.sqrt(structure + 1e-8)) * torch.clamp(overlap / MIN_OVERLAP, max=1.0)


STRONG_SUPPORT = 15   # keypoint matches that make a candidate's support decisive


# ----------------------------------------------------------------------------------------------------
# the bounded transform model, in full-resolution px of each slide

@dataclass
class Geometry:
    """How grid px relate to full-resolution px on each side: u = (x + 0.5) / g (coords.py)."""
    fixed_g: tuple[float, float]
    moving_g: tuple[float, float]

    def scaled(self, fixed_f: tuple[float, float], moving_f: tuple[float, float]) -> "Geometry":
        return Geometry((self.fixed_g[0] * fixed_f[0], self.fixed_g[1] * fixed_f[1]),
                        (self.moving_g[0] * moving_f[0], self.moving_g[1] * moving_f[1]))

    def _frames(self) -> tuple[np.ndarray, np.ndarray]:
        """(3, 3) fixed grid px -> fixed full px, and moving full px -> moving grid px."""
        gf, gm = np.asarray(self.fixed_g, float), np.asarray(self.moving_g, float)
        cf = np.array([[1 / gf[0], 0, 0.5 / gf[0]], [0, 1 / gf[1], 0.5 / gf[1]], [0, 0, 1]])
        cm = np.array([[gm[0], 0, -0.5], [0, gm[1], -0.5], [0, 0, 1]])
        return cf, cm

    def to_grid(self, physical: np.ndarray) -> np.ndarray:
        """(3, 3) map fixed full px -> moving full px  ->  (2, 3) fixed grid px -> moving grid px."""
        cf, cm = self._frames()
        return (cm @ physical @ cf)[:2]

    def to_physical(self, grid: np.ndarray) -> np.ndarray:
        cf, cm = self._frames()
        return np.linalg.inv(cm) @ homogeneous(grid) @ np.linalg.inv(cf)


@dataclass
class Params:
    """u_m = R(angle) S(scale, anisotropy) H(shear) M (u_f - pivot) + pivot + shift, M the mirror."""
    angle: float
    scale: float
    anisotropy: float            # ratio of the x scale to the y scale
    shear: float
    shift: np.ndarray            # (2,) full px
    flipped: bool

    def linear(self) -> np.ndarray:
        c, s = math.cos(self.angle), math.sin(self.angle)
        sx, sy = self.scale * math.sqrt(self.anisotropy), self.scale / math.sqrt(self.anisotropy)
        lin = np.array([[c, -s], [s, c]]) @ np.array([[sx, sx * self.shear], [0.0, sy]])
        return lin @ (np.diag([-1.0, 1.0]) if self.flipped else np.eye(2))

    def physical(self, pivot: np.ndarray) -> np.ndarray:
        lin = self.linear()
        out = np.eye(3)
        out[:2, :2] = lin
        out[:2, 2] = pivot + self.shift - lin @ pivot
        return out

    @staticmethod
    def from_physical(matrix: np.ndarray, pivot: np.ndarray) -> "Params":
        """Decompose lin = R [[sx, sx h], [0, sy]] M (QR with a positive diagonal)."""
        lin = np.asarray(matrix, float)[:2, :2]
        flipped = np.linalg.det(lin) < 0
        core = lin @ (np.diag([-1.0, 1.0]) if flipped else np.eye(2))
        q, r = np.linalg.qr(core)
        signs = np.sign(np.diag(r))
        signs[signs == 0] = 1
        q, r = q * signs, (r.T * signs).T
        angle = math.atan2(q[1, 0], q[0, 0])
        sx, sy = r[0, 0], r[1, 1]
        shift = np.asarray(matrix, float)[:2, 2] + lin @ pivot - pivot
        return Params(angle, math.sqrt(sx * sy), sx / sy, r[0, 1] / sx, shift, bool(flipped))

    def describe(self) -> dict:
        return {"angle_deg": round(math.degrees(self.angle) % 360, 3), "flipped": self.flipped,
                "scale": round(self.scale, 5), "anisotropy": round(self.anisotropy, 5),
                "shear": round(self.shear, 5), "shift_px": [round(float(v), 2) for v in self.shift]}


class BoundedAffine:
    """Differentiable parameters -> (1, 2, 3) grid matrices, scale/anisotropy/shear bounded by tanh."""

    def __init__(self, start: Params, pivot: np.ndarray, geometry: Geometry, settings: AffineSettings,
                 size: float, free_affine: bool):
        self.pivot, self.geometry, self.size, self.flipped = pivot, geometry, size, start.flipped
        self.bounds = (math.log(settings.max_scale), 0.5 * math.log(settings.max_anisotropy), settings.max_shear)

        def inverse_tanh(value, bound):
            return math.atanh(max(-0.98, min(0.98, value / bound))) if bound > 0 else 0.0
        self.theta = torch.tensor([start.angle,
                                   inverse_tanh(math.log(start.scale), self.bounds[0]),
                                   inverse_tanh(0.5 * math.log(start.anisotropy), self.bounds[1]),
                                   inverse_tanh(start.shear, self.bounds[2]),
                                   start.shift[0] / size, start.shift[1] / size], dtype=torch.float64)
        self.free = torch.tensor([1, 1, float(free_affine), float(free_affine), 1, 1], dtype=torch.float64)
        self.delta = torch.zeros(6, dtype=torch.float64, requires_grad=True)

    def values(self):
        t = self.theta + self.delta * self.free
        log_scale = self.bounds[0] * torch.tanh(t[1])
        half_log_aniso = self.bounds[1] * torch.tanh(t[2])
        shear = self.bounds[2] * torch.tanh(t[3])
        return t[0], log_scale, half_log_aniso, shear, t[4:6] * self.size

    def grid_matrix(self, geometry: Geometry | None = None) -> torch.Tensor:
        g = geometry or self.geometry
        angle, log_scale, half_log_aniso, shear, shift = self.values()
        sx, sy = torch.exp(log_scale + half_log_aniso), torch.exp(log_scale - half_log_aniso)
        c, s = torch.cos(angle), torch.sin(angle)
        rot = torch.stack([torch.stack([c, -s]), torch.stack([s, c])])
        upper = torch.stack([torch.stack([sx, sx * shear]), torch.stack([torch.zeros_like(sx), sy])])
        mirror = torch.tensor([[-1.0, 0.0], [0.0, 1.0]] if self.flipped else [[1.0, 0.0], [0.0, 1.0]],
                              dtype=torch.float64)
        lin = rot @ upper @ mirror
        pivot = torch.as_tensor(self.pivot, dtype=torch.float64)
        gf = torch.tensor(g.fixed_g, dtype=torch.float64)
        gm = torch.tensor(g.moving_g, dtype=torch.float64)
        a = torch.diag(gm) @ lin @ torch.diag(1 / gf)
        b = gm * (lin @ (0.5 / gf - pivot) + pivot + shift) - 0.5
        return torch.cat([a, b[:, None]], dim=1)[None].float()

    def params(self) -> Params:
        with torch.no_grad():
            angle, log_scale, half_log_aniso, shear, shift = self.values()
        return Params(float(angle), math.exp(float(log_scale)), math.exp(2 * float(half_log_aniso)),
                      float(shear), shift.numpy().astype(float), self.flipped)


def _warp_views(moving: torch.Tensor, matrix, fixed_hw: tuple[int, int]) -> torch.Tensor:
    """Moving views (1, 2, H, W) plus a validity channel, resampled onto the fixed grid."""
    ones = torch.ones_like(moving[:, :1])
    return warp_affine(torch.cat([moving, ones], dim=1), matrix, fixed_hw)


def _refine(fixed: torch.Tensor, moving: torch.Tensor, start: Params, pivot: np.ndarray, geometry: Geometry,
            settings: AffineSettings, free_affine: bool, iterations: int) -> tuple[Params, float]:
    """Gradient ascent on the similarity over the bounded parameters (translation in fixed-frame sizes,
    so that one learning rate suits all of them)."""
    size = float(max(fixed.shape[-2:]) / min(geometry.fixed_g))
    model = BoundedAffine(start, pivot, geometry, settings, size, free_affine)
    opt = SingleTensorAdam(model.delta, lr=settings.lr)
    hw = tuple(fixed.shape[-2:])
    for _ in range(iterations):
        loss = 1 - similarity(fixed, _warp_views(moving, model.grid_matrix(), hw))[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = model.params()
    with torch.no_grad():
        score = float(similarity(fixed, _warp_views(moving, geometry.to_grid(result.physical(pivot)), hw))[0])
    return result, score


@dataclass(eq=False)
class Candidate:
    source: str                  # unregistered | search | keypoints
    start: Params
    params: Params
    score: float = float("nan")
    outline: float = float("nan")
    structure: float = float("nan")
    overlap: float = float("nan")
    support: int = 0
    model: str = "similarity"    # similarity | affine | none (the unregistered pair, never refined)

    def to_json(self) -> dict:
        return {"source": self.source, "model": self.model, "start": self.start.describe(),
                "result": self.params.describe(), "score": round(self.score, 5), "outline": round(self.outline, 5),
                "structure": round(self.structure, 5), "overlap": round(self.overlap, 4),
                "keypoint_support": self.support}


@dataclass
class AffineResult:
    matrix: np.ndarray              # (2, 3) fixed working (x, y) -> moving working (x, y)
    score: float                    # `similarity` after alignment (at refine_size)
    score_identity: float           # the same for the unregistered pair
    angle_deg: float                # the chosen transform's rotation
    flipped: bool
    seconds: float
    settings: dict
    chosen: str = "unregistered"
    reason: str = ""
    close_call: bool = False
    candidates: list = field(default_factory=list)
    keypoints: dict = field(default_factory=dict)
    chosen_index: int = 0           # into candidates

    def to_json(self) -> dict:
        return {"format": "srnet-affine-1", "matrix": self.matrix.tolist(), "score": self.score,
                "score_identity": self.score_identity, "angle_deg": self.angle_deg, "flipped": self.flipped,
                "chosen": self.chosen, "chosen_index": self.chosen_index, "reason": self.reason, "close_call": self.close_call,
                "seconds": self.seconds, "candidates": self.candidates, "keypoints": self.keypoints,
                "settings": self.settings}


def _centroid(occupancy: np.ndarray, g: tuple[float, float]) -> np.ndarray:
    """Occupancy-weighted centre in full px (the frame's centre when nothing is stained)."""
    h, w = occupancy.shape
    total = float(occupancy.sum())
    if total <= 1e-6:
        x, y = (w - 1) / 2, (h - 1) / 2
    else:
        ys, xs = np.mgrid[:h, :w]
        x, y = float((occupancy * xs).sum() / total), float((occupancy * ys).sum() / total)
    return np.array([(x + 0.5) / g[0], (y + 0.5) / g[1]])


def _distinct(a: Params, b: Params, size: float) -> bool:
    """Two results that are different answers, not the same one twice."""
    turn = abs((math.degrees(a.angle - b.angle) + 180) % 360 - 180)
    return a.flipped != b.flipped or turn > 5 or float(np.hypot(*(a.shift - b.shift))) > 0.03 * size


def pre_align(fixed_rgb: np.ndarray, moving_rgb: np.ndarray, fixed_scale: tuple[float, float] = (1.0, 1.0),
              moving_scale: tuple[float, float] = (1.0, 1.0), settings: AffineSettings | None = None
              ) -> AffineResult:
    """Affine map fixed working px -> moving working px between two working RGB images whose scales
    (working px per full-resolution px) are given; the unregistered pair when nothing beats it."""
    # one thread: the images are small (<= 256 px per refinement step), and with two threads a busy
    # machine made each step ~10x slower (threads spinning for a core), one thread is as fast when idle
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _pre_align(fixed_rgb, moving_rgb, fixed_scale, moving_scale, settings)
    finally:
        torch.set_num_threads(threads)


def _pre_align(fixed_rgb: np.ndarray, moving_rgb: np.ndarray, fixed_scale: tuple[float, float],
               moving_scale: tuple[float, float], settings: AffineSettings | None) -> AffineResult:
    from .alignment_images import alignment_views
    settings = settings or AffineSettings()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    fv, mv = alignment_views(fixed_rgb), alignment_views(moving_rgb)
    f_full, m_full = torch.from_numpy(fv.stack())[None], torch.from_numpy(mv.stack())[None]
    work = Geometry(tuple(map(float, fixed_scale)), tuple(map(float, moving_scale)))
    f_s, sf = shrink(f_full, settings.search_size)
    m_s, sm = shrink(m_full, settings.search_size)
    f_r, sfr = shrink(f_full, settings.refine_size)
    m_r, smr = shrink(m_full, settings.refine_size)
    search, fine = work.scaled(sf, sm), work.scaled(sfr, smr)
    f_sb, m_sb = blur(f_s, SEARCH_BLUR), blur(m_s, SEARCH_BLUR)
    f_rb, m_rb = blur(f_r, REFINE_BLUR), blur(m_r, REFINE_BLUR)
    pivot = _centroid(f_s[0, 0].numpy(), search.fixed_g)
    moving_centre = _centroid(m_s[0, 0].numpy(), search.moving_g)
    size = max(fixed_rgb.shape[:2]) / min(work.fixed_g)

    identity = Params(0.0, 1.0, 1.0, 0.0, np.zeros(2), False)
    starts: list[tuple[str, Params]] = [("unregistered", identity)]
    # the rotation search: centroids aligned, scale 1 (two sections of one tissue), every angle and mirror
    grid_starts = [Params(2 * math.pi * i / settings.angles, 1.0, 1.0, 0.0, moving_centre - pivot, flip)
                   for flip in ((False, True) if settings.flips else (False,)) for i in range(settings.angles)]
    with torch.no_grad():
        matrices = np.stack([search.to_grid(p.physical(pivot)) for p in grid_starts])
        coarse = similarity(f_sb, _warp_views(m_sb, matrices, tuple(f_s.shape[-2:]))).numpy()
    taken: list[Params] = []
    for i in np.argsort(-coarse, kind="stable"):
        if len(taken) == settings.refine_top:
            break
        if all(_distinct(grid_starts[i], t, size) for t in taken):
            taken.append(grid_starts[i])
    starts += [("search", p) for p in taken]

    matches, kp_info = [], {"used": settings.keypoints}
    if settings.keypoints:
        from .keypoints import fit_similarity, keypoint_matches
        f_k, sfk = shrink(f_full[:, 1:2], settings.keypoint_size)
        m_k, smk = shrink(m_full[:, 1:2], settings.keypoint_size)
        kgeom = work.scaled(sfk, smk)
        matches = keypoint_matches(f_k[0, 0].numpy(), m_k[0, 0].numpy(), settings.flips)
        tolerance = 0.02 * max(f_k.shape[-2:])
        kp_info.update({"matches": [len(m.fixed) for m in matches], "inliers": [], "tolerance_px": tolerance})
        for m in matches:
            model = fit_similarity(m, tolerance)
            kp_info["inliers"].append(0 if model is None else model.inliers)
            if model is None:
                continue
            p = Params.from_physical(kgeom.to_physical(model.matrix), pivot)
            if not (1 / settings.max_scale <= p.scale <= settings.max_scale):
                log.info("keypoint model%s rejected: scale %.2f outside the bound %.2f", " (mirrored)" if
                         m.flipped else "", p.scale, settings.max_scale)
                continue
            starts.append(("keypoints", Params(p.angle, p.scale, 1.0, 0.0, p.shift, p.flipped)))
        if not any(len(m.fixed) for m in matches):
            log.info("no keypoint matches (featureless or blank tissue?): rotation search and the unregistered "
                     "pair only")

    candidates: list[Candidate] = [Candidate("unregistered", identity, identity, model="none")]
    # coarse refinement of every start, then the finer levels only for distinct answers
    coarse_results: list[tuple[str, Params, Params, float]] = []
    for source, start in starts:
        if source == "keypoints":       # already as fine as the refinement grid; the coarse grid can lose it
            continue
        p, score = _refine(f_sb, m_sb, start, pivot, search, settings, False, settings.iterations)
        coarse_results.append((source, start, p, score))
    distinct: list[tuple[str, Params, Params, float]] = []
    for item in sorted(coarse_results, key=lambda r: -r[3]):
        if all(_distinct(item[2], d[2], size) for d in distinct):
            distinct.append(item)
    # the two best distinct answers of the search go on, and every keypoint answer (an independent source)
    fine_steps = settings.iterations
    chosen_starts = distinct[:2] + [(source, start, start, float("nan")) for source, start in starts
                                    if source == "keypoints"]
    for source, start, p, _ in chosen_starts:
        p, _ = _refine(f_rb, m_rb, p, pivot, fine, settings, False, fine_steps)
        candidates.append(Candidate(source, start, p))
    _score(candidates, f_rb, m_rb, pivot, fine, matches, kp_info, kgeom if matches else None)
    # a refinement that carries a keypoint answer away from its matches is not trusted over them: the
    # keypoint answer as found stays a candidate of its own
    kept_as_found = [Candidate(c.source, c.start, c.start, model="similarity (as found)") for c in candidates
                     if c.source == "keypoints" and c.start.flipped == c.params.flipped
                     and c.support < 0.5 * kp_info["inliers"][int(c.start.flipped) if len(kp_info["inliers"]) > 1 else 0]]
    if kept_as_found:
        _score(kept_as_found, f_rb, m_rb, pivot, fine, matches, kp_info, kgeom)
        candidates += kept_as_found
    chosen, reason, close = _select(candidates, settings, size)
    if chosen is not candidates[0]:
        # the full affine, for the chosen similarity only, where it earns its margin
        q, s_aff = _refine(f_rb, m_rb, chosen.params, pivot, fine, settings, True, fine_steps)
        affine = Candidate(chosen.source, chosen.start, q, model="affine")
        _score([affine], f_rb, m_rb, pivot, fine, matches, kp_info, kgeom if matches else None)
        candidates.append(affine)
        if s_aff >= chosen.score + settings.affine_margin and affine.support >= chosen.support:
            reason += f"; full affine {s_aff - chosen.score:+.4f} over its similarity"
            chosen = affine
        else:
            reason += (f"; full affine not kept ({s_aff - chosen.score:+.4f}, margin {settings.affine_margin}; "
                       f"keypoint support {affine.support} vs {chosen.support})")
    for c in candidates:
        log.info("affine candidate %-12s %-10s %s -> score %.4f (outline %.3f, structure %.3f, overlap %.2f), "
                 "keypoint support %d%s", c.source, c.model, c.params.describe(), c.score, c.outline, c.structure,
                 c.overlap, c.support, "  <- chosen" if c is chosen else "")
    log.info("affine choice: %s%s", reason, " (CLOSE CALL)" if close else "")
    matrix = work.to_grid(chosen.params.physical(pivot))
    return AffineResult(matrix, chosen.score, candidates[0].score, math.degrees(chosen.params.angle) % 360,
                        chosen.params.flipped, time.perf_counter() - t0, asdict(settings), chosen.source, reason,
                        close, [c.to_json() for c in candidates], kp_info, next(i for i, c in enumerate(candidates) if c is chosen))


def _score(candidates: list[Candidate], fixed: torch.Tensor, moving: torch.Tensor, pivot: np.ndarray,
           fine: Geometry, matches: list, kp_info: dict, kgeom: Geometry | None) -> None:
    """Score every candidate the same way, on the refinement grid, and count its keypoint support."""
    with torch.no_grad():
        mats = np.stack([fine.to_grid(c.params.physical(pivot)) for c in candidates])
        warped = _warp_views(moving, mats, tuple(fixed.shape[-2:]))
        outline, structure, overlap = similarity_parts(fixed, warped)
        scores = similarity(fixed, warped)
    for i, c in enumerate(candidates):
        c.score, c.outline, c.structure, c.overlap = (float(scores[i]), float(outline[i]), float(structure[i]),
                                                      float(overlap[i]))
        if matches and kgeom is not None:
            from .keypoints import support
            m = matches[1] if c.params.flipped and len(matches) > 1 else matches[0]
            c.support = support(m, kgeom.to_grid(c.params.physical(pivot)), kp_info["tolerance_px"])


def _select(candidates: list[Candidate], settings: AffineSettings, size: float) -> tuple[Candidate, str, bool]:
    """The unregistered pair unless a refined candidate beats it by a margin and the keypoints do not
    vote against it; a mirror only with its own margin. Returns (choice, reason, close call)."""
    unregistered = candidates[0]
    refined = [c for c in candidates[1:] if np.isfinite(c.score)]
    close = False
    notes = []
    best_plain = max((c for c in refined if not c.params.flipped), key=lambda c: c.score, default=None)
    best_flip = max((c for c in refined if c.params.flipped), key=lambda c: c.score, default=None)
    best = best_plain
    if best_flip is not None and (best is None or best_flip.score > best.score):
        gain = best_flip.score - (best.score if best else unregistered.score)
        if gain >= settings.flip_margin and (best is None or best_flip.support >= best.support):
            best = best_flip
            notes.append(f"mirrored result beats the best unmirrored one by {gain:.3f}")
        else:
            close = True
            notes.append(f"mirrored result {best_flip.score:.4f} not taken: {gain:.3f} above the best unmirrored "
                         f"one (margin {settings.flip_margin}), keypoint support {best_flip.support} vs "
                         f"{best.support if best else 0}")
    # the keypoints overrule a score that is not backed by them: a candidate that carries many matches
    # (STRONG_SUPPORT and 3x the score winner's) wins when it beats the unregistered pair
    backed = max(refined, key=lambda c: c.support, default=None)
    if (backed is not None and best is not None and backed is not best and backed.support >= STRONG_SUPPORT
            and backed.support >= 3 * max(1, best.support)
            and backed.score >= unregistered.score + settings.identity_margin):
        close = True
        notes.append(f"keypoints ({backed.support} matches) overrule the best score ({best.source} "
                     f"{best.params.describe()['angle_deg']:.0f} deg, {best.support} matches, score "
                     f"{best.score - backed.score:+.4f} above)")
        best = backed
    if best is None:
        return unregistered, "no refined candidate; unregistered pair kept", close
    gain = best.score - unregistered.score
    if gain < settings.identity_margin:
        close = close or gain > 0
        return unregistered, "; ".join(notes + [
            f"unregistered pair kept: the best candidate ({best.source}) scores only {gain:+.4f} above it "
            f"(margin {settings.identity_margin})"]), close
    if best.support < unregistered.support:
        return unregistered, "; ".join(notes + [
            f"unregistered pair kept: keypoints support it ({unregistered.support}) more than the best candidate "
            f"({best.source}, {best.support})"]), True
    # a different answer within the margin of the choice is a close call
    for c in refined:
        if c is not best and _distinct(c.params, best.params, size) and best.score - c.score < settings.identity_margin:
            close = True
            notes.append(f"runner-up {c.source} {c.params.describe()['angle_deg']:.0f} deg"
                         f"{' mirrored' if c.params.flipped else ''} within {best.score - c.score:.4f}")
    return best, "; ".join([f"{best.source} ({best.model}) {gain:+.4f} above the unregistered pair"] + notes), close
