"""Classical baselines (ants_syn, elastix): they recover known deformations in srnet's field convention,
refuse unknown settings, and say how to install themselves when missing."""

import sys

import numpy as np
import pytest
from scipy import ndimage

from srnet_core.names import BASELINES
from srnet_core.registration.baselines import SETTINGS, baseline_settings, register_baseline
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
