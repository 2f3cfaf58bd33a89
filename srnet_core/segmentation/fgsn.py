"""FGSN: the fine-grained segmentation network (a UNet) and its multi-scale feature extraction.

Architecture (seed paper, DESIGN.md section 4): 3 encoder and 3 decoder blocks, each block three 3x3
convolutions with batch norm and ReLU; 2x2 max pooling after each encoder block; the decoder upsamples
x2, concatenates the encoder map of the same level and applies its block; a 1x1 head gives class
scores for pretraining. Any input size: images are padded to a multiple of 8 and cropped back.

Features: encoder and decoder maps of matching levels are concatenated, upsampled (bilinear) to the
input resolution and projected per pixel onto `feature_channels` principal components fitted on the
dataset (the "fusion", stored in the checkpoint). Inference is tiled: tiles are aligned to the
8-pixel pooling grid and carry a margin wider than the network's receptive field, so tiled features
equal one-pass features up to float rounding, and only one tile's activations exist at a time.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..atomic import atomic_path, sha256_of

LEVELS = 3
MULTIPLE = 2 ** LEVELS


@dataclass
class FGSNConfig:
    in_channels: int = 3
    base_channels: int = 16
    n_classes: int = 5
    feature_channels: int = 16

    @property
    def raw_feature_channels(self) -> int:
        """Channels of the concatenated multi-scale map: encoder + decoder at each level."""
        return sum(2 * self.base_channels * 2 ** level for level in range(LEVELS))


def conv_block(cin: int, cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(3):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FGSN(nn.Module):
    def __init__(self, config: FGSNConfig):
        super().__init__()
        self.config = config
        c = [config.base_channels * 2 ** level for level in range(LEVELS)]   # 16, 32, 64
        self.encoders = nn.ModuleList([conv_block(config.in_channels, c[0]), conv_block(c[0], c[1]),
                                       conv_block(c[1], c[2])])
        # decoder level l takes the upsampled map from below (c[l] or c[2] at the bottom) + encoder skip c[l]
        self.decoders = nn.ModuleList([conv_block(c[1] + c[0], c[0]), conv_block(c[2] + c[1], c[1]),
                                       conv_block(c[2] + c[2], c[2])])
        self.head = nn.Conv2d(c[0], config.n_classes, 1)

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"FGSN expects (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % MULTIPLE or x.shape[3] % MULTIPLE:
            raise ValueError(f"FGSN input sides must be multiples of {MULTIPLE}, got {tuple(x.shape[2:])}")

    def levels(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(encoder map, decoder map)] for levels 0 (full resolution), 1 (1/2), 2 (1/4)."""
        self._check(x)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        decoded = [None] * LEVELS
        for level in reversed(range(LEVELS)):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = self.decoders[level](torch.cat([x, skips[level]], dim=1))
            decoded[level] = x
        return list(zip(skips, decoded))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (N, n_classes, H, W) for pretraining."""
        return self.head(self.levels(x)[0][1])

    def multiscale(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated encoder+decoder maps of every level, upsampled to the input size."""
        size = x.shape[2:]
        maps = []
        for enc, dec in self.levels(x):
            level = torch.cat([enc, dec], dim=1)
            if level.shape[2:] != size:
                level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
            maps.append(level)
        return torch.cat(maps, dim=1)

    def projected(self, x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
        """`components @ (multiscale(x) - mean)` per pixel, computed level by level at each level's own
        resolution before upsampling (projection and bilinear upsampling are both linear, so they
        commute): upsampling C channels instead of all raw channels is what keeps this fast."""
        size = x.shape[2:]
        total = None
        start = 0
        for enc, dec in self.levels(x):
            level = torch.cat([enc, dec], dim=1)
            stop = start + level.shape[1]
            part = torch.einsum("nrhw,cr->nchw", level, components[:, start:stop])
            if part.shape[2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            total = part if total is None else total + part
            start = stop
        return total - (components @ mean)[None, :, None, None]


def normalise_image(rgb: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32: each channel rank-normalised over the tissue (its value
    replaced by the share of tissue pixels darker than it, centred and scaled to unit variance).
    Any monotonic change of a channel (brightness, gamma, stain strength) leaves the result
    unchanged, so the two images of a differently stained pair enter the network alike."""
    rgb = np.asarray(rgb, dtype=np.uint8)
    pixels = rgb[mask] if mask is not None and mask.any() else rgb.reshape(-1, 3)
    out = np.empty((3,) + rgb.shape[:2], dtype=np.float32)
    for ch in range(3):
        counts = np.bincount(pixels[:, ch], minlength=256).astype(np.float64)
        cdf = (np.cumsum(counts) - 0.5 * counts) / max(1.0, counts.sum())   # mid-rank in [0, 1]
        table = ((cdf - 0.5) * np.sqrt(12.0)).astype(np.float32)             # uniform -> unit variance
        out[ch] = table[rgb[..., ch]]
    return out


def _pad_amounts(n: int, margin: int) -> tuple[int, int]:
    """Pad n by `margin` before and enough after for margin + multiple-of-8 size."""
    total = math.ceil(n / MULTIPLE) * MULTIPLE + 2 * margin
    return margin, total - n - margin


def tiled_features(model: FGSN, image: np.ndarray, projection: tuple[np.ndarray, np.ndarray] | None,
                   tile: int = 512, margin: int = 64, out: np.ndarray | None = None,
                   device: str | torch.device = "cpu", progress=None) -> np.ndarray:
    """Per-pixel features of a normalised (3, H, W) image, tile by tile.

    projection = (mean (R,), components (C, R)) maps raw multi-scale features to C channels; None
    returns the raw R channels. `out` (H, W, C) may be an HDF5 dataset: tiles are written as they
    are computed. Tile and margin must be multiples of 8 (pooling grid alignment)."""
    if tile % MULTIPLE or margin % MULTIPLE:
        raise ValueError(f"tile and margin must be multiples of {MULTIPLE}")
    _, h, w = image.shape
    (top, bottom), (left, right) = _pad_amounts(h, margin), _pad_amounts(w, margin)
    padded = np.pad(image, ((0, 0), (top, bottom), (left, right)), mode="reflect")
    channels = model.config.raw_feature_channels if projection is None else projection[1].shape[0]
    if out is None:
        out = np.empty((h, w, channels), dtype=np.float32)
    if projection is not None:
        mean_t = torch.as_tensor(projection[0], dtype=torch.float32, device=device)
        comp_t = torch.as_tensor(projection[1], dtype=torch.float32, device=device)
    model.eval()
    tiles = [(y, x) for y in range(0, h, tile) for x in range(0, w, tile)]
    with torch.inference_mode():
        for i, (y, x) in enumerate(tiles):
            th, tw = min(tile, h - y), min(tile, w - x)
            # window in padded coordinates: core [y, y+th) sits at [y+margin, ...); extend to multiples of 8
            wh = math.ceil(th / MULTIPLE) * MULTIPLE + 2 * margin
            ww = math.ceil(tw / MULTIPLE) * MULTIPLE + 2 * margin
            window = torch.from_numpy(np.ascontiguousarray(padded[:, y:y + wh, x:x + ww]))[None].to(device)
            if projection is not None:
                feats = model.projected(window, mean_t, comp_t)
            else:
                feats = model.multiscale(window)
            feats = feats[0, :, margin:margin + th, margin:margin + tw].permute(1, 2, 0)
            out[y:y + th, x:x + tw, :] = feats.cpu().numpy().astype(out.dtype, copy=False)
            if progress is not None:
                progress(i + 1, len(tiles))
    return out


# ----------------------------------------------------------------------------------------------------
# checkpoints: config + weights + fusion, loadable with torch.load(weights_only=True)

def save_checkpoint(path: str | os.PathLike, model: FGSN, projection: tuple[np.ndarray, np.ndarray],
                    extra: dict | None = None) -> str:
    """Write atomically; returns the file's SHA-256 (the model checksum features record)."""
    payload = {
        "format": "srnet-fgsn-1",
        "config": asdict(model.config),
        "state_dict": model.state_dict(),
        "pca_mean": torch.as_tensor(projection[0], dtype=torch.float32),
        "pca_components": torch.as_tensor(projection[1], dtype=torch.float32),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return sha256_of(path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[FGSN, tuple[np.ndarray, np.ndarray], str]:
    from ..errors import InputError
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise InputError(path, f"not a readable FGSN checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != "srnet-fgsn-1":
        raise InputError(path, "not an srnet FGSN checkpoint (format marker missing)")
    model = FGSN(FGSNConfig(**payload["config"])).to(device)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    projection = (payload["pca_mean"].cpu().numpy(), payload["pca_components"].cpu().numpy())
    return model, projection, sha256_of(path)



def pick_device() -> torch.device:
    """CUDA when present, else CPU; nothing assumes a GPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def downsample_for_features(rgb: np.ndarray, mask: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-average the working image by `stride` (ragged edges averaged over what exists); the mask
    keeps a pixel when at least half of its block is tissue."""
    if stride == 1:
        return rgb, mask
    from ..slides import _box_mean
    small = np.clip(np.rint(_box_mean(rgb, stride)), 0, 255).astype(np.uint8)
    share = _box_mean(np.repeat(mask[..., None].astype(np.uint8), 3, axis=2), stride)[..., 0]
    return small, share >= 0.5


def upsample_linear(small: np.ndarray, stride: int, height: int, width: int, out=None,
                    block_rows: int = 256) -> np.ndarray:
    """Separable linear upsampling of (h, w, C) by `stride` onto a (height, width) grid, pixel centres
    aligned (output y sits at small coordinate (y + 0.5) / stride - 0.5), written in row blocks so a
    large output (possibly an HDF5 dataset) is never held twice."""
    h, w, c = small.shape
    if out is None:
        out = np.empty((height, width, c), dtype=np.float32)

    def weights(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) / stride - 0.5, 0, n_in - 1)
        i0 = np.floor(pos).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    r0, r1, rw = weights(height, h)
    c0, c1, cw = weights(width, w)
    for y in range(0, height, block_rows):
        ys = slice(y, min(height, y + block_rows))
        rows = small[r0[ys]] * (1 - rw[ys])[:, None, None] + small[r1[ys]] * rw[ys][:, None, None]
        block = rows[:, c0] * (1 - cw)[None, :, None] + rows[:, c1] * cw[None, :, None]
        out[ys] = block.astype(out.dtype, copy=False)
    return out
