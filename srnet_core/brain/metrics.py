"""Label-overlap metrics for registered brain images: Dice and the 95th-percentile Hausdorff distance
(HD95) per anatomical label, a per-pair summary, and a contour figure in the style of Fig. 3 of the
SR-Net paper.

Definitions (chosen to match MedPy's ``medpy.metric.binary.dc`` and ``hd95``):

* Dice = 2|A ∩ B| / (|A| + |B|); nan when both masks are empty.
* Surface of a mask = ``mask & ~binary_erosion(mask, generate_binary_structure(ndim, 1),
  iterations=1, border_value=0)``: the voxels with at least one face neighbour (4-neighbour in 2D,
  6-neighbour in 3D) outside the mask; voxels on the array border count as surface.
* Directed surface distances A→B = for every surface voxel of A, the Euclidean distance in physical
  units (``spacing`` per axis, e.g. mm) to the nearest surface voxel of B, from
  ``scipy.ndimage.distance_transform_edt(~surface_b, sampling=spacing)``.
* HD95 = ``np.percentile(np.hstack([d_ab, d_ba]), 95)`` (numpy's default linear interpolation) over
  the pooled distances of both directions; nan when either mask is empty.
"""

from __future__ import annotations

import os
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "dice",
    "surface_mask",
    "surface_distances",
    "hd95",
    "label_metrics",
    "summarise_pair",
    "largest_label",
    "contour_figure",
]


# ----------------------------------------------------------------------------------------------
# input checks


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    """A boolean copy of x; integer/float arrays are accepted only when they hold 0 and 1 only
    (a label image passed by mistake is an error, not silently `!= 0`)."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError(f"{name}: expected a mask array with at least 1 dimension, got a scalar")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected a boolean mask, got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: expected a boolean mask (values 0/1 only), got other values; "
                         "pass e.g. labels == k for one label")
    return arr.astype(bool)


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = _as_mask(a, "a")
    b = _as_mask(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """spacing as a tuple of ndim positive finite floats (None: 1 per axis)."""
    if spacing is None:
        return (1.0,) * ndim
    sp = np.asarray(spacing, dtype=float).ravel()
    if sp.size != ndim:
        raise ValueError(f"spacing has {sp.size} value(s) but the images have {ndim} dimensions "
                         "(one spacing per axis, in array axis order)")
    if not (np.isfinite(sp).all() and (sp > 0).all()):
        raise ValueError(f"spacing must be positive and finite, got {tuple(sp.tolist())}")
    return tuple(float(s) for s in sp)


def _as_labels(x: np.ndarray, name: str) -> np.ndarray:
    """An integer label image; floats are accepted when every value is a whole number (nearest-
    neighbour warps often return float arrays)."""
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError(f"{name}: expected a label image, got a scalar")
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name}: label image must hold whole numbers (found non-integral or "
                             "non-finite values; warp labels with nearest-neighbour interpolation)")
        return arr.astype(np.int64)
    raise ValueError(f"{name}: expected an integer label image, got dtype {arr.dtype}")


# ----------------------------------------------------------------------------------------------
# metrics


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A ∩ B| / (|A| + |B|) of two boolean masks of the same shape.

    Returns nan when both masks are empty (the overlap is undefined, not perfect).
    """
    a, b = _check_pair(a, b)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def surface_mask(mask: np.ndarray) -> np.ndarray:
    """Surface voxels of a boolean mask: ``mask & ~binary_erosion(mask, connectivity-1 structure,
    iterations=1, border_value=0)`` (MedPy's border definition). A voxel is on the surface when one
    of its face neighbours is outside the mask or outside the array."""
    m = _as_mask(mask, "mask")
    structure = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=structure, iterations=1, border_value=0)


def _crop_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of a | b grown by one voxel (clipped to the array): erosion and the distance
    transform inside it give exactly the results on the whole array, much faster for small labels."""
    coords = np.nonzero(a | b)
    return tuple(slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n))
                 for c, n in zip(coords, a.shape))


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Directed surface distances A→B: for each surface voxel of A (in C order), the physical
    distance to the nearest surface voxel of B. Both masks must be non-empty."""
    a, b = _check_pair(a, b)
    sp = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    box = _crop_box(a, b)
    a, b = a[box], b[box]
    dist_to_b = ndimage.distance_transform_edt(~surface_mask(b), sampling=sp)
    return np.asarray(dist_to_b[surface_mask(a)], dtype=float)


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two boolean masks, in the units of
    ``spacing`` (one value per array axis, e.g. mm; None = 1 per axis).

    MedPy's definition: the pooled directed surface distances A→B and B→A (see the module
    docstring for the surface), then ``np.percentile(..., 95)`` with linear interpolation.
    Returns nan when either mask is empty; 0 for identical masks.
    """
    a, b = _check_pair(a, b)
    sp = _check_spacing(spacing, a.ndim)
    if not a.any() or not b.any():
        return float("nan")
    d_ab = surface_distances(a, b, sp)
    d_ba = surface_distances(b, a, sp)
    return float(np.percentile(np.hstack([d_ab, d_ba]), 95))


def label_metrics(fixed_labels: np.ndarray, warped_labels: np.ndarray, spacing: Sequence[float] | None,
                  labels: Sequence[int] | None = None) -> pd.DataFrame:
    """Per-label Dice and HD95 between the fixed label image and the moving label image warped onto
    the fixed grid.

    labels: the labels to score; default the non-zero labels present in fixed_labels (0 is
    background), sorted. A label absent from warped_labels scores dice 0 and hd95 nan; a requested
    label absent from both scores dice nan and hd95 nan.

    Returns a DataFrame with columns label, dice, hd95_mm, fixed_pixels, warped_pixels (one row
    per label, in the order of ``labels``).
    """
    fixed = _as_labels(fixed_labels, "fixed_labels")
    warped = _as_labels(warped_labels, "warped_labels")
    if fixed.shape != warped.shape:
        raise ValueError(f"label image shapes differ: fixed {fixed.shape} vs warped {warped.shape}")
    sp = _check_spacing(spacing, fixed.ndim)
    if labels is None:
        present = np.unique(fixed)
        wanted = [int(v) for v in present if v != 0]
    else:
        wanted = [int(v) for v in labels]
        if any(v == 0 for v in wanted):
            raise ValueError("label 0 is background and cannot be scored")
    rows = []
    for lab in wanted:
        fm = fixed == lab
        wm = warped == lab
        rows.append({
            "label": lab,
            "dice": dice(fm, wm),
            "hd95_mm": hd95(fm, wm, sp),
            "fixed_pixels": int(fm.sum()),
            "warped_pixels": int(wm.sum()),
        })
    frame = pd.DataFrame(rows, columns=["label", "dice", "hd95_mm", "fixed_pixels", "warped_pixels"])
    return frame.astype({"label": "int64", "dice": "float64", "hd95_mm": "float64",
                         "fixed_pixels": "int64", "warped_pixels": "int64"})


def summarise_pair(frame: pd.DataFrame) -> dict:
    """One pair's summary from a label_metrics frame:

    mean_dice_percent: mean Dice over the labels × 100 (labels with nan Dice, i.e. absent from both
    images, are left out); mean_hd95_mm: nanmean of hd95_mm (nan when every value is nan);
    n_labels: number of rows; n_hd95_missing: number of nan hd95_mm values.
    """
    missing = [c for c in ("dice", "hd95_mm") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; pass the output of label_metrics")
    d = frame["dice"].to_numpy(dtype=float)
    h = frame["hd95_mm"].to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-nan / empty column
        mean_dice = float(np.nanmean(d)) * 100.0 if np.isfinite(d).any() else float("nan")
        mean_h = float(np.nanmean(h)) if np.isfinite(h).any() else float("nan")
    return {
        "mean_dice_percent": mean_dice,
        "mean_hd95_mm": mean_h,
        "n_labels": int(len(frame)),
        "n_hd95_missing": int(np.isnan(h).sum()),
    }


def largest_label(labels: np.ndarray) -> int:
    """The most frequent non-zero label (ties: the smallest label). ValueError if there is none."""
    arr = _as_labels(labels, "labels")
    values, counts = np.unique(arr, return_counts=True)
    keep = values != 0
    if not keep.any():
        raise ValueError("label image has no non-zero label")
    values, counts = values[keep], counts[keep]
    return int(values[int(np.argmax(counts))])


# ----------------------------------------------------------------------------------------------
# figure


def _display_image(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """(array, imshow kwargs): greyscale with a 1–99 percentile window, or RGB(A) scaled to 0..1."""
    img = np.asarray(image)
    if img.ndim == 2:
        finite = img[np.isfinite(img)] if np.issubdtype(img.dtype, np.floating) else img.ravel()
        if finite.size:
            lo, hi = (float(v) for v in np.percentile(finite, [1, 99]))
        else:
            lo, hi = 0.0, 1.0
        if hi <= lo:
            hi = lo + 1.0
        return img, {"cmap": "gray", "vmin": lo, "vmax": hi}
    img = img.astype(float)
    top = np.nanmax(img) if img.size else 1.0
    if top > 1.0:
        img = img / (255.0 if top <= 255.0 else top)
    return np.clip(img, 0.0, 1.0), {}


def _draw_contour(ax, mask: np.ndarray, color: str) -> None:
    if mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.2)


def contour_figure(fixed_image: np.ndarray, fixed_labels: np.ndarray, panels: Mapping[str, np.ndarray],
                   label: int | None, out_png: str | os.PathLike, title: str | None = None,
                   spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Contours of one structure, like Fig. 3 of the SR-Net paper, written to out_png.

    Panel 1: the fixed image with the fixed contour of ``label`` in red. Then one panel per entry of
    ``panels`` (name -> moving label image warped onto the fixed grid, e.g. "before" = the
    unregistered moving labels, "SR-Net" = the registered ones): the fixed image, the fixed contour
    in red and that panel's contour in blue, titled with the name and the structure's Dice.

    All images are 2D slices on the fixed grid (fixed_image may be H×W or H×W×3/4). spacing =
    (row, col) pixel size; pixels are drawn with aspect row/col so anisotropic pixels look right.
    label None = largest_label(fixed_labels). Returns {panel name: Dice}.
    """
    from ..figures import new_figure, save_figure

    fixed = _as_labels(fixed_labels, "fixed_labels")
    if fixed.ndim != 2:
        raise ValueError(f"fixed_labels must be a 2D slice, got shape {fixed.shape}")
    img = np.asarray(fixed_image)
    if img.shape[:2] != fixed.shape or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"fixed_image shape {img.shape} does not match fixed_labels {fixed.shape} "
                         "(expected H×W or H×W×3/4)")
    warped = {}
    for name, arr in panels.items():
        w = _as_labels(arr, f"panels[{name!r}]")
        if w.shape != fixed.shape:
            raise ValueError(f"panels[{name!r}] shape {w.shape} differs from fixed_labels {fixed.shape}")
        warped[str(name)] = w
    row_sp, col_sp = _check_spacing(spacing, 2)
    if label is None:
        label = largest_label(fixed)
    label = int(label)
    fixed_mask = fixed == label
    if not fixed_mask.any():
        raise ValueError(f"label {label} is not present in fixed_labels")

    n = 1 + len(warped)
    height, width = fixed.shape
    aspect = row_sp / col_sp
    panel_w = 3.2
    panel_h = float(np.clip(panel_w * height * aspect / width, 1.0, 3.0 * panel_w))
    fig, axes = new_figure(1, n, figsize=(panel_w * n, panel_h + (0.9 if title else 0.6)), dpi=100,
                           squeeze=False)
    shown, kwargs = _display_image(img)
    scores: dict[str, float] = {}
    for i, ax in enumerate(axes[0]):
        ax.imshow(shown, aspect=aspect, interpolation="nearest", **kwargs)
        _draw_contour(ax, fixed_mask, "red")
        if i == 0:
            ax.set_title(f"fixed (label {label})", fontsize=9)
        else:
            name = list(warped)[i - 1]
            moving_mask = warped[name] == label
            _draw_contour(ax, moving_mask, "blue")
            score = dice(fixed_mask, moving_mask)
            scores[name] = score
            shown_score = "n/a" if np.isnan(score) else f"{score:.3f}"
            ax.set_title(f"{name}\nDice {shown_score}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, out_png)
    return scores
