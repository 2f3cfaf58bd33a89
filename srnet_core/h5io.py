"""HDF5 conventions: every file is written atomically and records what made it.

A prepared image file holds `image` (H, W, 3) uint8, `mask` (H, W) uint8, `tiles` (N, 4) int32 and
attributes: full_width/full_height (full-resolution size), scale_x/scale_y (working px per full-res px),
the reader and level information, the source path, and `params` (JSON of the settings that made it).
`complete = 1` is written last; readers refuse files without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import InputError

FORMAT_PREPARED = "srnet-prepared-1"


@dataclass
class Prepared:
    image: np.ndarray
    mask: np.ndarray
    tiles: np.ndarray
    attrs: dict

    @property
    def scale(self) -> tuple[float, float]:
        return float(self.attrs["scale_x"]), float(self.attrs["scale_y"])

    @property
    def full_size(self) -> tuple[int, int]:
        """(width, height) at full resolution."""
        return int(self.attrs["full_width"]), int(self.attrs["full_height"])


def _chunks(shape, tile: int):
    return tuple(min(tile, n) for n in shape[:2]) + tuple(shape[2:])


def write_prepared(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, tiles: np.ndarray,
                   attrs: dict, params: dict, chunk: int = 256) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image, chunks=_chunks(image.shape, chunk),
                         compression="gzip", compression_opts=4)
        f.create_dataset("mask", data=mask.astype(np.uint8), chunks=_chunks(mask.shape, chunk),
                         compression="gzip", compression_opts=4)
        f.create_dataset("tiles", data=np.asarray(tiles, dtype=np.int32).reshape(-1, 4))
        f.attrs["format"] = FORMAT_PREPARED
        for key, value in attrs.items():
            f.attrs[key] = value
        f.attrs["params"] = json.dumps(params, sort_keys=True)
        f.attrs["complete"] = 1


def read_prepared_attrs(path: str | os.PathLike) -> dict:
    """Attributes only (no pixels): what evaluation needs."""
    with _open_checked(path) as f:
        return dict(f.attrs)


def read_prepared(path: str | os.PathLike) -> Prepared:
    with _open_checked(path) as f:
        return Prepared(f["image"][()], f["mask"][()].astype(bool), f["tiles"][()], dict(f.attrs))


def _open_checked(path):
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != FORMAT_PREPARED or f.attrs.get("complete") != 1:
        f.close()
        raise InputError(path, "incomplete or foreign HDF5 file (no complete srnet-prepared marker)")
    return f
