"""Pretraining the FGSN, and fitting its feature fusion (PCA).

Two sources of supervision:
* `glas`: a gland dataset in the GlaS layout (`train_XX.bmp` with `train_XX_anno.bmp`, `testA_XX...`,
  `testB_XX...`); annotations are gland instance ids, trained as gland vs background;
* `self` (default, no manual labels anywhere): pseudo-labels from each prepared image itself -
  background from the tissue mask, and tissue split into `pseudo_classes` classes by k-means on the
  optical density of the three channels, numbered by increasing density (pale stroma ... dark nuclei),
  so the numbering means the same thing in every image whatever its stain. The network sees the images
  through random stain changes (HED colour-deconvolution jitter, brightness, contrast) while the
  targets stay fixed, which teaches it features that follow tissue structure rather than colour:
  what the segmentation loss needs across ANHIR's differently stained pairs. See docs/SEGMENTATION.md.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .fgsn import FGSN, MULTIPLE, FGSNConfig, normalise_image, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class PretrainSettings:
    iterations: int = 300
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 100
    pca_samples: int = 20000


@dataclass
class Sample:
    """One training image: RGB (H, W, 3) uint8, tissue mask (H, W) bool, labels (H, W) int64."""
    rgb: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    name: str


# ----------------------------------------------------------------------------------------------------
# supervision

def optical_density(rgb: np.ndarray) -> np.ndarray:
    return -np.log((rgb.astype(np.float32) + 1.0) / 256.0)


def pseudo_labels(rgb: np.ndarray, mask: np.ndarray, n_tissue_classes: int = 4, seed: int = 0) -> np.ndarray:
    """0 = background, 1..n = tissue classes by increasing mean optical density."""
    from sklearn.cluster import KMeans
    if not mask.any():
        raise ValueError("no tissue to derive pseudo-labels from")
    od = optical_density(rgb)
    tissue = od[mask]
    rng = np.random.default_rng(seed)
    fit_on = tissue[rng.choice(len(tissue), size=min(len(tissue), 20000), replace=False)]
    km = KMeans(n_tissue_classes, n_init=3, random_state=seed).fit(fit_on)
    order = np.argsort(km.cluster_centers_.sum(axis=1))          # pale -> dark
    rank = np.empty_like(order)
    rank[order] = np.arange(n_tissue_classes)
    labels = np.zeros(mask.shape, dtype=np.int64)
    labels[mask] = rank[km.predict(tissue)] + 1
    return labels


GLAS_ANNOTATION = re.compile(r"^(?P<stem>(train|testA|testB)_\d+)_anno\.bmp$", re.IGNORECASE)


def glas_pairs(root: str | os.PathLike, splits: tuple[str, ...] = ("train",)) -> list[tuple[Path, Path]]:
    """(image, annotation) paths of a GlaS-layout folder for the given splits (`train`, `testA`, `testB`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "GlaS folder not found")
    pairs = []
    for anno in sorted(root.iterdir()):
        m = GLAS_ANNOTATION.match(anno.name)
        if not m or m.group("stem").split("_")[0] not in splits:
            continue
        image = anno.with_name(m.group("stem") + ".bmp")
        if not image.is_file():
            raise InputError(anno, f"annotation without its image {image.name}")
        pairs.append((image, anno))
    if not pairs:
        raise InputError(root, f"no GlaS image/annotation pairs (`{splits[0]}_XX.bmp` + `_anno.bmp`) found")
    return pairs


def load_glas(root: str | os.PathLike, splits: tuple[str, ...] = ("train",)) -> list[Sample]:
    """GlaS images with gland (1) vs background (0) targets; the whole image counts as tissue."""
    from PIL import Image
    samples = []
    for image_path, anno_path in glas_pairs(root, splits):
        try:
            rgb = np.asarray(Image.open(image_path).convert("RGB"))
            anno = np.asarray(Image.open(anno_path))
        except OSError as exc:
            raise InputError(image_path, f"unreadable GlaS image or annotation ({exc})") from None
        if anno.ndim == 3:
            anno = anno[..., 0]
        if anno.shape != rgb.shape[:2]:
            raise InputError(anno_path, f"annotation is {anno.shape[::-1]} but the image is {rgb.shape[1::-1]}")
        samples.append(Sample(rgb, np.ones(anno.shape, bool), (anno > 0).astype(np.int64), image_path.name))
    return samples


# ----------------------------------------------------------------------------------------------------
# augmentation

def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.35) -> np.ndarray:
    """Random re-staining: scale each HED channel, then brightness and contrast."""
    from skimage.color import hed2rgb, rgb2hed
    hed = rgb2hed(rgb)
    hed *= rng.uniform(1 - strength, 1 + strength, size=3)[None, None, :]
    out = np.clip(hed2rgb(hed), 0, 1)
    out = (out - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    return np.clip(out * 255.0, 0, 255).astype(np.uint8)


def _batch(samples: list[Sample], settings: PretrainSettings, rng: np.random.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augmented crops (B, 3, crop, crop), normalised, and their labels (B, crop, crop); -1 = padding."""
    crop = settings.crop
    xs, ys = [], []
    for _ in range(settings.batch_size):
        s = samples[rng.integers(len(samples))]
        h, w = s.labels.shape
        ch, cw = min(crop, h // MULTIPLE * MULTIPLE), min(crop, w // MULTIPLE * MULTIPLE)
        # prefer crops centred on tissue
        ys_, xs_ = np.nonzero(s.mask[::4, ::4])
        if len(ys_):
            j = rng.integers(len(ys_))
            cy = int(np.clip(ys_[j] * 4 - ch // 2, 0, h - ch))
            cx = int(np.clip(xs_[j] * 4 - cw // 2, 0, w - cw))
        else:
            cy, cx = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        rgb = s.rgb[cy:cy + ch, cx:cx + cw]
        lab = s.labels[cy:cy + ch, cx:cx + cw]
        msk = s.mask[cy:cy + ch, cx:cx + cw]
        k = int(rng.integers(4))
        rgb, lab, msk = np.rot90(rgb, k), np.rot90(lab, k), np.rot90(msk, k)
        if rng.random() < 0.5:
            rgb, lab, msk = rgb[:, ::-1], lab[:, ::-1], msk[:, ::-1]
        pad = ((0, 0), (0, crop - rgb.shape[0]), (0, crop - rgb.shape[1]))
        x = normalise_image(stain_jitter(np.ascontiguousarray(rgb), rng), np.ascontiguousarray(msk))
        xs.append(np.pad(x, pad, mode="reflect"))          # small images: pad to the batch size
        ys.append(np.pad(np.ascontiguousarray(lab), pad[1:], constant_values=-1))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))


# ----------------------------------------------------------------------------------------------------
# training

def train_fgsn(samples: list[Sample], n_classes: int, settings: PretrainSettings, workdir: str | os.PathLike,
               config: FGSNConfig | None = None, device: torch.device | str = "cpu") -> tuple[FGSN, list[dict]]:
    """Train with Adam and cross-entropy; a `state.pt` in workdir every `checkpoint_every` iterations
    lets a killed job resume where it stopped. Returns the model (eval mode) and the loss history."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = config or FGSNConfig()
    config.n_classes = n_classes
    torch.manual_seed(settings.seed)
    model = FGSN(config).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    state_path = workdir / "state.pt"
    history: list[dict] = []
    start = 0
    fingerprint = {"config": asdict(config), "settings": asdict(settings), "n_samples": len(samples)}
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state.get("fingerprint") == repr(fingerprint):
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            start = int(state["iteration"])
            history = [dict(zip(("iteration", "loss", "accuracy"), row)) for row in state["history"].tolist()]
            log.info("resuming FGSN pretraining at iteration %d", start)
        else:
            log.info("ignoring %s: made with other settings", state_path)
    model.train()
    started = time.perf_counter()
    for it in range(start, settings.iterations):
        rng = np.random.default_rng([settings.seed, it])    # per-iteration stream: resume is exact
        x, y = _batch(samples, settings, rng)
        x, y = x.to(device), y.to(device)
        scores = model(x)
        loss = F.cross_entropy(scores, y, ignore_index=-1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        valid = y >= 0
        accuracy = (scores.argmax(1)[valid] == y[valid]).float().mean().item()
        history.append({"iteration": it + 1, "loss": float(loss.item()), "accuracy": accuracy})
        if (it + 1) % max(1, settings.iterations // 10) == 0 or it + 1 == settings.iterations:
            log.info("FGSN pretraining %d/%d: loss %.4f, pixel accuracy %.3f (%.1fs)", it + 1,
                     settings.iterations, loss.item(), accuracy, time.perf_counter() - started)
        if (it + 1) % settings.checkpoint_every == 0 and it + 1 < settings.iterations:
            _save_state(state_path, model, optimiser, it + 1, history, fingerprint)
    model.eval()
    return model, history


def _save_state(path: Path, model, optimiser, iteration: int, history: list[dict], fingerprint: dict) -> None:
    from ..atomic import atomic_path
    rows = torch.tensor([[h["iteration"], h["loss"], h["accuracy"]] for h in history], dtype=torch.float64)
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "iteration": iteration,
                    "history": rows, "fingerprint": repr(fingerprint)}, tmp)


def fit_fusion(model: FGSN, images: list[tuple[np.ndarray, np.ndarray]], n_components: int,
               n_samples: int = 20000, seed: int = 0, window: int = 256, margin: int = 64,
               device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """PCA of raw multi-scale features sampled from random windows of the (normalised) images, mostly
    on tissue. Returns (mean (R,), components (C, R))."""
    from sklearn.decomposition import PCA

    from .fgsn import tiled_features
    rng = np.random.default_rng(seed)
    per_image = max(1, n_samples // max(1, len(images)))
    rows = []
    for rgb, mask in images:
        x = normalise_image(rgb, mask)
        h, w = mask.shape
        wh, ww = min(window, h), min(window, w)
        y0, x0 = int(rng.integers(0, h - wh + 1)), int(rng.integers(0, w - ww + 1))
        ys, xs = np.nonzero(mask)
        if len(ys):   # centre the window on a random tissue pixel
            j = rng.integers(len(ys))
            y0 = int(np.clip(ys[j] - wh // 2, 0, h - wh))
            x0 = int(np.clip(xs[j] - ww // 2, 0, w - ww))
        raw = tiled_features(model, x[:, y0:y0 + wh, x0:x0 + ww], None, tile=window, margin=margin, device=device)
        flat = raw.reshape(-1, raw.shape[-1])
        rows.append(flat[rng.choice(len(flat), size=min(per_image, len(flat)), replace=False)])
    data = np.concatenate(rows).astype(np.float64)
    pca = PCA(n_components=n_components, random_state=seed).fit(data)
    log.info("fusion PCA on %d pixels: %d -> %d channels, %.1f%% of the variance kept", len(data),
             data.shape[1], n_components, 100 * pca.explained_variance_ratio_.sum())
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def pretrain_and_save(samples: list[Sample], n_classes: int, settings: PretrainSettings, fusion_images,
                      model_path: str | os.PathLike, loss_csv: str | os.PathLike, config: FGSNConfig,
                      source: str, device=None) -> str:
    """The whole `pretrain_fgsn` stage: train, fit the fusion, write the checkpoint and the loss CSV.
    Returns the model checksum."""
    from ..atomic import atomic_path
    from .fgsn import pick_device
    device = device or pick_device()
    log.info("FGSN pretraining on %s (%d images, %d classes) on %s", source, len(samples), n_classes, device)
    model, history = train_fgsn(samples, n_classes, settings, Path(model_path).parent, config, device)
    projection = fit_fusion(model, fusion_images, config.feature_channels, settings.pca_samples,
                            settings.seed, device=device)
    with atomic_path(loss_csv) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["iteration", "loss", "accuracy"])
        writer.writeheader()
        writer.writerows(history)
    checksum = save_checkpoint(model_path, model.cpu(), projection,
                               extra={"source": source, "settings": asdict(settings)})
    state = Path(model_path).parent / "state.pt"
    if state.exists():
        state.unlink()
    return checksum
