"""Keypoint candidates for the pre-alignment: SIFT on the stain-independent structure image (scale and
rotation invariant), matched with Lowe's ratio test and a similarity transform fitted by RANSAC, once
for the moving image as it is and once mirrored (SIFT descriptors are not mirror invariant). This is
how the field's tools start (VALIS, DeeperHistReg); here it is one source of candidates beside the
rotation search and the unregistered pair, and an independent vote in the selection.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class KeypointMatches:
    fixed: np.ndarray          # (N, 2) x, y in the fixed image's keypoint-grid px
    moving: np.ndarray         # (N, 2) x, y in the moving image's keypoint-grid px (own frame, not mirrored)
    flipped: bool


@dataclass
class KeypointModel:
    matrix: np.ndarray         # (2, 3) fixed grid px -> moving grid px (a similarity, mirrored if flipped)
    inliers: int
    matches: int
    flipped: bool


def _sift(image: np.ndarray):
    from skimage.feature import SIFT
    sift = SIFT(n_octaves=6, n_scales=3)
    try:
        sift.detect_and_extract(image)
    except RuntimeError:                     # skimage raises when an image holds no keypoint at all
        return np.zeros((0, 2)), np.zeros((0, 128), np.uint8)
    return sift.keypoints[:, ::-1].astype(np.float64), sift.descriptors   # (row, col) -> (x, y)


def keypoint_matches(fixed: np.ndarray, moving: np.ndarray, flips: bool = True,
                     max_ratio: float = 0.9) -> list[KeypointMatches]:
    """Ratio-test matches of SIFT keypoints between two (H, W) float images in [0, 1]."""
    from skimage.feature import match_descriptors
    kf, df = _sift(fixed)
    out = []
    w = moving.shape[1]
    for flipped in ((False, True) if flips else (False,)):
        km, dm = _sift(moving[:, ::-1] if flipped else moving)
        if flipped and len(km):
            km = km.copy()
            km[:, 0] = w - 1 - km[:, 0]
        if len(kf) < 3 or len(km) < 3:
            out.append(KeypointMatches(np.zeros((0, 2)), np.zeros((0, 2)), flipped))
            continue
        pairs = match_descriptors(df, dm, max_ratio=max_ratio, cross_check=True)
        out.append(KeypointMatches(kf[pairs[:, 0]], km[pairs[:, 1]], flipped))
    return out


def fit_similarity(matches: KeypointMatches, tolerance: float, seed: int = 0, min_inliers: int = 6
                   ) -> KeypointModel | None:
    """RANSAC similarity fixed -> moving (through the mirror when `matches.flipped`); None when too few
    matches agree."""
    from skimage.measure import ransac
    from skimage.transform import SimilarityTransform
    n = len(matches.fixed)
    if n < min_inliers:
        return None
    mirror = np.diag([-1.0, 1.0, 1.0]) if matches.flipped else np.eye(3)
    moving = matches.moving @ mirror[:2, :2].T       # mirrored moving frame: a rotation + scale remains
    model, inliers = ransac((matches.fixed, moving), SimilarityTransform, min_samples=2,
                            residual_threshold=tolerance, max_trials=2000, rng=seed)
    if model is None or inliers is None or int(inliers.sum()) < min_inliers:
        return None
    matrix = (mirror @ model.params)[:2]
    return KeypointModel(matrix, int(inliers.sum()), n, matches.flipped)


def support(matches: KeypointMatches, matrix: np.ndarray, tolerance: float) -> int:
    """How many matches a candidate map fixed -> moving (grid px) carries to within `tolerance` px."""
    if len(matches.fixed) == 0:
        return 0
    mapped = matches.fixed @ matrix[:, :2].T + matrix[:, 2]
    return int((np.hypot(*(mapped - matches.moving).T) < tolerance).sum())
