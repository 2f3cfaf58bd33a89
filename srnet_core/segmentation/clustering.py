"""k-means with the number of clusters chosen by the gap statistic (Tibshirani, Walther & Hastie 2001),
and one codebook per dataset.

Candidates shrink geometrically from k0: k_{t+1} = floor(0.9 k_t) (at least one less each step) down
to k_min. The seed paper starts at k0 = 3N/4 over all N pixels, which would mean k-means with millions
of clusters: k0 is capped (config, default 24) and pixels are sampled (default 50,000).

For each k: W_k, the within-cluster sum of squares of the data, and W*_kb for B reference sets drawn
uniformly over the data's bounding box; Gap(k) = mean_b log W*_kb - log W_k, sd_k their standard
deviation, s_k = sd_k sqrt(1 + 1/B). The choice is the smallest k with Gap(k) >= Gap(k') - s_k' for
k' the next larger candidate (the paper's rule on a geometric grid); when no k qualifies, the k with
the largest gap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

log = logging.getLogger(__name__)


def candidate_ks(k0: int, shrink: float = 0.9, k_min: int = 2) -> list[int]:
    """Descending candidates k0, floor(0.9 k0), ... >= k_min, each at least one below the last."""
    if k0 < k_min:
        raise ValueError(f"k0 = {k0} is below k_min = {k_min}")
    ks = [k0]
    while ks[-1] > k_min:
        ks.append(max(k_min, min(ks[-1] - 1, int(np.floor(shrink * ks[-1])))))
    return ks


def _log_w(data: np.ndarray, k: int, seed: int, max_iter: int) -> float:
    km = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed).fit(data)
    return float(np.log(max(km.inertia_, 1e-300)))


@dataclass
class GapResult:
    k: int
    curve: pd.DataFrame    # columns k, log_w, log_w_ref, gap, sd, s (ascending k)


def gap_statistic(data: np.ndarray, ks: list[int], n_refs: int = 10, seed: int = 0, max_iter: int = 100
                  ) -> GapResult:
    data = np.asarray(data, dtype=np.float64)
    if not np.isfinite(data).all():
        raise ValueError("gap statistic: the data hold NaN or infinite values")
    if len(data) <= max(ks):
        raise ValueError(f"gap statistic: {len(data)} points cannot be split into {max(ks)} clusters")
    rng = np.random.default_rng(seed)
    low, high = data.min(axis=0), data.max(axis=0)
    refs = [rng.uniform(low, high, size=data.shape) for _ in range(n_refs)]
    rows = []
    started = time.perf_counter()
    for k in sorted(ks):
        log_w = _log_w(data, k, seed, max_iter)
        ref = np.array([_log_w(r, k, seed + 1 + b, max_iter) for b, r in enumerate(refs)])
        sd = float(ref.std())
        rows.append({"k": k, "log_w": log_w, "log_w_ref": float(ref.mean()), "gap": float(ref.mean() - log_w),
                     "sd": sd, "s": sd * np.sqrt(1.0 + 1.0 / n_refs)})
        log.info("gap statistic: k=%d gap=%.4f s=%.4f (%.1fs)", k, rows[-1]["gap"], rows[-1]["s"],
                 time.perf_counter() - started)
    curve = pd.DataFrame(rows)
    chosen = None
    for i in range(len(curve) - 1):
        if curve.gap[i] >= curve.gap[i + 1] - curve.s[i + 1]:
            chosen = int(curve.k[i])
            break
    if chosen is None:
        chosen = int(curve.k[curve.gap.idxmax()])
    return GapResult(chosen, curve)


def fit_centres(data: np.ndarray, k: int, seed: int = 0, n_init: int = 4) -> np.ndarray:
    km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(np.asarray(data, dtype=np.float64))
    # order clusters by their first principal feature so label numbers are reproducible and readable
    order = np.argsort(km.cluster_centers_[:, 0])
    return km.cluster_centers_[order].astype(np.float32)


def assign(features: np.ndarray, centres: np.ndarray, temperature: float | None = None,
           block_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) uint16 of the nearest centre, and soft assignments (k, H, W) float16:
    softmax(-d^2 / T) with T the given temperature (None: the median squared distance to the nearest
    centre over the image, so maps are neither all one-hot nor all flat). Works row block by row block."""
    h, w, c = features.shape
    k = len(centres)
    centres = np.asarray(centres, dtype=np.float32)
    labels = np.empty((h, w), dtype=np.uint16)
    soft = np.empty((k, h, w), dtype=np.float16)
    dists = []
    for y in range(0, h, block_rows):
        f = np.asarray(features[y:y + block_rows], dtype=np.float32).reshape(-1, c)
        d2 = ((f ** 2).sum(1)[:, None] - 2 * f @ centres.T + (centres ** 2).sum(1)[None, :]).clip(min=0)
        dists.append(d2)
    all_min = np.concatenate([d.min(axis=1) for d in dists])
    t = float(temperature) if temperature else float(max(np.median(all_min), 1e-6))
    y = 0
    for d2 in dists:
        rows = len(d2) // w
        labels[y:y + rows] = d2.argmin(axis=1).reshape(rows, w)
        z = -(d2 - d2.min(axis=1, keepdims=True)) / t
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        soft[:, y:y + rows] = p.T.reshape(k, rows, w)
        y += rows
    return labels, soft
