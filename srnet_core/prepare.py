"""The prepare stage for one image: working-resolution RGB, tissue mask, exact scales -> HDF5."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from . import __version__
from .errors import InputError
from .h5io import write_prepared
from .slides import read_working
from .tissue import tissue_mask, tissue_tiles

log = logging.getLogger(__name__)


def write_preview(path: str | os.PathLike, image: np.ndarray, mask: np.ndarray) -> None:
    """PNG of the working image with the tissue mask's outline in green, for a look in any viewer."""
    import pyvips
    from scipy import ndimage

    from .atomic import atomic_path

    outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, image.shape[0] // 400))
    preview = image.copy()
    preview[outline] = (0, 200, 0)
    with atomic_path(path) as tmp:
        pyvips.Image.new_from_array(preview).copy(interpretation="srgb").pngsave(os.fspath(tmp))


def header_attrs(source: str | os.PathLike) -> dict:
    """What a failure record of this image keeps: its source and, when the header reads, its
    full-resolution size (evaluation scores the pair's initial error with it)."""
    from .slides import slide_info
    try:
        info = slide_info(source)
    except InputError:
        return {"source": os.fspath(source)}
    return {"source": os.fspath(source), "full_width": info.width, "full_height": info.height}


def prepare_image(source: str | os.PathLike, dest: str | os.PathLike, *, max_side: int | None = 1024,
                  mpp: float | None = None, min_tissue_fraction: float = 0.005, tile_size: int = 0,
                  tile_min_tissue: float = 0.25, threads: int = 1, error: str = "",
                  preview: str | os.PathLike | None = None) -> dict:
    """Prepare one image; `error` is a problem the dataset stage already found with this image.
    With `preview`, also write a PNG of the working image and mask outline there."""
    if error:
        raise InputError(source, error)
    started = time.perf_counter()
    if mpp is not None:
        max_side = None
    image, info, scale = read_working(source, max_side=max_side, mpp=mpp, threads=threads)
    mask, fraction = tissue_mask(image, min_fraction=min_tissue_fraction, source=source)
    tiles = tissue_tiles(mask, tile_size, tile_min_tissue) if tile_size > 0 else np.zeros((0, 4), np.int32)
    attrs = {
        "source": os.fspath(source), "reader": info.reader, "vendor": info.vendor,
        "full_width": info.width, "full_height": info.height,
        "scale_x": scale[0], "scale_y": scale[1],
        "mpp_x": info.mpp_x, "mpp_y": info.mpp_y,
        "levels": np.asarray(info.levels, dtype=np.float64).reshape(-1, 3),
        "tissue_fraction": fraction, "srnet_version": __version__,
    }
    params = {"max_side": max_side, "mpp": mpp, "min_tissue_fraction": min_tissue_fraction,
              "tile_size": tile_size, "tile_min_tissue": tile_min_tissue}
    if preview is not None:
        write_preview(preview, image, mask)
    write_prepared(dest, image, mask, tiles, attrs, params, chunk=tile_size or 256)
    log.info("%s -> %s: %dx%d -> %dx%d (scale %.5f, %.5f) via %s, tissue %.1f%%, %d tiles, %.2fs",
             source, dest, info.width, info.height, image.shape[1], image.shape[0], scale[0], scale[1],
             info.reader, 100 * fraction, len(tiles), time.perf_counter() - started)
    return attrs
