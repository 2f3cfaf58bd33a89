"""The clustering stages as functions the workflow scripts call (one per rule): codebook and maps.
They need no torch: the FGSN stages live in feature_stages.py, so the clustering env stays small."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..errors import InputError
from ..h5io import (read_codebook, read_features, read_prepared, read_prepared_mask,
                    write_codebook, write_segmentation)
from ..outcome import usable
from ..record import pass_on

log = logging.getLogger(__name__)


def sample_pixels(feature_paths: list[str], prepared_paths: list[str], n_total: int, seed: int,
                  tissue_share: float = 0.8, model_sha256: str | None = None) -> np.ndarray:
    """Equal numbers of pixels per image, `tissue_share` of them on tissue, the rest on background."""
    rng = np.random.default_rng(seed)
    per_image = max(1, n_total // max(1, len(feature_paths)))
    rows = []
    channels = None
    for fpath, ppath in zip(feature_paths, prepared_paths, strict=True):
        features, attrs = read_features(fpath, model_sha256=model_sha256, channels=channels)
        channels = features.shape[2]
        mask = read_prepared_mask(ppath)
        if mask.shape != features.shape[:2]:
            raise InputError(fpath, f"features are {features.shape[1]}x{features.shape[0]} but the prepared "
                                    f"image is {mask.shape[1]}x{mask.shape[0]}")
        tissue, background = np.flatnonzero(mask), np.flatnonzero(~mask)
        n_t = min(len(tissue), int(round(per_image * tissue_share)) if len(background) else per_image)
        n_b = min(len(background), per_image - n_t)
        pick = np.concatenate([rng.choice(tissue, n_t, replace=False), rng.choice(background, n_b, replace=False)])
        rows.append(features.reshape(-1, channels)[pick])
    return np.concatenate(rows)


def codebook_stage(feature_paths: list[str], prepared_paths: list[str], dataset: str, out_h5: str,
                   out_csv: str, out_png: str, *, k0: int = 6, shrink: float = 0.9, k_min: int = 2,
                   references: int = 10, samples: int = 50000, seed: int = 0) -> int:
    from ..atomic import write_csv_atomic
    from .clustering import candidate_ks, fit_centres, gap_statistic
    kept = usable(list(zip(feature_paths, prepared_paths, strict=True)), "codebook", files=list,
                  name=lambda item: os.path.basename(item[1]))
    feature_paths, prepared_paths = [f for f, _ in kept], [p for _, p in kept]
    first_attrs = read_features(feature_paths[0], rows=slice(0, 1))[1]
    model = str(first_attrs["model_sha256"])
    data = sample_pixels(feature_paths, prepared_paths, samples, seed, model_sha256=model)
    ks = candidate_ks(k0, shrink, k_min)
    log.info("%s: choosing k among %s on %d sampled pixels of %d images, B=%d", dataset, ks, len(data),
             len(feature_paths), references)
    result = gap_statistic(data, ks, references, seed)
    centres = fit_centres(data, result.k, seed)
    write_codebook(out_h5, centres, result.curve, {"dataset": dataset, "model_sha256": model,
                                                   "samples": len(data), "references": references})
    write_csv_atomic(out_csv, result.curve, float_format="%.6g")
    plot_gap_curve(result.curve, result.k, out_png, title=f"{dataset}: gap statistic")
    log.info("%s: k = %d", dataset, result.k)
    return result.k


def segment_stage(features_path: str, prepared_path: str, codebook_path: str, dataset: str, image_id: str,
                  out_h5: str, out_png: str, *, temperature: float | None = None) -> None:
    import pyvips

    from ..atomic import atomic_path, sha256_of
    from .clustering import assign
    if pass_on([features_path, prepared_path], [out_h5, out_png], "segment"):
        return
    centres, cb = read_codebook(codebook_path, dataset=dataset)
    prepared = read_prepared(prepared_path)
    if not prepared.mask.any():
        raise InputError(prepared_path, "no tissue in the prepared image; refusing to segment it")
    features, attrs = read_features(features_path, model_sha256=str(cb["model_sha256"]), channels=centres.shape[1])
    labels, soft = assign(features, centres, temperature)
    write_segmentation(out_h5, labels, soft, {"dataset": dataset, "image_id": image_id,
                                              "codebook_sha256": sha256_of(codebook_path)})
    overlay = label_overlay(prepared.image, labels, len(centres))
    with atomic_path(out_png) as tmp:
        pyvips.Image.new_from_array(overlay).copy(interpretation="srgb").pngsave(os.fspath(tmp))
    counts = np.bincount(labels.ravel(), minlength=len(centres))
    log.info("%s: %d labels used of %d; largest share %.1f%%", image_id, int((counts > 0).sum()),
             len(centres), 100 * counts.max() / counts.sum())


def label_overlay(rgb: np.ndarray, labels: np.ndarray, k: int, alpha: float = 0.5) -> np.ndarray:
    import matplotlib
    colours = (np.asarray(matplotlib.colormaps["tab20"].resampled(max(k, 2))(np.arange(k)))[:, :3] * 255)
    return np.clip((1 - alpha) * rgb + alpha * colours[labels], 0, 255).astype(np.uint8)


def plot_gap_curve(curve, chosen: int, out_png: str, title: str) -> None:
    from ..figures import new_figure, save_figure
    fig, ax = new_figure(figsize=(5, 3.2), dpi=120)
    ax.errorbar(curve["k"], curve["gap"], yerr=curve["s"], marker="o", ms=3, capsize=2)
    ax.axvline(chosen, color="tab:red", ls="--", lw=1, label=f"chosen k = {chosen}")
    ax.set_xlabel("k (clusters)")
    ax.set_ylabel("Gap(k) ± s_k")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, out_png)
