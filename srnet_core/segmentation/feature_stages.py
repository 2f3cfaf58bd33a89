"""The FGSN stages as functions the workflow scripts call (one per rule): pretraining and feature
extraction, the two that need torch."""

from __future__ import annotations

import logging
import os
import time

from ..errors import InputError
from ..h5io import features_writer, read_prepared
from ..outcome import usable
from ..record import pass_on

log = logging.getLogger(__name__)


def pretrain_stage(prepared_paths: list[str], model_path: str, loss_csv: str, *, mode: str = "self",
                   glas_root: str | None = None, pseudo_classes: int = 4, base_channels: int = 16,
                   feature_channels: int = 16, feature_stride: int = 2, settings: dict | None = None) -> str:
    """Pretrain on the images at the feature scale (working image / feature_stride), where the network's
    receptive field covers tissue-level structure rather than single nuclei."""
    from .fgsn import FGSNConfig, downsample_for_features
    from .pretrain import PretrainSettings, Sample, load_glas, pretrain_and_save, pseudo_labels
    settings_ = PretrainSettings(**(settings or {}))
    images = []
    for path in usable(list(prepared_paths), "FGSN pretraining", name=os.path.basename):
        p = read_prepared(path)
        rgb, mask = downsample_for_features(p.image, p.mask, feature_stride)
        images.append((rgb, mask, os.path.basename(path)))
    if mode == "glas":
        if not glas_root:
            raise InputError(None, "segmentation.pretrain.mode is `glas` but glas_root is not set")
        samples = load_glas(glas_root)
        n_classes, source = 2, f"GlaS at {glas_root} ({len(samples)} annotated images)"
    else:
        samples = [Sample(rgb, mask, pseudo_labels(rgb, mask, pseudo_classes, settings_.seed), name)
                   for rgb, mask, name in images]
        n_classes, source = pseudo_classes + 1, f"pseudo-labels of {len(samples)} prepared images"
    config = FGSNConfig(base_channels=base_channels, feature_channels=feature_channels)
    return pretrain_and_save(samples, n_classes, settings_, [(rgb, mask) for rgb, mask, _ in images],
                             model_path, loss_csv, config, source)


def extract_stage(prepared_path: str, model_path: str, out_path: str, image_id: str, *, tile: int = 512,
                  margin: int = 64, feature_stride: int = 2, smooth_sigma: float = 1.0) -> None:
    """Features at working resolution / feature_stride, upsampled (linear, centre-aligned) onto the
    working grid, so every later stage indexes features like the prepared image."""
    from .fgsn import (downsample_for_features, load_checkpoint, normalise_image, pick_device,
                       tiled_features, upsample_linear)
    if pass_on([prepared_path], [out_path], "extract_features"):
        return
    device = pick_device()
    model, projection, checksum = load_checkpoint(model_path, device)
    prepared = read_prepared(prepared_path)
    if not prepared.mask.any():
        raise InputError(prepared_path, "no tissue in the prepared image; refusing to make features")
    rgb, mask = downsample_for_features(prepared.image, prepared.mask, feature_stride)
    x = normalise_image(rgb, mask)
    h, w = prepared.mask.shape
    attrs = {"model_sha256": checksum, "image_id": image_id, "source": str(prepared.attrs["source"]),
             "scale_x": prepared.scale[0], "scale_y": prepared.scale[1], "tile": tile, "margin": margin,
             "feature_stride": feature_stride, "smooth_sigma": smooth_sigma}
    started = time.perf_counter()
    last = [0.0]

    def progress(done, total):
        if time.perf_counter() - last[0] > 10 or done == total:
            last[0] = time.perf_counter()
            log.info("%s: features tile %d/%d (%.1fs)", image_id, done, total, last[0] - started)

    with features_writer(out_path, (h, w, len(projection[1])), attrs, chunk=min(256, tile)) as dataset:
        if feature_stride == 1 and not smooth_sigma:
            tiled_features(model, x, projection, tile=tile, margin=margin, out=dataset, device=device,
                           progress=progress)
        else:
            small = tiled_features(model, x, projection, tile=tile, margin=margin, device=device,
                                   progress=progress)
            if smooth_sigma:
                # pixel-level texture flips fine labels between two stainings; a light blur at the
                # feature scale keeps tissue-level structure and steadies the labels
                from scipy import ndimage
                small = ndimage.gaussian_filter(small, sigma=(smooth_sigma, smooth_sigma, 0), mode="nearest")
            upsample_linear(small, feature_stride, h, w, out=dataset)
    log.info("%s: %dx%d features, %d channels, model %s, %.1fs on %s", image_id, w, h, len(projection[1]),
             checksum[:12], time.perf_counter() - started, device)
