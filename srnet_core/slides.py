"""Reading slides at a working resolution without ever holding full resolution in memory.

OpenSlide reads whole-slide formats (SVS, NDPI, MRXS, tiled pyramidal TIFF, ...): we pick the pyramid
level closest to (and not coarser than) the wanted downsample, stream that level in strips, box-average
each strip by the largest integer factor that still fits, then resample the small result to the exact
output size. libvips reads everything else (JPEG, PNG, strip TIFF, ...) with shrink-on-load for JPEG
and sequential access, so a 40k px JPEG costs a strip, not the image.

The output size is round(full / downsample) per axis, never larger than full resolution; the scale
factors recorded are exact: s = working size / full size per axis (see coords.py for the convention).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

# Strip budget for streaming a pyramid level (RGBA uint8 bytes held at once).
STRIP_BYTES = 32 * 1024 * 1024


@dataclass
class SlideInfo:
    path: str
    width: int                      # full-resolution size in pixels
    height: int
    reader: str                     # "openslide" or "libvips"
    vendor: str = ""                # OpenSlide vendor, or the libvips loader name
    mpp_x: float = float("nan")     # microns per pixel at full resolution, NaN when unknown
    mpp_y: float = float("nan")
    levels: list = field(default_factory=list)   # [(width, height, downsample), ...]

    def to_attrs(self) -> dict:
        d = asdict(self)
        d["levels"] = np.asarray(self.levels, dtype=np.float64).reshape(-1, 3)
        return d


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "image file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise InputError(path, "image file is empty")


def _openslide_format(path: Path) -> str | None:
    import openslide
    try:
        return openslide.OpenSlide.detect_format(os.fspath(path))
    except Exception:  # detect_format raises on some unreadable files: treat as "not a WSI"
        return None


def slide_info(path: str | os.PathLike) -> SlideInfo:
    """Read only the header: size, reader, resolution and pyramid levels."""
    path = Path(path)
    _check_exists(path)
    vendor = _openslide_format(path)
    if vendor is not None:
        import openslide
        try:
            with openslide.OpenSlide(os.fspath(path)) as slide:
                return _openslide_info(path, slide, vendor)
        except openslide.OpenSlideError as exc:
            raise InputError(path, f"corrupt or truncated slide ({exc})") from None
    import pyvips
    try:
        header = pyvips.Image.new_from_file(os.fspath(path))
    except pyvips.Error as exc:
        raise InputError(path, f"unsupported or unreadable image format ({_first_line(exc)})") from None
    mpp, mpp_y = _plausible_mpp(header.xres), _plausible_mpp(header.yres)
    return SlideInfo(os.fspath(path), header.width, header.height, "libvips",
                     header.get("vips-loader"), mpp, mpp_y, [(header.width, header.height, 1.0)])


def _plausible_mpp(pixels_per_mm: float) -> float:
    """libvips reports resolution in pixels/mm and defaults to 72 dpi-ish values when a file says
    nothing: only microscope-like pixel sizes (0.05 - 20 um) are taken as real."""
    if pixels_per_mm <= 0:
        return float("nan")
    mpp = 1000.0 / pixels_per_mm
    return mpp if 0.05 <= mpp <= 20.0 else float("nan")


def _openslide_info(path: Path, slide, vendor: str) -> SlideInfo:
    props = slide.properties
    def prop(name):
        try:
            return float(props.get(name, "nan"))
        except ValueError:
            return float("nan")
    width, height = slide.dimensions
    levels = [(w, h, width / w) for (w, h) in slide.level_dimensions]
    return SlideInfo(os.fspath(path), width, height, "openslide", vendor,
                     prop("openslide.mpp-x"), prop("openslide.mpp-y"), levels)


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def working_size(info: SlideInfo, max_side: int | None = None, mpp: float | None = None) -> tuple[int, int]:
    """(width, height) of the working image: longest side `max_side`, or `mpp` microns per pixel.
    Never upsamples."""
    if (max_side is None) == (mpp is None):
        raise ValueError("give exactly one of max_side and mpp")
    if mpp is not None:
        if not math.isfinite(info.mpp_x):
            raise InputError(info.path, "the image records no pixel size (mpp); set prepare.max_side "
                                        "instead of prepare.mpp for this dataset")
        downsample = mpp / info.mpp_x
    else:
        downsample = max(info.width, info.height) / float(max_side)
    downsample = max(downsample, 1.0)
    return (max(1, round(info.width / downsample)), max(1, round(info.height / downsample)))


def read_working(path: str | os.PathLike, max_side: int | None = None, mpp: float | None = None,
                 threads: int = 1) -> tuple[np.ndarray, SlideInfo, tuple[float, float]]:
    """Read `path` at working resolution: (RGB uint8 array (H, W, 3), header, (s_x, s_y))."""
    info = slide_info(path)
    out_w, out_h = working_size(info, max_side=max_side, mpp=mpp)
    if info.reader == "openslide":
        image = _read_openslide(info, out_w, out_h)
    else:
        image = _read_libvips(info, out_w, out_h, threads)
    scale = (out_w / info.width, out_h / info.height)
    return image, info, scale


def _read_openslide(info: SlideInfo, out_w: int, out_h: int) -> np.ndarray:
    import openslide

    downsample = info.width / out_w
    path = info.path
    try:
        with openslide.OpenSlide(path) as slide:
            level = slide.get_best_level_for_downsample(downsample)
            lw, lh = slide.level_dimensions[level]
            ld = slide.level_downsamples[level]
            # Integer box factor on the level that keeps the intermediate at least as large as the output.
            k = max(1, int(math.floor(min(lw / out_w, lh / out_h))))
            log.info("%s: %dx%d, level %d (%dx%d, downsample %.3f), box %d -> %dx%d",
                     path, info.width, info.height, level, lw, lh, ld, k, out_w, out_h)
            inter = _stream_box_mean(slide, level, ld, lw, lh, k)
    except openslide.OpenSlideError as exc:
        raise InputError(path, f"corrupt or truncated slide ({_first_line(exc)})") from None
    # intermediate pixel j averages full-res pixels [j b, (j + 1) b) with b = k * level downsample
    return _resample_exact(inter, k * info.width / lw, k * info.height / lh, info.width, info.height,
                           out_w, out_h)


def _resample_exact(inter: np.ndarray, block_x: float, block_y: float, full_w: int, full_h: int,
                    out_w: int, out_h: int) -> np.ndarray:
    """Resample an intermediate image whose pixel j covers full-res [j block, (j + 1) block) onto the
    output grid whose pixel i covers [i W / out_w, (i + 1) W / out_w): both centre-aligned, so the
    scale out_w / W is exact. A Gaussian matched to the residual factor (< 2) keeps it alias-free."""
    from scipy import ndimage

    fx = full_w / out_w / block_x          # output pixel size in intermediate pixels (>= 1)
    fy = full_h / out_h / block_y
    inter = np.asarray(inter, dtype=np.float32)
    sigma = (max(0.0, (fy - 1) / 2), max(0.0, (fx - 1) / 2), 0.0)
    if max(sigma) > 0.05:
        inter = ndimage.gaussian_filter(inter, sigma=sigma, mode="nearest")
    rows = (np.arange(out_h) + 0.5) * fy - 0.5
    cols = (np.arange(out_w) + 0.5) * fx - 0.5
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    for ch in range(3):
        out[..., ch] = np.clip(np.rint(ndimage.map_coordinates(
            inter[..., ch], [rr, cc], order=1, mode="nearest")), 0, 255)
    return out


def _stream_box_mean(slide, level: int, ld: float, lw: int, lh: int, k: int) -> np.ndarray:
    """Box-average level `level` by k, reading strips of whole k-row groups; returns float32 (H/k, W/k, 3).
    Strips stay uint8 (a float copy of a strip costs 4x its memory and most of the time); partial
    groups at the right/bottom edge are averaged over the pixels that exist."""
    oh, ow = math.ceil(lh / k), math.ceil(lw / k)
    out = np.empty((oh, ow, 3), dtype=np.float32)
    rows_per_strip = max(k, (STRIP_BYTES // max(1, lw * 4)) // k * k)
    for y0 in range(0, lh, rows_per_strip):
        h = min(rows_per_strip, lh - y0)
        # read_region takes level-0 coordinates for the top-left corner
        rgba = np.asarray(slide.read_region((0, int(round(y0 * ld))), level, (lw, h)))
        out[y0 // k: y0 // k + math.ceil(h / k)] = _box_mean(_over_white(rgba), k)
    return out


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA strip, with transparent areas (outside scanned regions) shown as white
    background, as slide viewers do. Opaque strips (the common case) cost no arithmetic."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgb
    rgb = rgb.copy()
    see_through = alpha < 255
    a = alpha[see_through].astype(np.float32)[:, None] / 255.0
    rgb[see_through] = np.rint(rgb[see_through] * a + 255.0 * (1.0 - a)).astype(np.uint8)
    return rgb


def _box_mean(rgb: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k blocks of a uint8 (h, w, 3) array; ragged right/bottom blocks use what exists."""
    if k == 1:
        return rgb.astype(np.float32)
    h, w, _ = rgb.shape
    hf, wf = h // k * k, w // k * k
    out = np.empty((math.ceil(h / k), math.ceil(w / k), 3), dtype=np.float32)
    if hf and wf:
        out[:hf // k, :wf // k] = rgb[:hf, :wf].reshape(hf // k, k, wf // k, k, 3).sum(
            axis=(1, 3), dtype=np.uint32) / float(k * k)
    if wf < w and hf:
        out[:hf // k, -1] = rgb[:hf, wf:].reshape(hf // k, k, w - wf, 3).sum(
            axis=(1, 2), dtype=np.uint32) / float(k * (w - wf))
    if hf < h and wf:
        out[-1, :wf // k] = rgb[hf:, :wf].reshape(h - hf, wf // k, k, 3).sum(
            axis=(0, 2), dtype=np.uint32) / float((h - hf) * k)
    if hf < h and wf < w:
        out[-1, -1] = rgb[hf:, wf:].reshape(-1, 3).mean(axis=0)
    return out


def _read_libvips(info: SlideInfo, out_w: int, out_h: int, threads: int) -> np.ndarray:
    """Stream with libvips: JPEG shrink-on-load by s in {1, 2, 4, 8} (libjpeg's scaled decode averages
    s x s blocks, so the geometry is exact), then an integer box shrink by k, both sequential; the
    small intermediate is resampled exactly like the OpenSlide path."""
    import pyvips
    pyvips.concurrency_set(max(1, threads))   # the job's Snakemake `threads`, not every core
    path = info.path
    options = {"access": "sequential", "fail_on": "truncated"}
    downsample = min(info.width / out_w, info.height / out_h)
    load_shrink = 1
    if info.vendor.startswith("jpegload"):
        load_shrink = max(s for s in (1, 2, 4, 8) if s <= downsample)
        options["shrink"] = load_shrink
    k = max(1, int(math.floor(downsample / load_shrink)))
    try:
        image = pyvips.Image.new_from_file(path, **options)
        if image.hasalpha():
            image = image.flatten(background=[255] * (image.bands - 1))
        if image.interpretation not in ("srgb", "rgb"):
            image = image.colourspace("srgb")
        if image.format != "uchar":
            image = image.scaleimage().cast("uchar")
        if image.bands == 1:
            image = image.bandjoin([image, image])
        image = image[:3]
        if k > 1:
            # box average of whole k x k blocks; a partial block at the right/bottom edge is dropped
            image = image.crop(0, 0, image.width // k * k, image.height // k * k).shrink(k, k)
        array = image.numpy()
    except pyvips.Error as exc:
        raise InputError(path, f"corrupt or truncated image ({_first_line(exc)})") from None
    block = load_shrink * k
    return _resample_exact(array[..., :3], block, block, info.width, info.height, out_w, out_h)
