"""Registering one pair with a trained model: predict the field, optionally refine it on that pair
(instance optimisation), compose with the affine step, and write what users open: the field (HDF5),
the warped moving landmarks (ANHIR CSV, fixed frame), a before/after overlay, and on request the warped
full-resolution moving slide as a pyramidal TIFF streamed by libvips."""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import torch

from ..atomic import atomic_path
from ..coords import full_to_work, work_to_full
from ..optim import SingleTensorAdam
from .data import PairStack, network_input
from .train import MethodSettings
from .transform import Transform
from .warp import SpatialTransformer

log = logging.getLogger(__name__)


REFLECTIONS = ("none", "point", "axes")


def reflection_axes(mode: str, spatial_dims: int) -> list[tuple[int, ...]]:
    """The spatial axes (of an (N, C, *spatial) tensor) flipped by each pass of `mode`: "none" one pass;
    "point" two (as is, and mirrored through the centre: every axis flipped); "axes" every combination
    of axis flips (4 passes in 2D, 8 in 3D)."""
    axes = tuple(range(2, 2 + spatial_dims))
    if mode == "none":
        return [()]
    if mode == "point":
        return [(), axes]
    if mode == "axes":
        return [tuple(a for i, a in enumerate(axes) if bits >> i & 1) for bits in range(2 ** spatial_dims)]
    raise ValueError(f"reflections must be one of {', '.join(REFLECTIONS)}, got {mode!r}")


def reflection_averaged_field(model: torch.nn.Module, x: torch.Tensor, mode: str = "none") -> torch.Tensor:
    """The network's field averaged over mirrored copies of its input, each mapped back to the input's
    frame: a field u' predicted on images mirrored along axis a belongs at the mirrored position, with
    its component along a negated. A network has no reason to be exactly equivariant, and a short
    training leaves it a global offset (on identical inputs, a BIRL-trained model predicted 0.4 grid px
    in both x and y): a point reflection turns a constant offset c into -c, so the average cancels it,
    whatever the network; "axes" also cancels any offset along each axis alone."""
    d = x.ndim - 2
    total = None
    passes = reflection_axes(mode, d)
    for flipped in passes:
        u = model(torch.flip(x, flipped) if flipped else x)
        if flipped:
            u = torch.flip(u, flipped)
            # channel c of the field is the displacement along spatial axis (d - 1 - c): x is the last
            sign = torch.ones(d, dtype=u.dtype, device=u.device)
            for a in flipped:
                sign[d - 1 - (a - 2)] = -1
            u = u * sign.view(1, d, *([1] * d))
        total = u if total is None else total + u
    return total / len(passes)


def predict_field(model, stack: PairStack, map_inputs: bool, device: torch.device | str = "cpu",
                  reflections: str = "none") -> np.ndarray:
    """(2, H, W) field in working px on the fixed grid; `reflections`: see reflection_averaged_field."""
    x = torch.from_numpy(network_input(stack, map_inputs))[None].to(device)
    with torch.inference_mode():
        return reflection_averaged_field(model, x, reflections)[0].float().cpu().numpy()


def instance_optimise(field: np.ndarray, stack: PairStack, method: MethodSettings, steps: int, lr: float = 0.2,
                      device: torch.device | str = "cpu", levels: int = 1, fine: PairStack | None = None,
                      fine_steps: int = 0) -> tuple[np.ndarray, list[float]]:
    """`steps` Adam steps on the method's own loss for this pair, optimising the field directly from the
    network's prediction (VoxelMorph's instance-specific optimisation).

    `levels` > 1: coarse to fine, `steps` steps on each of `levels` grids, each twice as coarse as the
    next (the registration grid last): the coarse grids see larger structures for a fraction of the
    cost (1/4, 1/16, ... of a step on the registration grid), and each level starts from the one before.

    `fine` (the same pair on a finer grid, e.g. the registration grid's 2x) with `fine_steps` > 0: that
    many further steps there, from the result upsampled; the field is then returned on `fine`'s grid.
    The network's grid is coarse for speed, and its pixels average away detail the landmarks sit on;
    the last steps see it (docs/BENCHMARKS.md)."""
    if steps <= 0:
        return field, []
    if levels < 1:
        raise ValueError(f"instance optimisation levels must be >= 1, got {levels}")
    loss_fn = method.loss().to(device)
    use_maps = bool(method.lambda_seg) and stack.fixed_map is not None
    images = _loss_inputs(stack, use_maps, device)
    u = torch.from_numpy(np.ascontiguousarray(field))[None].to(device)
    shape = tuple(u.shape[2:])
    shapes = [shape]
    for _ in range(levels - 1):
        shapes.insert(0, tuple(max(4, (n + 1) // 2) for n in shapes[0]))
    losses: list[float] = []
    for level_shape in shapes:
        u = _resize_field(u, level_shape)
        level_images = [None if a is None else (a if level_shape == shape else
                        torch.nn.functional.interpolate(a, size=level_shape, mode="area")) for a in images]
        u, level_losses = _optimise_field(u, *level_images, loss_fn, steps, lr)
        losses += level_losses
    if fine is not None and fine_steps > 0:
        u, fine_losses = _optimise_field(_resize_field(u, tuple(fine.shape)), *_loss_inputs(fine, use_maps, device),
                                         loss_fn, fine_steps, lr)
        losses += fine_losses
    return u[0].cpu().numpy(), losses


def resampling_drift(fixed_prepared: str, moving_prepared: str, affine: np.ndarray, method: MethodSettings,
                     steps: int, lr: float, downsample: int, fine_steps: int = 0) -> np.ndarray:
    """(2, 2): the mean field (working px, over the fixed tissue) that instance optimisation from the
    affine step finds without L_seg, row 0 for the pair as given, row 1 swapped (the fixed image
    registered to the moving one through the inverse affine, in the moving image's frame).

    A real misalignment comes out with opposite signs in the two rows, so their sum is ~0; the
    resampling drift that SimilarityLoss's blur removes comes out with the same sign in both (a sum of
    ~2x the drift). A diagnostic for cross-stain pairs that needs no landmarks."""
    from .affine import homogeneous
    from .data import load_pair_stack
    inverse = np.linalg.inv(homogeneous(affine))[:2]
    method = dataclasses.replace(method, lambda_seg=0.0)
    out = []
    for f, m, a in ((fixed_prepared, moving_prepared, affine), (moving_prepared, fixed_prepared, inverse)):
        working = load_pair_stack(f, m, np.asarray(a, dtype=np.float64))
        grid = working.shrunk(downsample)
        fine = working.shrunk(downsample // 2) if fine_steps > 0 and downsample >= 2 else None
        u, _ = instance_optimise(np.zeros((2,) + tuple(grid.shape), np.float32), grid, method, steps, lr,
                                 fine=fine, fine_steps=fine_steps)
        u = (grid if fine is None else fine).field_to_working(u)
        out.append([float(u[axis][working.fixed_mask].mean()) for axis in range(2)])
    return np.array(out)


def _loss_inputs(stack: PairStack, use_maps: bool, device) -> list[torch.Tensor | None]:
    """(fixed, moving, fixed map, moving map) as (1, C, H, W) tensors; the maps None without L_seg."""
    return [None if a is None else torch.from_numpy(a)[None].to(device)
            for a in (stack.fixed, stack.moving, stack.fixed_map if use_maps else None,
                      stack.moving_map if use_maps else None)]


def _resize_field(u: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A (1, 2, H, W) displacement field in grid px resampled onto another grid of the same extent
    (pixel centres aligned as `align_corners=False`), its (dx, dy) scaled to the new grid's px."""
    if tuple(u.shape[2:]) == tuple(shape):
        return u
    ry, rx = shape[0] / u.shape[2], shape[1] / u.shape[3]
    mode = "area" if shape[0] < u.shape[2] else "bilinear"
    out = torch.nn.functional.interpolate(u, size=shape, mode=mode, **({} if mode == "area" else
                                                                       {"align_corners": False}))
    return out * torch.tensor([rx, ry], dtype=u.dtype, device=u.device).view(1, 2, 1, 1)


def _optimise_field(u: torch.Tensor, fixed, moving, fixed_map, moving_map, loss_fn, steps: int,
                    lr: float) -> tuple[torch.Tensor, list[float]]:
    stn = SpatialTransformer(2)
    u = u.detach().clone().requires_grad_(True)
    opt = SingleTensorAdam(u, lr=lr)
    losses = []
    for _ in range(steps):
        warped_map = stn(moving_map, u) if moving_map is not None else None
        total, _ = loss_fn(fixed, stn(moving, u), u, fixed_map, warped_map)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.item()))
    return u.detach(), losses


def warp_working(stack: PairStack, field: np.ndarray) -> np.ndarray:
    """The registered moving density on the fixed grid (for overlays and checks)."""
    with torch.no_grad():
        return SpatialTransformer(2)(torch.from_numpy(stack.moving)[None],
                                     torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None])[0].numpy()


def overlay(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Two-colour overlay of (1, H, W) densities: fixed in magenta, moving in green; aligned tissue
    is grey, misalignment shows as colour fringes (the seed's Fig. 2 style)."""
    f = 255 - np.clip(fixed[0] * 255, 0, 255)
    m = 255 - np.clip(moving[0] * 255, 0, 255)
    return np.stack([f, m, f], axis=-1).astype(np.uint8)


def deformation_grid(field: np.ndarray, spacing: int = 12) -> np.ndarray:
    """(H, W, 3) uint8: a regular grid of lines resampled through the deformable field alone (the
    affine part excluded): straight lines where the field is a translation, bent where it deforms."""
    h, w = field.shape[1:]
    grid = np.ones((1, 1, h, w), np.float32)
    grid[..., ::spacing, :] = 0
    grid[..., :, ::spacing] = 0
    with torch.no_grad():
        warped = SpatialTransformer(2)(torch.from_numpy(grid),
                                       torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32))[None])
    level = (np.clip(warped[0, 0].numpy(), 0, 1) * 255).astype(np.uint8)
    return np.stack([level, level, np.maximum(level, 96)], axis=-1)


def write_overlay(path: str | os.PathLike, stack: PairStack, field: np.ndarray) -> None:
    """Side by side on the stack's grid (`field` on that grid: the registration grid, or the finer one of
    the last instance steps): the moving image only stretched onto the fixed grid, after registration
    (affine and field), and the field's deformation grid."""
    import pyvips

    from .affine import warp_affine
    h, w = stack.shape
    mh, mw = stack.moving_raw.shape[1:]
    rx, ry = mw / w, mh / h
    stretch = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5]])
    with torch.no_grad():
        before = warp_affine(torch.from_numpy(stack.moving_raw)[None], stretch, (h, w))[0].numpy()
    after = warp_working(stack, field)
    gap = np.full((h, 8, 3), 255, np.uint8)
    image = np.concatenate([overlay(stack.fixed, before), gap, overlay(stack.fixed, after), gap,
                            deformation_grid(field)], axis=1)
    with atomic_path(path) as tmp:
        pyvips.Image.new_from_array(image).copy(interpretation="srgb").pngsave(os.fspath(tmp))


def transform_of(stack: PairStack, field: np.ndarray) -> Transform:
    return Transform(stack.affine, field, stack.fixed_scale, stack.moving_scale)


def warp_slide(moving_path: str | os.PathLike, transform: Transform, fixed_full: tuple[int, int],
               out_tif: str | os.PathLike, tile: int = 512, compression: str = "jpeg", quality: int = 90) -> None:
    """Write the moving slide resampled onto the fixed image's full-resolution grid as a pyramidal tiled
    TIFF. The backward map (fixed full-res px -> moving full-res px) is computed on the fixed working grid
    and upsampled lazily by libvips; `mapim` then pulls moving pixels strip by strip, so neither slide is
    ever held whole in memory."""
    import pyvips
    h, w = transform.field.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    work = np.stack([xs.ravel(), ys.ravel()], axis=1)
    moving_full = work_to_full(transform.fixed_to_moving_work(work), transform.moving_scale)
    coarse = pyvips.Image.new_from_array(moving_full.reshape(h, w, 2).astype(np.float32))
    sx, sy = transform.fixed_scale
    # working px x_w sits at full-res X = (x_w + 0.5) / s - 0.5: vips X = a (x + idx) + odx
    index = coarse.affine([1 / sx, 0, 0, 1 / sy], idx=0.5, idy=0.5, odx=-0.5, ody=-0.5,
                          oarea=[0, 0, int(fixed_full[0]), int(fixed_full[1])],
                          interpolate=pyvips.Interpolate.new("bilinear"), extend="copy")
    moving = pyvips.Image.new_from_file(os.fspath(moving_path), access="random")
    if moving.hasalpha():
        moving = moving.flatten(background=[255, 255, 255])
    if moving.bands == 1:
        moving = moving.bandjoin([moving, moving])
    warped = moving.mapim(index, interpolate=pyvips.Interpolate.new("bilinear"), background=[255, 255, 255])
    warped = warped.cast("uchar").copy(interpretation="srgb")
    with atomic_path(out_tif) as tmp:
        warped.tiffsave(os.fspath(tmp), tile=True, tile_width=tile, tile_height=tile, pyramid=True,
                        compression=compression, Q=quality, bigtiff=True)


def map_moving_landmarks(stack: PairStack, field: np.ndarray, points_full: np.ndarray) -> np.ndarray:
    """Moving landmarks (full-res moving px) -> fixed full-res px, inverting the field by fixed point."""
    return transform_of(stack, field).moving_to_fixed(points_full)


def inverse_consistency_px(stack: PairStack, field: np.ndarray, points_full: np.ndarray) -> float:
    """Largest distance, in moving working px, between a moving landmark and the image of its mapped
    fixed point: how well the fixed-point inversion converged."""
    if len(points_full) == 0:
        return 0.0
    t = transform_of(stack, field)
    q = full_to_work(points_full, stack.moving_scale)
    return float(np.hypot(*(t.fixed_to_moving_work(t.moving_to_fixed_work(q)) - q).T).max())

