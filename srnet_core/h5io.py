"""HDF5 conventions: every file is written atomically, names its format, records what made it, and
gets `complete = 1` last; readers refuse files of another format or without the marker.

prepared  (srnet-prepared-1): `image` (H, W, 3) uint8, `mask` (H, W) uint8, `tiles` (N, 4) int32;
          attrs full_width/full_height, scale_x/scale_y (working px per full-res px), reader, source, params.
features  (srnet-features-1): `features` (H, W, C) float16, chunked and compressed; attrs
          model_sha256, image_id, source, scale_x/scale_y, channels.
codebook  (srnet-codebook-1): `centres` (k, C) float32, `gap` (n, 6) curve; attrs dataset, k,
          model_sha256, channels.
segmentation (srnet-segmentation-1): `labels` (H, W) uint16, `map` (k, H, W) float16 soft assignments;
          attrs dataset, k, codebook_sha256, image_id.
field     (srnet-field-1): `field` (2, H, W) float32 on the fixed working grid, working px, channel 0 = dx,
          1 = dy (backward: moving(p + u(p))); attrs affine (2x3, fixed work -> moving work), fixed_scale,
          moving_scale, fixed_full, moving_full, method, pair_id, model_sha256.
failed    (srnet-failed-1): no datasets; attrs reason, stage and what is known (outcome.py). It stands
          at the output path of a stage whose pair failed; every reader refuses it with its reason.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Iterator

import h5py
import numpy as np

from .atomic import atomic_path
from .errors import InputError

FORMAT_PREPARED = "srnet-prepared-1"
FORMAT_FEATURES = "srnet-features-1"
FORMAT_CODEBOOK = "srnet-codebook-1"
FORMAT_SEGMENTATION = "srnet-segmentation-1"
FORMAT_FIELD = "srnet-field-1"
FORMAT_FAILED = "srnet-failed-1"      # a failure record (outcome.py)


@contextlib.contextmanager
def h5_writer(path: str | os.PathLike, fmt: str, attrs: dict | None = None) -> Iterator[h5py.File]:
    """Open a temporary HDF5 file; on success mark it complete and rename it to `path`."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = fmt
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            yield f
            f.attrs["complete"] = 1


def open_checked(path: str | os.PathLike, fmt: str) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") == FORMAT_FAILED:       # outcome.py: a failure record stands in for a result
        reason, stage = f.attrs.get("reason", "?"), f.attrs.get("stage", "an earlier stage")
        f.close()
        raise InputError(path, f"holds no result: {stage} failed ({reason})")
    if f.attrs.get("format") != fmt or f.attrs.get("complete") != 1:
        found = f.attrs.get("format", "none")
        f.close()
        raise InputError(path, f"incomplete or foreign HDF5 file (expected a complete {fmt}, found {found})")
    return f


def _chunks(shape, tile: int):
    return tuple(min(tile, n) for n in shape[:2]) + tuple(shape[2:])


# ----------------------------------------------------------------------------------------------------
# prepared images

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


def write_prepared(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray, tiles: np.ndarray,
                   attrs: dict, params: dict, chunk: int = 256) -> None:
    with h5_writer(path, FORMAT_PREPARED, {**attrs, "params": json.dumps(params, sort_keys=True)}) as f:
        f.create_dataset("image", data=image, chunks=_chunks(image.shape, chunk),
                         compression="gzip", compression_opts=4)
        f.create_dataset("mask", data=mask.astype(np.uint8), chunks=_chunks(mask.shape, chunk),
                         compression="gzip", compression_opts=4)
        f.create_dataset("tiles", data=np.asarray(tiles, dtype=np.int32).reshape(-1, 4))


def read_prepared_attrs(path: str | os.PathLike) -> dict:
    """Attributes only (no pixels): what evaluation needs."""
    with open_checked(path, FORMAT_PREPARED) as f:
        return dict(f.attrs)


def read_prepared_mask(path: str | os.PathLike) -> np.ndarray:
    """The tissue mask only (sampling pixels needs no RGB)."""
    with open_checked(path, FORMAT_PREPARED) as f:
        return f["mask"][()].astype(bool)


def read_prepared(path: str | os.PathLike) -> Prepared:
    with open_checked(path, FORMAT_PREPARED) as f:
        return Prepared(f["image"][()], f["mask"][()].astype(bool), f["tiles"][()], dict(f.attrs))


# ----------------------------------------------------------------------------------------------------
# features

@contextlib.contextmanager
def features_writer(path: str | os.PathLike, shape: tuple[int, int, int], attrs: dict, chunk: int = 256
                    ) -> Iterator[h5py.Dataset]:
    """Yield the (H, W, C) float16 dataset to fill tile by tile; finished atomically."""
    with h5_writer(path, FORMAT_FEATURES, {**attrs, "channels": shape[2]}) as f:
        yield f.create_dataset("features", shape=shape, dtype=np.float16, chunks=_chunks(shape, chunk),
                               compression="gzip", compression_opts=1, shuffle=True)


def read_features(path: str | os.PathLike, model_sha256: str | None = None, channels: int | None = None,
                  rows: slice | None = None) -> tuple[np.ndarray, dict]:
    """Features (H, W, C) as float32 and attrs; refuses another model's features, a wrong channel count
    and non-finite values."""
    with open_checked(path, FORMAT_FEATURES) as f:
        attrs = dict(f.attrs)
        data = f["features"]
        if model_sha256 is not None and attrs.get("model_sha256") != model_sha256:
            raise InputError(path, f"features were made by model {str(attrs.get('model_sha256'))[:12]}, "
                                   f"not by the current FGSN {model_sha256[:12]}; re-run extract_features")
        if channels is not None and data.shape[2] != channels:
            raise InputError(path, f"features have {data.shape[2]} channels, expected {channels}")
        values = np.asarray(data[rows] if rows is not None else data[()], dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputError(path, f"features hold {int((~np.isfinite(values)).sum())} NaN or infinite values")
    return values, attrs


# ----------------------------------------------------------------------------------------------------
# codebook and segmentation

def write_codebook(path: str | os.PathLike, centres: np.ndarray, gap_curve, attrs: dict) -> None:
    with h5_writer(path, FORMAT_CODEBOOK, {**attrs, "k": len(centres), "channels": centres.shape[1]}) as f:
        f.create_dataset("centres", data=np.asarray(centres, dtype=np.float32))
        f.create_dataset("gap", data=gap_curve.to_numpy(dtype=np.float64))
        f["gap"].attrs["columns"] = json.dumps(list(gap_curve.columns))


def read_codebook(path: str | os.PathLike, dataset: str | None = None) -> tuple[np.ndarray, dict]:
    with open_checked(path, FORMAT_CODEBOOK) as f:
        attrs = dict(f.attrs)
        centres = f["centres"][()]
    if dataset is not None and attrs.get("dataset") != dataset:
        raise InputError(path, f"codebook was fitted on dataset {attrs.get('dataset')!r}, not {dataset!r}")
    return centres, attrs


def write_segmentation(path: str | os.PathLike, labels: np.ndarray, soft: np.ndarray, attrs: dict,
                       chunk: int = 256) -> None:
    with h5_writer(path, FORMAT_SEGMENTATION, {**attrs, "k": soft.shape[0]}) as f:
        f.create_dataset("labels", data=labels, chunks=_chunks(labels.shape, chunk),
                         compression="gzip", compression_opts=4)
        f.create_dataset("map", data=soft, chunks=(1,) + _chunks(soft.shape[1:], chunk),
                         compression="gzip", compression_opts=1, shuffle=True)


def read_segmentation(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    with open_checked(path, FORMAT_SEGMENTATION) as f:
        return f["labels"][()], f["map"][()], dict(f.attrs)


# ----------------------------------------------------------------------------------------------------
# registration fields

def write_field(path: str | os.PathLike, field: np.ndarray, attrs: dict, chunk: int = 256) -> None:
    field = np.asarray(field, dtype=np.float32)
    if field.ndim != 3 or field.shape[0] != 2:
        raise ValueError(f"field must be (2, H, W), got {field.shape}")
    with h5_writer(path, FORMAT_FIELD, attrs) as f:
        f.create_dataset("field", data=field, chunks=(1,) + _chunks(field.shape[1:], chunk),
                         compression="gzip", compression_opts=1, shuffle=True)


def read_field(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """The field and attrs; `shape` (H, W) is the fixed working grid it must cover."""
    with open_checked(path, FORMAT_FIELD) as f:
        data = f["field"]
        if data.ndim != 3 or data.shape[0] != 2 or (shape is not None and tuple(data.shape[1:]) != tuple(shape)):
            want = f"(2, {shape[0]}, {shape[1]})" if shape is not None else "(2, H, W)"
            raise InputError(path, f"field has shape {data.shape}, expected {want} (the fixed working grid)")
        values = data[()]
        attrs = dict(f.attrs)
    if not np.isfinite(values).all():
        raise InputError(path, "field holds NaN or infinite displacements")
    return values, attrs
