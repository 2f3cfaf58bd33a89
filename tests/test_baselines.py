"""Classical baselines (ants_syn, elastix): they recover known deformations in srnet's field convention,
refuse unknown settings, and say how to install themselves when missing. From their own initialisation
(ants_syn_own, elastix_own, and the affine-only affine_own) they place two working images of different
pixel sizes in full-resolution px and register the real BIRL kidney pair better than no registration."""

import sys

import numpy as np
import pytest
from scipy import ndimage

from srnet_core.coords import full_to_work, work_to_full
from srnet_core.names import BASELINES, OWN_START_BASELINES
from srnet_core.registration.baselines import (SETTINGS, affine_own, baseline_settings, identity_affine,
                                               own_start_grid, register_baseline)
from srnet_core.registration.transform import Transform
from srnet_core.registration.warp import SpatialTransformer

pytest.importorskip("ants", reason="antspyx is not installed (pip install '.[baselines]')")
pytest.importorskip("itk", reason="itk-elastix is not installed (pip install '.[baselines]')")

# Short schedules: the tests are about conventions and correctness, not the defaults' accuracy.
FAST = {"ants_syn": {"iterations": [30, 15, 0], "affine_iterations": [200, 100, 50, 10]},
        "elastix": {"affine_iterations": 96, "bspline_iterations": 96, "grid_spacing": 16.0}}


def _texture(h=192, w=224, seed=0):
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.random((h, w)), 3)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _warp(image, field):
    import torch
    with torch.no_grad():
        return SpatialTransformer(2)(torch.from_numpy(image)[None, None], torch.from_numpy(field)[None])[0, 0].numpy()


def test_config_and_implementation_name_the_same_baselines():
    assert set(BASELINES) == set(SETTINGS)


@pytest.mark.parametrize("name", BASELINES)
def test_a_known_translation_is_recovered_in_srnet_field_convention(name, tmp_path, monkeypatch):
    """moving(p + u) == fixed(p) with u = (dx 3, dy -2): the field must hold dx in channel 0, dy in 1."""
    monkeypatch.chdir(tmp_path)
    fixed = _texture()
    u = np.zeros((2,) + fixed.shape, np.float32)
    u[0], u[1] = -3.0, 2.0                         # moving = fixed shifted by (+3, -2)
    moving = _warp(fixed, u)
    field, used = register_baseline(name, fixed, moving, FAST[name], threads=2)
    assert field.shape == (2,) + fixed.shape
    inner = field[:, 24:-24, 24:-24]
    assert abs(np.median(inner[0]) - 3.0) < 0.2 and abs(np.median(inner[1]) + 2.0) < 0.2, np.median(inner, (1, 2))
    assert used["seed"] == 0
    assert not list(tmp_path.iterdir())              # no transform or field file left in the cwd


@pytest.mark.parametrize("name", BASELINES)
def test_a_smooth_deformation_is_recovered_to_subpixel_median_error(name):
    fixed = _texture(seed=1)
    h, w = fixed.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    truth = np.stack([2.5 * np.sin(2 * np.pi * ys / h), 2.0 * np.cos(2 * np.pi * xs / w)]).astype(np.float32)
    moving = _warp(fixed, -truth)                  # fixed(p) = moving(p + truth(p)) to first order
    inverse_check = _warp(_warp(fixed, -truth), truth)
    assert np.abs(inverse_check - fixed)[20:-20, 20:-20].mean() < 0.02    # the construction is sound
    field, _ = register_baseline(name, fixed, moving, FAST[name], threads=2)
    error = np.hypot(*(field - truth)[:, 24:-24, 24:-24])
    before = np.hypot(*truth[:, 24:-24, 24:-24])
    assert np.median(error) < 0.5, (np.median(error), np.median(before))
    assert np.median(error) < 0.25 * np.median(before)


def test_unknown_settings_and_names_are_refused():
    with pytest.raises(ValueError, match="unknown settings.*radiuss"):
        baseline_settings("ants_syn", {"radiuss": 3})
    with pytest.raises(ValueError, match="unknown baseline 'ants'"):
        baseline_settings("ants", {})


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "itk", None)            # import itk -> ImportError
    with pytest.raises(RuntimeError, match=r"elastix needs itk-elastix.*srnet\[baselines\]"):
        register_baseline("elastix", _texture(32, 32), _texture(32, 32))


def test_images_of_different_shapes_are_refused():
    with pytest.raises(ValueError, match="one grid"):
        register_baseline("ants_syn", _texture(32, 32), _texture(32, 40))


def test_a_moving_image_on_its_own_grid_needs_the_own_start():
    with pytest.raises(ValueError, match="ants_syn_own"):
        register_baseline("ants_syn", _texture(32, 32), _texture(32, 40), grid=own_start_grid((1, 1), (1, 1)))


# ---- from their own initialisation, on real data

def _density(path, max_side):
    from srnet_core.registration.affine import tissue_density
    from srnet_core.slides import read_working
    from srnet_core.tissue import tissue_mask
    rgb, info, scale = read_working(path, max_side=max_side)
    return tissue_density(rgb, tissue_mask(rgb, source=str(path))[0]), scale, (info.width, info.height)


@pytest.fixture(scope="module")
def kidney(birl):
    """The real BIRL rat-kidney pair (HE <- PanCytokeratin; 1164x787 and 1123x724 px, so the two
    512 px working images have different pixel sizes): densities, scales, landmarks."""
    folder = birl / "rat-kidney_" / "scale-5pc"
    fixed, fixed_scale, fixed_size = _density(folder / "Rat-Kidney_HE.jpg", 512)
    moving, moving_scale, _ = _density(folder / "Rat-Kidney_PanCytokeratin.jpg", 512)
    from srnet_core.landmarks import read_landmarks
    lf, lm = (read_landmarks(folder / f"Rat-Kidney_{s}.csv") for s in ("HE", "PanCytokeratin"))
    n = min(len(lf), len(lm))
    return {"fixed": fixed, "moving": moving, "fixed_scale": fixed_scale, "moving_scale": moving_scale,
            "diagonal": float(np.hypot(*fixed_size)), "fixed_landmarks": lf[:n], "moving_landmarks": lm[:n]}


def _rtre(pair, affine, field=None):
    """Median rTRE of the moving landmarks mapped into the fixed frame through (affine, field)."""
    if field is None:
        field = np.zeros((2,) + pair["fixed"].shape, np.float32)
    t = Transform(affine, field, pair["fixed_scale"], pair["moving_scale"])
    mapped = work_to_full(t.moving_to_fixed_work(full_to_work(pair["moving_landmarks"], pair["moving_scale"])),
                          pair["fixed_scale"])
    return float(np.median(np.hypot(*(mapped - pair["fixed_landmarks"]).T))) / pair["diagonal"]


def test_identity_affine_is_no_registration_in_full_resolution_px(kidney):
    unregistered = np.median(np.hypot(*(kidney["moving_landmarks"] - kidney["fixed_landmarks"]).T)) / kidney["diagonal"]
    assert kidney["fixed_scale"] != kidney["moving_scale"]
    assert _rtre(kidney, identity_affine(kidney["fixed_scale"], kidney["moving_scale"])) == pytest.approx(unregistered)


@pytest.mark.parametrize("name", BASELINES)
def test_affine_only_recovers_a_known_shift_between_two_pixel_sizes(name, birl):
    """One real slide read at two working sizes, the smaller shifted by (+9, -6) full-res px: the matrix
    is the identity in full-res px plus that shift, whatever the pixel sizes."""
    slide = birl / "rat-kidney_" / "scale-5pc" / "Rat-Kidney_HE.jpg"
    fixed, fixed_scale, _ = _density(slide, 384)
    moving, moving_scale, _ = _density(slide, 300)
    shift = np.array([9.0, -6.0])
    moving = ndimage.shift(moving, (shift[1] * moving_scale[1], shift[0] * moving_scale[0]), order=1)
    truth = identity_affine(fixed_scale, moving_scale)
    truth[:, 2] += shift * np.asarray(moving_scale)
    matrix = affine_own(name, fixed, moving, fixed_scale, moving_scale, threads=2)
    assert matrix.shape == (2, 3)
    corners = np.array([[0, 0, 1], [fixed.shape[1], 0, 1], [0, fixed.shape[0], 1], [fixed.shape[1], fixed.shape[0], 1]])
    assert np.abs(corners @ (matrix - truth).T).max() < 0.5, (matrix, truth)      # moving working px


@pytest.mark.parametrize("name", BASELINES)
def test_affine_only_from_its_own_start_beats_no_registration_on_a_real_pair(name, kidney):
    """Median rTRE 0.0207 unregistered; elastix 0.0033 on every run; ANTs 0.0029-0.0039, but about one
    run in eight lands in another optimum, 0.012-0.015 (the same seed; at 1,024 px too)."""
    identity = identity_affine(kidney["fixed_scale"], kidney["moving_scale"])
    matrix = affine_own(name, kidney["fixed"], kidney["moving"], kidney["fixed_scale"], kidney["moving_scale"],
                        threads=2)
    assert np.isfinite(matrix).all()
    assert _rtre(kidney, matrix) < _rtre(kidney, identity), (_rtre(kidney, matrix), _rtre(kidney, identity))


@pytest.mark.parametrize("name", OWN_START_BASELINES)
def test_own_start_baselines_beat_no_registration_on_a_real_pair(name, kidney):
    """With their default settings (elastix's affine map from its centre-of-gravity start needs its
    default 4 resolutions here: with 3 it ends worse than unregistered). Median rTRE 0.0207
    unregistered; ants_syn_own 0.0028-0.0040 over 11 runs, elastix_own 0.0035 (bounded by the
    unregistered error only: ANTs' affine stage sometimes lands in a worse optimum, see above)."""
    identity = identity_affine(kidney["fixed_scale"], kidney["moving_scale"])
    field, _ = register_baseline(name, kidney["fixed"], kidney["moving"], None, threads=2,
                                 grid=own_start_grid(kidney["fixed_scale"], kidney["moving_scale"]))
    assert field.shape == (2,) + kidney["fixed"].shape and np.isfinite(field).all()
    assert _rtre(kidney, identity, field) < _rtre(kidney, identity), (_rtre(kidney, identity, field),
                                                                      _rtre(kidney, identity))
