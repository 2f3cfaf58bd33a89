"""Self-supervised segmentation maps of the brain slices: the histology track's machinery applied to MRI.

The FGSN is pretrained on pseudo-labels of the training slices (background from the brain mask, brain
split by k-means on intensity: on a T1 image roughly CSF / grey / white matter), its multi-scale
features are fused by PCA, one codebook is fitted on features pooled over the training slices with the
gap statistic choosing k, and every fixed and moving slice gets soft assignments to that codebook. No
manual label is read anywhere here: the label volumes are only for evaluation and for the
`voxelmorph_seg` comparison.

File (srnet-brain-maps-1): `fixed_map`, `moving_map` (N, k, H, W) float16 soft assignments,
`fixed_segmentation`, `moving_segmentation` (N, H, W) uint16, `gap` curve; attrs k, model_sha256,
slices_sha256.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..atomic import sha256_of, write_csv_atomic
from ..h5io import h5_writer, open_checked
from .slices import read_slices

log = logging.getLogger(__name__)
FORMAT_MAPS = "srnet-brain-maps-1"
BRAIN_THRESHOLD = 0.02          # intensities are scaled to [0, 1] by the volume's 99.5th percentile


def as_rgb(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A [0, 1] slice as the (H, W, 3) uint8 image the FGSN reads, and its brain mask."""
    gray = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), image > BRAIN_THRESHOLD


def _training_images(slices) -> list[tuple[np.ndarray, str]]:
    train = slices.indices("train")
    if not len(train):
        raise ValueError("the slice split left no training slice; lower `test`/`validation` or add slices")
    seen, images = set(), []
    for i in train:
        key = (int(slices.volume[i]), int(slices.slice[i]))
        if key not in seen:
            seen.add(key)
            images.append((slices.fixed[i], f"fixed {slices.pair_id(i)}"))
        images.append((slices.moving[i], f"moving {slices.pair_id(i)}"))
    return images


def pretrain_stage(slices_h5: str, model_path: str, loss_csv: str, *, pseudo_classes: int = 3,
                   base_channels: int = 16, feature_channels: int = 16, settings: dict | None = None) -> str:
    from ..segmentation.fgsn import FGSNConfig
    from ..segmentation.pretrain import PretrainSettings, Sample, pretrain_and_save, pseudo_labels
    settings_ = PretrainSettings(**(settings or {}))
    slices = read_slices(slices_h5)
    samples, fusion = [], []
    for image, name in _training_images(slices):
        rgb, mask = as_rgb(image)
        samples.append(Sample(rgb, mask, pseudo_labels(rgb, mask, pseudo_classes, settings_.seed), name))
        fusion.append((rgb, mask))
    config = FGSNConfig(base_channels=base_channels, feature_channels=feature_channels)
    return pretrain_and_save(samples, pseudo_classes + 1, settings_, fusion, model_path, loss_csv, config,
                             f"pseudo-labels of {len(samples)} training brain slices")


def _features(model, projection, image: np.ndarray, device, smooth_sigma: float) -> np.ndarray:
    from ..segmentation.fgsn import MULTIPLE, normalise_image, tiled_features
    rgb, mask = as_rgb(image)
    tile = int(np.ceil(max(image.shape) / MULTIPLE) * MULTIPLE)
    feats = tiled_features(model, normalise_image(rgb, mask), projection, tile=tile, margin=2 * MULTIPLE,
                           device=device)
    if smooth_sigma:
        from scipy import ndimage
        feats = ndimage.gaussian_filter(feats, sigma=(smooth_sigma, smooth_sigma, 0), mode="nearest")
    return np.asarray(feats, dtype=np.float32)


def maps_stage(slices_h5: str, model_path: str, out_h5: str, gap_csv: str, gap_png: str, *, k0: int = 8,
               shrink: float = 0.9, k_min: int = 2, references: int = 10, samples: int = 30000, seed: int = 0,
               temperature: float | None = None, smooth_sigma: float = 0.0, brain_share: float = 0.8) -> int:
    from ..segmentation.clustering import assign, candidate_ks, fit_centres, gap_statistic
    from ..segmentation.fgsn import load_checkpoint, pick_device
    from ..segmentation.stages import plot_gap_curve
    device = pick_device()
    model, projection, checksum = load_checkpoint(model_path, device)
    slices = read_slices(slices_h5)
    started = time.perf_counter()
    n = len(slices.fixed)
    fixed_cache: dict[tuple[int, int], np.ndarray] = {}
    feats_fixed, feats_moving = [], []
    for i in range(n):
        key = (int(slices.volume[i]), int(slices.slice[i]))
        if key not in fixed_cache:
            fixed_cache[key] = _features(model, projection, slices.fixed[i], device, smooth_sigma)
        feats_fixed.append(fixed_cache[key])
        feats_moving.append(_features(model, projection, slices.moving[i], device, smooth_sigma))
    log.info("features of %d fixed and %d moving slices in %.1fs on %s", len(fixed_cache), n,
             time.perf_counter() - started, device)

    # codebook on training slices only, pooled over fixed and moving images, mostly on brain
    rng = np.random.default_rng(seed)
    train = slices.indices("train")
    pool = [(feats_fixed[i], slices.fixed[i]) for i in train] + [(feats_moving[i], slices.moving[i]) for i in train]
    per_image = max(1, samples // len(pool))
    rows = []
    for feats, image in pool:
        flat = feats.reshape(-1, feats.shape[-1])
        inside, outside = np.flatnonzero(image.ravel() > BRAIN_THRESHOLD), np.flatnonzero(image.ravel() <= BRAIN_THRESHOLD)
        n_in = min(len(inside), int(round(per_image * brain_share)))
        n_out = min(len(outside), per_image - n_in)
        rows.append(flat[np.concatenate([rng.choice(inside, n_in, replace=False),
                                         rng.choice(outside, n_out, replace=False)])])
    data = np.concatenate(rows)
    ks = candidate_ks(k0, shrink, k_min)
    result = gap_statistic(data, ks, references, seed)
    centres = fit_centres(data, result.k, seed)
    log.info("gap statistic over k in %s on %d pixels of %d training images: k = %d", ks, len(data), len(pool),
             result.k)

    h, w = slices.fixed.shape[1:]
    k = len(centres)
    attrs = {"k": k, "model_sha256": checksum, "slices_sha256": sha256_of(slices_h5)}
    with h5_writer(out_h5, FORMAT_MAPS, attrs) as f:
        for side, feats in (("fixed", feats_fixed), ("moving", feats_moving)):
            maps = f.create_dataset(f"{side}_map", (n, k, h, w), dtype="float16", chunks=(1, k, h, w),
                                    compression="gzip", compression_opts=4)
            segs = f.create_dataset(f"{side}_segmentation", (n, h, w), dtype="uint16")
            for i in range(n):
                labels, soft = assign(feats[i], centres, temperature)
                maps[i], segs[i] = soft, labels
        f.create_dataset("centres", data=centres)
        f.create_dataset("gap", data=result.curve.to_numpy(dtype=np.float64))
    write_csv_atomic(gap_csv, result.curve, float_format="%.6g")
    plot_gap_curve(result.curve, result.k, gap_png, title="brain slices: gap statistic")
    return k


def read_maps(path: str | os.PathLike, slices_h5: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(fixed_map, moving_map, attrs); with `slices_h5`, refuses maps made from other slices."""
    from ..errors import InputError
    with open_checked(path, FORMAT_MAPS) as f:
        attrs = dict(f.attrs)
        if slices_h5 is not None and attrs.get("slices_sha256") != sha256_of(slices_h5):
            raise InputError(path, f"maps were made from other slices than {slices_h5}; re-run brain_maps")
        return f["fixed_map"][()], f["moving_map"][()], attrs
