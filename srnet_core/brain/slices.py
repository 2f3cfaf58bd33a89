"""The brain MRI track's input: 2D slices from 3D volumes, with simulated elastic deformations.

As in the seed's brain experiment, the volumes are assumed affinely aligned and brain-extracted (the
shared MNI template is). Each chosen slice is a `fixed` image; its `moving` images are the same slice
warped by smooth random deformations, and the slice's label image is warped by the same deformation
with nearest-neighbour sampling, so the ground truth of every moving image is exact.

Volumes are read with nibabel (NIfTI .nii/.nii.gz, FreeSurfer .mgz; e.g. ADNI/OASIS T1 with `aseg`) and
reoriented to the closest canonical (RAS) axes, so `axis` means the same thing for every input:
0 = sagittal, 1 = coronal, 2 = axial. Slices are rotated so that anterior/superior is up.

Deformation convention (DESIGN.md section 3): a field v on the slice grid in pixels, channel 0 = dx
(columns), 1 = dy (rows); moving(p) = fixed(p + v(p)).

File (srnet-brain-slices-1): `fixed`, `moving` (N, H, W) float32 in [0, 1]; `fixed_labels`,
`moving_labels` (N, H, W) int32; `field` (N, 2, H, W) float32 (the simulated v); `split` (N,) uint8
(0 train, 1 validation, 2 test); `volume`, `slice`, `deformation` (N,) int32; attrs spacing (row, col)
in mm, axis, has_labels, settings (JSON), sources.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import InputError
from ..h5io import h5_writer, open_checked

log = logging.getLogger(__name__)
FORMAT_SLICES = "srnet-brain-slices-1"
SPLITS = ("train", "validation", "test")


@dataclass
class SliceSettings:
    axis: int = 2                     # 0 sagittal, 1 coronal, 2 axial (canonical RAS axes)
    start: int = 40                   # slice indices range(start, stop, step) of the full-resolution volume
    stop: int = 130
    step: int = 3
    zoom: int = 2                     # in-plane downsampling factor (voxel spacing scaled to match)
    min_brain_fraction: float = 0.1   # slices with less brain than this share of the image are skipped
    per_slice: int = 3                # simulated moving images per fixed slice
    magnitude_mm: float = 10.0        # largest displacement of a simulated deformation
    smoothness_mm: float = 10.0       # Gaussian sigma of the random field before scaling
    validation: float = 0.15          # shares of the (volume, slice) units, the rest trains
    test: float = 0.25
    seed: int = 0


@dataclass
class Volume:
    image: np.ndarray                 # (X, Y, Z) float32, canonical axes
    labels: np.ndarray | None         # (X, Y, Z) int32 or None
    spacing: tuple[float, float, float]
    path: str


@dataclass
class SliceSet:
    fixed: np.ndarray
    moving: np.ndarray
    fixed_labels: np.ndarray
    moving_labels: np.ndarray
    field: np.ndarray
    split: np.ndarray
    volume: np.ndarray
    slice: np.ndarray
    deformation: np.ndarray
    spacing: tuple[float, float]
    has_labels: bool
    attrs: dict = field(default_factory=dict)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def pair_id(self, i: int) -> str:
        return f"v{self.volume[i]}_s{self.slice[i]:03d}_d{self.deformation[i]}"


def find_volumes(root: str, image: str, labels: str | None = None) -> list[dict]:
    """Volumes of a subjects folder (ADNI / OASIS / FreeSurfer layouts): `image` is a glob under `root`
    (e.g. `*/mri/brain.mgz` in a FreeSurfer SUBJECTS_DIR), `labels` a file name next to each image
    (e.g. `aseg.mgz`) or None. Sorted by path, so the split is the same on every machine."""
    from pathlib import Path
    base = Path(root)
    if not base.is_dir():
        raise InputError(root, "brain subjects folder not found")
    images = sorted(base.glob(image))
    if not images:
        raise InputError(root, f"no volume matches {image!r}")
    found = []
    for path in images:
        entry = {"image": str(path), "labels": None}
        if labels:
            label_path = path.parent / labels
            if not label_path.exists():
                raise InputError(label_path, f"label volume {labels!r} missing beside {path.name}")
            entry["labels"] = str(label_path)
        found.append(entry)
    return found


def _load(path: str):
    import nibabel as nib
    if not os.path.exists(path):
        raise InputError(path, "volume not found")
    try:
        img = nib.as_closest_canonical(nib.load(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputError(path, f"not a readable NIfTI/MGZ volume ({type(exc).__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(path, f"expected a 3D volume, found shape {data.shape}")
    return img, data


def read_volume(image_path: str, labels_path: str | None = None) -> Volume:
    img, data = _load(image_path)
    data = np.asarray(data, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(image_path, "volume holds NaN or infinite values")
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    labels = None
    if labels_path:
        limg, ldata = _load(labels_path)
        if ldata.shape != data.shape:
            raise InputError(labels_path, f"label volume is {ldata.shape}, its image {data.shape}")
        if not np.allclose(limg.affine, img.affine, atol=1e-3):
            raise InputError(labels_path, "label volume is not on its image's voxel grid (affines differ)")
        ldata = np.asarray(ldata)
        if np.issubdtype(ldata.dtype, np.floating) and not np.allclose(ldata, np.round(ldata)):
            raise InputError(labels_path, "label volume holds non-integer values (an image, not labels?)")
        labels = np.round(ldata).astype(np.int32)
    return Volume(data, labels, spacing, image_path)


def _slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(np.take(volume, index, axis=axis)))


def _zoom_image(image: np.ndarray, z: int) -> np.ndarray:
    if z <= 1:
        return image
    h, w = (image.shape[0] // z) * z, (image.shape[1] // z) * z
    return image[:h, :w].reshape(h // z, z, w // z, z).mean(axis=(1, 3))


def _zoom_labels(labels: np.ndarray, z: int) -> np.ndarray:
    """Most frequent label of each z x z block (ties: the smallest label)."""
    if z <= 1:
        return labels
    h, w = (labels.shape[0] // z) * z, (labels.shape[1] // z) * z
    blocks = labels[:h, :w].reshape(h // z, z, w // z, z).transpose(0, 2, 1, 3).reshape(h // z, w // z, z * z)
    blocks = np.sort(blocks, axis=-1)
    best = blocks[..., 0].copy()
    best_count = np.zeros(best.shape, np.int32)
    for j in range(z * z):
        count = (blocks == blocks[..., j:j + 1]).sum(axis=-1)
        better = count > best_count
        best[better], best_count[better] = blocks[..., j][better], count[better]
    return best


def random_field(shape: tuple[int, int], spacing: tuple[float, float], magnitude_mm: float, smoothness_mm: float,
                 rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement (2, H, W) in pixels whose largest length is `magnitude_mm`."""
    from scipy import ndimage
    sigma = (smoothness_mm / spacing[0], smoothness_mm / spacing[1])
    noise = rng.standard_normal((2,) + tuple(shape))
    smooth = np.stack([ndimage.gaussian_filter(c, sigma, mode="reflect") for c in noise])
    smooth[0] *= 1.0 / spacing[1]          # dx in column pixels, dy in row pixels: scaled from mm
    smooth[1] *= 1.0 / spacing[0]
    length_mm = np.sqrt((smooth[0] * spacing[1]) ** 2 + (smooth[1] * spacing[0]) ** 2)
    return (smooth * (magnitude_mm / max(float(length_mm.max()), 1e-12))).astype(np.float32)


def warp_backward(image: np.ndarray, displacement: np.ndarray, order: int) -> np.ndarray:
    """image(p + v(p)); order 1 = bilinear (images), 0 = nearest (labels); zero outside."""
    from scipy import ndimage
    h, w = image.shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = np.stack([rows + displacement[1], cols + displacement[0]])
    return ndimage.map_coordinates(image, coords, order=order, mode="constant", cval=0,
                                   prefilter=False).astype(image.dtype)


def _split_units(n: int, settings: SliceSettings) -> np.ndarray:
    """0/1/2 per unit, at least one test unit and (when there are 3+) one training unit."""
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(n)
    n_test = max(1, int(round(settings.test * n)))
    n_val = int(round(settings.validation * n)) if n - n_test > 1 else 0
    split = np.zeros(n, np.uint8)
    split[order[:n_test]] = 2
    split[order[n_test:n_test + n_val]] = 1
    return split


def make_slices(volumes: list[Volume], settings: SliceSettings) -> SliceSet:
    if not volumes:
        raise ValueError("no brain volumes configured")
    if settings.axis not in (0, 1, 2):
        raise ValueError(f"slice axis must be 0, 1 or 2, got {settings.axis}")
    units = []            # (volume index, slice index, fixed image, fixed labels)
    spacing2d = None
    shape2d = None
    for v, vol in enumerate(volumes):
        in_plane = [s for a, s in enumerate(vol.spacing) if a != settings.axis][::-1]   # rot90 swaps them
        sp = (in_plane[0] * settings.zoom, in_plane[1] * settings.zoom)
        if spacing2d is not None and not np.allclose(sp, spacing2d, atol=1e-3):
            raise InputError(vol.path, f"in-plane spacing {sp} mm differs from the first volume's {spacing2d}")
        spacing2d = sp
        brain = vol.image[vol.image > 0]
        if not brain.size:
            raise InputError(vol.path, "volume is empty (no voxel above 0)")
        top = float(np.percentile(brain, 99.5))
        n_slices = vol.image.shape[settings.axis]
        for k in range(settings.start, min(settings.stop, n_slices), settings.step):
            image = _zoom_image(np.clip(_slice(vol.image, settings.axis, k) / top, 0, 1), settings.zoom)
            if (image > 0.02).mean() < settings.min_brain_fraction:
                continue
            labels = (_zoom_labels(_slice(vol.labels, settings.axis, k), settings.zoom) if vol.labels is not None
                      else np.zeros(image.shape, np.int32))
            if shape2d is not None and image.shape != shape2d:
                raise InputError(vol.path, f"slices are {image.shape}, the first volume's {shape2d}: "
                                           "volumes must share one grid (affinely aligned, cropped alike)")
            shape2d = image.shape
            units.append((v, k, image.astype(np.float32), labels.astype(np.int32)))
    if not units:
        raise ValueError(f"no slice in range({settings.start}, {settings.stop}, {settings.step}) along axis "
                         f"{settings.axis} holds enough brain (min_brain_fraction {settings.min_brain_fraction})")
    unit_split = _split_units(len(units), settings)
    out = {k: [] for k in ("fixed", "moving", "fixed_labels", "moving_labels", "field", "split", "volume",
                           "slice", "deformation")}
    for u, (v, k, image, labels) in enumerate(units):
        for d in range(settings.per_slice):
            rng = np.random.default_rng([settings.seed, v, k, d])
            disp = random_field(image.shape, spacing2d, settings.magnitude_mm, settings.smoothness_mm, rng)
            out["fixed"].append(image)
            out["moving"].append(warp_backward(image, disp, order=1))
            out["fixed_labels"].append(labels)
            out["moving_labels"].append(warp_backward(labels, disp, order=0))
            out["field"].append(disp)
            out["split"].append(unit_split[u])
            out["volume"].append(v)
            out["slice"].append(k)
            out["deformation"].append(d)
    arrays = {k: np.stack(vals) for k, vals in out.items()}
    has_labels = all(vol.labels is not None for vol in volumes)
    return SliceSet(**{k: arrays[k] for k in ("fixed", "moving", "fixed_labels", "moving_labels", "field")},
                    split=arrays["split"].astype(np.uint8), volume=arrays["volume"].astype(np.int32),
                    slice=arrays["slice"].astype(np.int32), deformation=arrays["deformation"].astype(np.int32),
                    spacing=spacing2d, has_labels=has_labels,
                    attrs={"settings": json.dumps(asdict(settings)),
                           "sources": json.dumps([v.path for v in volumes])})


def write_slices(path: str | os.PathLike, slices: SliceSet) -> None:
    attrs = {"spacing": np.asarray(slices.spacing, np.float64), "has_labels": int(slices.has_labels), **slices.attrs}
    with h5_writer(path, FORMAT_SLICES, attrs) as f:
        for name in ("fixed", "moving", "fixed_labels", "moving_labels", "field"):
            f.create_dataset(name, data=getattr(slices, name), compression="gzip", compression_opts=4,
                             chunks=(1,) + getattr(slices, name).shape[1:])
        for name in ("split", "volume", "slice", "deformation"):
            f.create_dataset(name, data=getattr(slices, name))


def read_slices(path: str | os.PathLike) -> SliceSet:
    with open_checked(path, FORMAT_SLICES) as f:
        arrays = {name: f[name][()] for name in ("fixed", "moving", "fixed_labels", "moving_labels", "field",
                                                  "split", "volume", "slice", "deformation")}
        attrs = {k: f.attrs[k] for k in ("settings", "sources")}
        return SliceSet(**arrays, spacing=tuple(float(s) for s in f.attrs["spacing"]),
                        has_labels=bool(f.attrs["has_labels"]), attrs=attrs)


def preview(slices: SliceSet, out_png: str, n: int = 4) -> None:
    """A few fixed / moving pairs with their label images, to check the simulated deformations by eye."""
    from ..figures import new_figure, save_figure
    picks = np.linspace(0, len(slices.fixed) - 1, min(n, len(slices.fixed))).astype(int)
    fig, axes = new_figure(len(picks), 3, figsize=(7.5, 2.6 * len(picks)), dpi=100, squeeze=False)
    aspect = slices.spacing[0] / slices.spacing[1]
    for row, i in zip(axes, picks):
        row[0].imshow(slices.fixed[i], cmap="gray", aspect=aspect)
        row[0].set_title(f"fixed {slices.pair_id(i)} ({SPLITS[slices.split[i]]})", fontsize=8)
        row[1].imshow(slices.moving[i], cmap="gray", aspect=aspect)
        row[1].set_title("moving (simulated deformation)", fontsize=8)
        row[2].imshow(slices.moving_labels[i] % 20, cmap="tab20", interpolation="nearest", aspect=aspect)
        row[2].set_title("moving labels (same deformation)", fontsize=8)
        for ax in row:
            ax.axis("off")
    save_figure(fig, out_png)
