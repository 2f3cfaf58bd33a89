"""Classical baselines on the same inputs as srnet: ANTs SyN (antspyx) and elastix (itk-elastix).

Both see exactly what the srnet network sees for a pair: the fixed tissue density and the moving one
resampled through srnet's affine pre-alignment, on the fixed working grid (registration/data.py).
That pre-alignment is their initialisation (elastix's default maps fail on pairs with a large initial
rotation or flip otherwise); each then runs its own affine stage and its own deformable stage. The
result is turned into a dense displacement field in srnet's convention (DESIGN.md: on the fixed grid,
in working px, channel 0 = dx, sampling the pre-aligned moving image at p + u(p)), so that landmarks,
overlays, the warped slide and every table treat a baseline exactly like an srnet method.

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
    seed: int = 0


SETTINGS = {"ants_syn": AntsSynSettings, "elastix": ElastixSettings}


def baseline_settings(name: str, settings: dict | None) -> AntsSynSettings | ElastixSettings:
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


def _check_pair(fixed: np.ndarray, moving: np.ndarray) -> None:
    if fixed.ndim != 2 or fixed.shape != moving.shape:
        raise ValueError(f"baselines register two 2D images on one grid, got {fixed.shape} and {moving.shape}")


def register_ants_syn(fixed: np.ndarray, moving: np.ndarray, settings: AntsSynSettings,
                      threads: int = 1) -> np.ndarray:
    """(2, H, W) field (dx, dy) in px: fixed pixel p corresponds to moving point p + u(p)."""
    _check_pair(fixed, moving)
    ants = load_baseline("ants_syn", threads)
    # antspyx 0.6 ignores registration(random_seed=...): the seed goes through its config module
    ants.config._random_seed = int(settings.seed)
    f = ants.from_numpy(np.ascontiguousarray(fixed, np.float32))
    m = ants.from_numpy(np.ascontiguousarray(moving, np.float32))
    s = settings
    with tempfile.TemporaryDirectory(prefix="srnet-ants-") as tmp:
        reg = ants.registration(f, m, type_of_transform="SyN", outprefix=os.path.join(tmp, "reg_"),
                                syn_metric=s.metric, syn_sampling=s.radius, reg_iterations=tuple(s.iterations),
                                aff_metric=s.affine_metric, aff_iterations=tuple(s.affine_iterations),
                                grad_step=s.grad_step, flow_sigma=s.flow_sigma, total_sigma=s.total_sigma,
                                verbose=False)
        # The forward transforms pull the moving image onto the fixed grid; composed, they are one
        # displacement field on the fixed grid that maps fixed points to moving points.
        composed = ants.apply_transforms(f, m, transformlist=reg["fwdtransforms"],
                                         compose=os.path.join(tmp, "composed_"))
        disp = ants.image_read(composed).numpy()            # (H, W, 2), components in array-axis order (y, x)
    return np.stack([disp[..., 1], disp[..., 0]]).astype(np.float32)


def elastix_parameter_object(settings: ElastixSettings):
    import itk
    s = settings
    params = itk.ParameterObject.New()
    affine = params.GetDefaultParameterMap("affine", s.resolutions)
    affine["MaximumNumberOfIterations"] = [str(s.affine_iterations)]
    # srnet's pre-alignment is the initialisation: elastix's own centre-of-gravity start moved the
    # already aligned BIRL kidney pair off (median rTRE 0.0141 against 0.0026 without it)
    affine["AutomaticTransformInitialization"] = ["false"]
    bspline = params.GetDefaultParameterMap("bspline", s.resolutions, float(s.grid_spacing))
    bspline["MaximumNumberOfIterations"] = [str(s.bspline_iterations)]
    bspline["Metric1Weight"] = [str(s.bending_weight)]
    for m in (affine, bspline):
        m["NumberOfSpatialSamples"] = [str(s.samples)]
        m["RandomSeed"] = [str(s.seed)]
        m["WriteResultImage"] = ["false"]
        params.AddParameterMap(m)
    return params


def register_elastix(fixed: np.ndarray, moving: np.ndarray, settings: ElastixSettings,
                     threads: int = 1) -> np.ndarray:
    """(2, H, W) field (dx, dy) in px: fixed pixel p corresponds to moving point p + u(p)."""
    _check_pair(fixed, moving)
    itk = load_baseline("elastix", threads)
    f = itk.GetImageFromArray(np.ascontiguousarray(fixed, np.float32))
    m = itk.GetImageFromArray(np.ascontiguousarray(moving, np.float32))
    _, transform = itk.elastix_registration_method(f, m, parameter_object=elastix_parameter_object(settings),
                                                   log_to_console=False)
    with tempfile.TemporaryDirectory(prefix="srnet-elastix-") as tmp:
        # transformix writes deformationField.nii into its output directory (the cwd unless told)
        deformation = itk.transformix_deformation_field(m, transform, output_directory=tmp)
        disp = itk.GetArrayFromImage(deformation)          # (H, W, 2): dx, dy
    return np.moveaxis(disp, -1, 0).astype(np.float32)


def register_baseline(name: str, fixed: np.ndarray, moving: np.ndarray, settings: dict | None = None,
                      threads: int = 1) -> tuple[np.ndarray, dict]:
    """Run baseline `name` on a pair of (H, W) images; returns the field and the settings used."""
    chosen = baseline_settings(name, settings)
    run = register_ants_syn if name == "ants_syn" else register_elastix
    field_ = run(fixed, moving, chosen, threads)
    if not np.isfinite(field_).all():
        raise RuntimeError(f"{name} returned a non-finite displacement field")
    return field_, asdict(chosen)


def baseline_register_stage(*, fixed_prepared: str, moving_prepared: str, affine: str, pair_id: str,
                            method_name: str, settings: dict, out_field: str, out_landmarks: str, out_overlay: str,
                            out_timing: str, moving_landmarks: str = "", missing_landmarks: str = "error",
                            threads: int = 1) -> dict:
    """Register one pair with a classical baseline (`ants_syn`, `elastix`) on the inputs srnet sees: the
    tissue densities on the fixed working grid, the moving one through srnet's affine pre-alignment."""
    from .data import load_pair_stack
    from .stages import write_registration
    timing: dict = {"device": f"cpu ({threads} thread{'s' if threads > 1 else ''})"}
    t0 = time.perf_counter()
    stack = load_pair_stack(fixed_prepared, moving_prepared, affine, downsample=1)
    load_baseline(method_name, threads)
    timing["seconds_load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    field, used = register_baseline(method_name, stack.fixed[0], stack.moving[0], settings, threads)
    timing["seconds_register"] = time.perf_counter() - t1
    log.info("%s: %s on %dx%d working px in %.2fs (%s)", pair_id, method_name, stack.shape[1], stack.shape[0],
             timing["seconds_register"], used)
    return write_registration(stack, field, field, pair_id, method_name, timing, t0, out_field, out_landmarks,
                              out_overlay, out_timing, moving_landmarks, missing_landmarks,
                              {"settings": json.dumps(used, sort_keys=True)})
