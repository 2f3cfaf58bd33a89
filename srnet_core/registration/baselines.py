"""Classical baselines on the same inputs as srnet: ANTs SyN (antspyx) and elastix (itk-elastix).

Each runs from one of two starts (the table columns `ants_syn`, `elastix` and `ants_syn_own`,
`elastix_own`; names.py):

- srnet's start: they see exactly what the srnet network sees for a pair, the fixed tissue density and
  the moving one resampled through srnet's affine pre-alignment, on the fixed working grid
  (registration/data.py). A fair comparison of the deformable step; elastix's default maps fail on
  pairs with a large initial rotation or flip without it. A failure of that pre-alignment is shared
  by every method that starts from it.
- their own start: the fixed density and the moving density on its own working grid, both placed in
  one physical frame (the full-resolution pixel, in units of fixed working px: `own_start_grid`), and
  each library's own initialiser (ANTs' centre-of-mass initial transform, elastix's automatic
  CenterOfGravity initialisation). Independent of srnet's pre-alignment, so its failures show beside
  them.

Each then runs its own affine stage and its own deformable stage. The result is turned into a dense
displacement field in srnet's convention (DESIGN.md: on the fixed grid, in working px, channel 0 = dx,
sampling the pre-aligned moving image at p + u(p)); from their own start the "pre-alignment" is the
identity in full-resolution px (`identity_affine`). Landmarks, overlays, the warped slide and every
table then treat a baseline exactly like an srnet method.

`affine_own` runs the affine stage alone from each library's own start (the reference
benchmarks/bench_baseline_affine.py measures srnet's pre-alignment against).

Both libraries are optional (`pip install 'srnet[baselines]'`, or `envs/baselines.yaml`); they are
imported only when a baseline runs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..names import BASELINES, HISTOLOGY_BASELINES, baseline_start

log = logging.getLogger(__name__)

_INSTALL_HINT = ("install the optional baselines (pip install 'srnet[baselines]') or run Snakemake with "
                 "--use-conda (envs/baselines.yaml)")


@dataclass
class AntsSynSettings:
    """ants.registration(type_of_transform='SyN'): an affine stage, then symmetric normalisation."""
    metric: str = "CC"                       # SyN similarity: CC (local cross-correlation) | mattes | meansquares
    radius: int = 4                          # CC window radius (px); histogram bins for mattes (syn_sampling)
    iterations: list[int] = field(default_factory=lambda: [40, 20, 0])   # SyN, coarse to fine
    affine_metric: str = "mattes"
    affine_iterations: list[int] = field(default_factory=lambda: [2100, 1200, 1200, 10])
    grad_step: float = 0.2
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    seed: int = 0


@dataclass
class ElastixSettings:
    """Two elastix parameter maps from its defaults: affine, then B-spline (mutual information +
    bending energy), multi-resolution, adaptive stochastic gradient descent."""
    resolutions: int = 3
    affine_iterations: int = 256
    bspline_iterations: int = 256
    grid_spacing: float = 16.0               # final B-spline control point spacing, working px
    samples: int = 2048                      # random spatial samples per iteration
    bending_weight: float = 1.0
    # resolutions of the affine map from elastix's own start (elastix_own): elastix's default 4. From its
    # centre-of-gravity start the affine map does the whole pre-alignment; with 3 it left the BIRL kidney
    # pair worse than unregistered (median rTRE 0.0215 against 0.0207; 0.0028 with 4)
    own_affine_resolutions: int = 4
    seed: int = 0


SETTINGS = {"ants_syn": AntsSynSettings, "elastix": ElastixSettings}


@dataclass(frozen=True)
class Grid:
    """Where the moving working image lies in the physical frame of a registration whose fixed image
    has spacing 1 and origin 0: per axis (x, y), physical = origin + spacing * moving working px."""
    spacing: tuple[float, float] = (1.0, 1.0)
    origin: tuple[float, float] = (0.0, 0.0)


def own_start_grid(fixed_scale: tuple[float, float], moving_scale: tuple[float, float]) -> Grid:
    """The moving working grid in the frame where one unit is one fixed working px of the same
    full-resolution point (coords.py: x_work = (x_full + 0.5) * s - 0.5), so that the fixed image keeps
    spacing 1 and every setting in working px keeps its meaning; the two images then share the
    full-resolution frame whatever their pixel sizes."""
    r = [float(f) / float(m) for f, m in zip(fixed_scale, moving_scale)]
    return Grid(spacing=(r[0], r[1]), origin=(0.5 * r[0] - 0.5, 0.5 * r[1] - 0.5))


def identity_affine(fixed_scale: tuple[float, float], moving_scale: tuple[float, float]) -> np.ndarray:
    """(2, 3) fixed working px -> moving working px of the identity in full-resolution px (no
    registration): the inverse of own_start_grid's placement of the moving image."""
    g = own_start_grid(fixed_scale, moving_scale)
    return np.array([[1 / g.spacing[0], 0.0, -g.origin[0] / g.spacing[0]],
                     [0.0, 1 / g.spacing[1], -g.origin[1] / g.spacing[1]]])


def baseline_settings(name: str, settings: dict | None) -> AntsSynSettings | ElastixSettings:
    name = baseline_start(name)[0] if name in HISTOLOGY_BASELINES else name
    if name not in SETTINGS:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(SETTINGS)}")
    known = {f.name for f in fields(SETTINGS[name])}
    unknown = sorted(set(settings or {}) - known)
    if unknown:
        raise ValueError(f"{name}: unknown settings {unknown}; known: {sorted(known)}")
    return SETTINGS[name](**(settings or {}))


def load_baseline(name: str, threads: int = 1):
    """Import the baseline's library with `threads` ITK threads and load what it runs (itk loads its
    modules lazily, ~8 s on first use: a cost per process, not per pair, kept out of pair timings)."""
    if name == "ants_syn":
        # ITK reads its thread count from the environment when its thread pool starts
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, threads))
        try:
            import ants
        except ImportError as exc:
            raise RuntimeError(f"ants_syn needs antspyx ({exc}); {_INSTALL_HINT}") from None
        return ants
    if name == "elastix":
        try:
            import itk
        except ImportError as exc:
            raise RuntimeError(f"elastix needs itk-elastix ({exc}); {_INSTALL_HINT}") from None
        # the filter's own SetNumberOfThreads crashes itk-elastix 0.25 (segfault) with more than one
        # thread; the global default is honoured and safe
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(max(1, threads))
        for attribute in ("ParameterObject", "ElastixRegistrationMethod", "TransformixFilter", "GetImageFromArray"):
            getattr(itk, attribute)
        return itk
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(SETTINGS)}")


def _check_pair(fixed: np.ndarray, moving: np.ndarray, grid: Grid | None) -> None:
    if fixed.ndim != 2 or moving.ndim != 2:
        raise ValueError(f"baselines register two 2D images, got {fixed.shape} and {moving.shape}")
    if grid is None and fixed.shape != moving.shape:
        raise ValueError(f"from srnet's start, baselines register two 2D images on one grid, got {fixed.shape} "
                         f"and {moving.shape}")


def _ants_pair(ants, fixed: np.ndarray, moving: np.ndarray, grid: Grid | None):
    """antspyx images of the pair. antspyx takes a numpy array's first axis as its first physical axis:
    for ANTs the rows are x, so spacing, origin and displacements are in array-axis order (y, x)."""
    f = ants.from_numpy(np.ascontiguousarray(fixed, np.float32))
    m = ants.from_numpy(np.ascontiguousarray(moving, np.float32))
    if grid is not None:
        m.set_spacing((grid.spacing[1], grid.spacing[0]))
        m.set_origin((grid.origin[1], grid.origin[0]))
    return f, m


def _ants_field(ants, f, m, transforms: list[str], tmp: str) -> np.ndarray:
    """The forward transforms pull the moving image onto the fixed grid; composed, they are one
    displacement field on the fixed grid that maps fixed points to moving (physical) points."""
    composed = ants.apply_transforms(f, m, transformlist=transforms, compose=os.path.join(tmp, "composed_"))
    disp = ants.image_read(composed).numpy()            # (H, W, 2), components in array-axis order (y, x)
    return np.stack([disp[..., 1], disp[..., 0]]).astype(np.float32)


def register_ants_syn(fixed: np.ndarray, moving: np.ndarray, settings: AntsSynSettings,
                      threads: int = 1, grid: Grid | None = None) -> np.ndarray:
    """(2, H, W) field (dx, dy) in fixed working px: fixed pixel p corresponds to the moving point
    p + u(p) (on the fixed grid when `grid` is None, else placed by `grid`)."""
    _check_pair(fixed, moving, grid)
    ants = load_baseline("ants_syn", threads)
    # antspyx 0.6 ignores registration(random_seed=...): the seed goes through its config module
    ants.config._random_seed = int(settings.seed)
    f, m = _ants_pair(ants, fixed, moving, grid)
    s = settings
    with tempfile.TemporaryDirectory(prefix="srnet-ants-") as tmp:
        # initial_transform None: ANTs' own centre-of-mass initial transform ([fixed, moving, 1])
        reg = ants.registration(f, m, type_of_transform="SyN", outprefix=os.path.join(tmp, "reg_"),
                                syn_metric=s.metric, syn_sampling=s.radius, reg_iterations=tuple(s.iterations),
                                aff_metric=s.affine_metric, aff_iterations=tuple(s.affine_iterations),
                                grad_step=s.grad_step, flow_sigma=s.flow_sigma, total_sigma=s.total_sigma,
                                verbose=False)
        return _ants_field(ants, f, m, reg["fwdtransforms"], tmp)


def _elastix_affine_map(params, settings: ElastixSettings, own_start: bool):
    s = settings
    affine = params.GetDefaultParameterMap("affine", s.own_affine_resolutions if own_start else s.resolutions)
    affine["MaximumNumberOfIterations"] = [str(s.affine_iterations)]
    if own_start:
        affine["AutomaticTransformInitialization"] = ["true"]
        affine["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
    else:
        # srnet's pre-alignment is the initialisation: elastix's own centre-of-gravity start moved the
        # already aligned BIRL kidney pair off (median rTRE 0.0141 against 0.0026 without it)
        affine["AutomaticTransformInitialization"] = ["false"]
    return affine


def elastix_parameter_object(settings: ElastixSettings, own_start: bool = False):
    """elastix's default affine map (automatic CenterOfGravity initialisation from its own start, none
    from srnet's), then its default B-spline map."""
    import itk
    s = settings
    params = itk.ParameterObject.New()
    bspline = params.GetDefaultParameterMap("bspline", s.resolutions, float(s.grid_spacing))
    bspline["MaximumNumberOfIterations"] = [str(s.bspline_iterations)]
    bspline["Metric1Weight"] = [str(s.bending_weight)]
    for m in (_elastix_affine_map(params, s, own_start), bspline):
        m["NumberOfSpatialSamples"] = [str(s.samples)]
        m["RandomSeed"] = [str(s.seed)]
        m["WriteResultImage"] = ["false"]
        params.AddParameterMap(m)
    return params


def _elastix_run(fixed: np.ndarray, moving: np.ndarray, make_params, threads: int, grid: Grid | None) -> np.ndarray:
    _check_pair(fixed, moving, grid)
    itk = load_baseline("elastix", threads)
    f = itk.GetImageFromArray(np.ascontiguousarray(fixed, np.float32))
    m = itk.GetImageFromArray(np.ascontiguousarray(moving, np.float32))
    if grid is not None:
        m.SetSpacing([float(v) for v in grid.spacing])
        m.SetOrigin([float(v) for v in grid.origin])
    params = make_params()
    _, transform = itk.elastix_registration_method(f, m, parameter_object=params, log_to_console=False)
    with tempfile.TemporaryDirectory(prefix="srnet-elastix-") as tmp:
        # transformix writes deformationField.nii into its output directory (the cwd unless told); the
        # field lies on the fixed grid (the transform's output geometry), in physical units
        deformation = itk.transformix_deformation_field(m, transform, output_directory=tmp)
        disp = itk.GetArrayFromImage(deformation)          # (H, W, 2): dx, dy
    return np.moveaxis(disp, -1, 0).astype(np.float32)


def register_elastix(fixed: np.ndarray, moving: np.ndarray, settings: ElastixSettings,
                     threads: int = 1, grid: Grid | None = None) -> np.ndarray:
    """(2, H, W) field (dx, dy) in fixed working px: fixed pixel p corresponds to the moving point
    p + u(p) (on the fixed grid when `grid` is None, else placed by `grid`, with elastix's automatic
    initialisation)."""
    return _elastix_run(fixed, moving, lambda: elastix_parameter_object(settings, own_start=grid is not None),
                        threads, grid)


def register_baseline(name: str, fixed: np.ndarray, moving: np.ndarray, settings: dict | None = None,
                      threads: int = 1, grid: Grid | None = None) -> tuple[np.ndarray, dict]:
    """Run baseline `name` on a pair of (H, W) images; returns the field and the settings used.

    `ants_syn`, `elastix`: `moving` is on the fixed grid (srnet's start). `ants_syn_own`, `elastix_own`:
    `moving` is on its own grid, placed by `grid` (own_start_grid; default the fixed grid's own frame),
    and the library initialises itself; the field is then relative to that placement (identity_affine)."""
    if name not in HISTOLOGY_BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(HISTOLOGY_BASELINES)}")
    base, start = baseline_start(name)
    chosen = baseline_settings(base, settings)
    if start == "own":
        grid = grid or Grid()
    elif grid is not None:
        raise ValueError(f"{name} starts from srnet's pre-alignment (moving already on the fixed grid); "
                         f"use {base}_own for a moving image on its own grid")
    run = register_ants_syn if base == "ants_syn" else register_elastix
    field_ = run(fixed, moving, chosen, threads, grid)
    if not np.isfinite(field_).all():
        raise RuntimeError(f"{name} returned a non-finite displacement field")
    return field_, asdict(chosen)


def _fit_affine(disp: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares affine map p -> p + disp(p) of a displacement field on a grid (exact for a
    field made by an affine transform)."""
    h, w = disp.shape[1:]
    ys, xs = np.mgrid[0:h:4, 0:w:4].astype(np.float64)
    src = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1)
    dst = np.stack([(xs + disp[0, ::4, ::4]).ravel(), (ys + disp[1, ::4, ::4]).ravel()], axis=1)
    return np.linalg.lstsq(src, dst, rcond=None)[0].T


def _elastix_default_affine(seed: int):
    """elastix's own default affine map (4 resolutions, 256 iterations, 2048 samples, Mattes mutual
    information) with its automatic CenterOfGravity initialisation."""
    import itk
    params = itk.ParameterObject.New()
    affine = params.GetDefaultParameterMap("affine")
    affine["AutomaticTransformInitialization"] = ["true"]
    affine["AutomaticTransformInitializationMethod"] = ["CenterOfGravity"]
    affine["RandomSeed"] = [str(seed)]
    affine["WriteResultImage"] = ["false"]
    params.AddParameterMap(affine)
    return params


def affine_own(name: str, fixed: np.ndarray, moving: np.ndarray, fixed_scale: tuple[float, float],
               moving_scale: tuple[float, float], seed: int = 0, threads: int = 1) -> np.ndarray:
    """An affine-only registration by library `name` (`ants_syn`: ANTs, `elastix`) from its own start,
    with the library's own defaults: `ants.registration(type_of_transform="Affine")` (its centre-of-mass
    initial transform, Mattes MI, 2100x1200x1200x10 iterations), or elastix's default affine map with
    AutomaticTransformInitialization (CenterOfGravity). The (H, W) fixed and (Hm, Wm) moving working
    images (tissue densities; `*_scale` = working px per full-res px, any pixel sizes) are placed in
    one full-resolution frame (own_start_grid). Returns the (2, 3) matrix fixed working px -> moving
    working px. Not srnet's registration.baselines settings: this is the libraries' reference
    (benchmarks/bench_baseline_affine.py)."""
    name = baseline_start(name)[0] if name in HISTOLOGY_BASELINES else name
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    grid = own_start_grid(fixed_scale, moving_scale)
    _check_pair(fixed, moving, grid)
    if name == "ants_syn":
        ants = load_baseline("ants_syn", threads)
        ants.config._random_seed = int(seed)
        f, m = _ants_pair(ants, fixed, moving, grid)
        with tempfile.TemporaryDirectory(prefix="srnet-ants-") as tmp:
            reg = ants.registration(f, m, type_of_transform="Affine", outprefix=os.path.join(tmp, "reg_"),
                                    verbose=False)
            disp = _ants_field(ants, f, m, reg["fwdtransforms"], tmp)
    else:
        disp = _elastix_run(fixed, moving, lambda: _elastix_default_affine(seed), threads, grid)
    if not np.isfinite(disp).all():
        raise RuntimeError(f"{name}'s affine registration returned a non-finite transform")
    # fixed working px -> the common frame (the transform) -> moving working px
    to_moving = np.vstack([identity_affine(fixed_scale, moving_scale), [0.0, 0.0, 1.0]])
    return (to_moving @ np.vstack([_fit_affine(disp), [0.0, 0.0, 1.0]]))[:2]


def baseline_register_stage(*, fixed_prepared: str, moving_prepared: str, affine: str | None, pair_id: str,
                            method_name: str, settings: dict, out_field: str, out_landmarks: str, out_overlay: str,
                            out_timing: str, moving_landmarks: str = "", missing_landmarks: str = "error",
                            threads: int = 1) -> dict:
    """Register one pair with a classical baseline. `ants_syn`, `elastix`: on the inputs srnet sees, the
    tissue densities on the fixed working grid, the moving one through srnet's affine pre-alignment
    (`affine`). `ants_syn_own`, `elastix_own`: from their own start (`affine` unused), the moving
    density on its own grid; written relative to the identity in full-resolution px."""
    from .data import load_pair_stack
    from .stages import write_registration
    base, start = baseline_start(method_name)
    timing: dict = {"device": f"cpu ({threads} thread{'s' if threads > 1 else ''})"}
    t0 = time.perf_counter()
    if start == "own":
        from ..h5io import read_prepared_attrs
        scales = [tuple(float(read_prepared_attrs(p)[k]) for k in ("scale_x", "scale_y"))
                  for p in (fixed_prepared, moving_prepared)]
        stack = load_pair_stack(fixed_prepared, moving_prepared, identity_affine(*scales), downsample=1)
        moving, grid = stack.moving_raw[0], own_start_grid(stack.fixed_scale, stack.moving_scale)
    else:
        stack = load_pair_stack(fixed_prepared, moving_prepared, affine, downsample=1)
        moving, grid = stack.moving[0], None
    load_baseline(base, threads)
    timing["seconds_load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    field, used = register_baseline(method_name, stack.fixed[0], moving, settings, threads, grid)
    timing["seconds_register"] = time.perf_counter() - t1
    log.info("%s: %s on %dx%d working px in %.2fs (%s)", pair_id, method_name, stack.shape[1], stack.shape[0],
             timing["seconds_register"], used)
    return write_registration(stack, field, field, pair_id, method_name, timing, t0, out_field, out_landmarks,
                              out_overlay, out_timing, moving_landmarks, missing_landmarks,
                              {"settings": json.dumps(used, sort_keys=True)})
