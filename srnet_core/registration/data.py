"""What the registration network sees for one pair, on the fixed working grid.

`PairStack` holds the fixed image's tissue density, the moving density resampled through the affine
pre-alignment, and, for SR-Net, both segmentation maps (the moving one resampled the same way), all
(C, H, W) float32 on the fixed working grid. Densities (affine.tissue_density) are stain-independent,
so MSE and NCC compare like with like across an H&E / IHC pair.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..h5io import read_prepared, read_segmentation
from .affine import tissue_density, warp_affine


@dataclass
class PairStack:
    fixed: np.ndarray                  # (1, H, W)
    moving: np.ndarray                 # (1, H, W) affine-resampled moving density
    fixed_map: np.ndarray | None       # (k, H, W)
    moving_map: np.ndarray | None      # (k, H, W) affine-resampled
    fixed_mask: np.ndarray             # (H, W) bool
    moving_raw: np.ndarray             # (1, Hm, Wm) moving density on its own grid (overlays)
    affine: np.ndarray                 # (2, 3) fixed working -> moving working
    fixed_scale: tuple[float, float]
    moving_scale: tuple[float, float]
    fixed_full: tuple[int, int]
    moving_full: tuple[int, int]
    work_shape: tuple[int, int]        # (H, W) of the fixed working grid; the arrays above may be coarser

    @property
    def shape(self) -> tuple[int, int]:
        return self.fixed.shape[1:]

    def field_to_working(self, field: np.ndarray) -> np.ndarray:
        """A field on this stack's (registration) grid -> the fixed working grid, in working px."""
        if tuple(field.shape[1:]) == tuple(self.work_shape):
            return np.asarray(field, dtype=np.float32)
        h, w = self.work_shape
        sy, sx = h / field.shape[1], w / field.shape[2]
        with torch.no_grad():
            up = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(field, np.float32))[None],
                                                 size=(h, w), mode="bilinear", align_corners=False)[0]
        up[0] *= sx
        up[1] *= sy
        return up.numpy()

    @property
    def k(self) -> int:
        return 0 if self.fixed_map is None else self.fixed_map.shape[0]

    def shrunk(self, factor: int) -> "PairStack":
        """This stack area-averaged onto a grid `factor` times coarser (the working-grid stack -> the
        registration grid, or the finer grid of instance optimisation); the masks by majority."""
        if factor <= 1:
            return self
        return dataclasses.replace(
            self, fixed=_shrink(self.fixed, factor), moving=_shrink(self.moving, factor),
            fixed_map=None if self.fixed_map is None else _shrink(self.fixed_map, factor),
            moving_map=None if self.moving_map is None else _shrink(self.moving_map, factor),
            fixed_mask=_shrink(self.fixed_mask[None].astype(np.float32), factor)[0] > 0.5)


def read_affine(path: str | os.PathLike) -> np.ndarray:
    try:
        data = json.loads(open(path).read())
        matrix = np.asarray(data["matrix"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable affine file ({type(exc).__name__}: {exc})") from None
    if data.get("format") != "srnet-affine-1" or matrix.shape != (2, 3) or not np.isfinite(matrix).all():
        raise InputError(path, "not an srnet affine file (format marker or a finite 2x3 matrix missing)")
    if abs(np.linalg.det(matrix[:, :2])) < 1e-6:
        raise InputError(path, "affine matrix is singular")
    return matrix


def _resample(moving: np.ndarray, affine: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    with torch.no_grad():
        out = warp_affine(torch.from_numpy(np.ascontiguousarray(moving, dtype=np.float32))[None], affine, shape)
    return out[0].numpy()


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return image
    h, w = image.shape[1:]
    size = (max(1, round(h / factor)), max(1, round(w / factor)))
    with torch.no_grad():
        return torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=size, mode="area")[0].numpy()


def load_pair_stack(fixed_prepared: str, moving_prepared: str, affine: np.ndarray | str | None,
                    fixed_segmentation: str | None = None, moving_segmentation: str | None = None,
                    downsample: int = 1) -> PairStack:
    """Read one pair from the stage files; affine None = the identity up to the working scales.
    `downsample` > 1 area-averages everything onto a grid that many times coarser than the working
    grid (the registration grid), after the affine resampling at working resolution."""
    fixed, moving = read_prepared(fixed_prepared), read_prepared(moving_prepared)
    shape = fixed.mask.shape
    if affine is None:
        rx, ry = moving.mask.shape[1] / shape[1], moving.mask.shape[0] / shape[0]
        affine = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5]])
    elif not isinstance(affine, np.ndarray):
        affine = read_affine(affine)
    fixed_density = tissue_density(fixed.image, fixed.mask)[None]
    moving_raw = tissue_density(moving.image, moving.mask)[None]
    moving_density = _resample(moving_raw, affine, shape)
    maps = [None, None]
    if fixed_segmentation and moving_segmentation:
        for i, (path, prepared) in enumerate(((fixed_segmentation, fixed), (moving_segmentation, moving))):
            _, soft, _ = read_segmentation(path)
            if soft.shape[1:] != prepared.mask.shape:
                raise InputError(path, f"segmentation map is {soft.shape[2]}x{soft.shape[1]}, its prepared image "
                                       f"is {prepared.mask.shape[1]}x{prepared.mask.shape[0]}; re-run segment")
            maps[i] = soft.astype(np.float32)
        if maps[0].shape[0] != maps[1].shape[0]:
            raise InputError(moving_segmentation, f"map has {maps[1].shape[0]} clusters, the fixed image's "
                                                  f"{maps[0].shape[0]}: maps from different codebooks")
        maps[1] = _resample(maps[1], affine, shape)
    return PairStack(fixed_density, moving_density, maps[0], maps[1], fixed.mask, moving_raw,
                     np.asarray(affine, dtype=np.float64), fixed.scale, moving.scale, fixed.full_size,
                     moving.full_size, tuple(fixed.mask.shape)).shrunk(downsample)


def network_input(stack: PairStack, map_inputs: bool) -> np.ndarray:
    """(C, H, W): fixed, moving[, fixed map, moving map] - the channel order every model is trained on."""
    parts = [stack.fixed, stack.moving]
    if map_inputs:
        if stack.fixed_map is None:
            raise ValueError("this method takes segmentation maps as input, but none were given")
        parts += [stack.fixed_map, stack.moving_map]
    return np.concatenate(parts, axis=0)
