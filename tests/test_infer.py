"""Registering a pair: recovering a known field, landmarks that follow the image, the warped slide."""

import numpy as np
import pytest
import torch

from srnet_core.errors import InputError
from srnet_core.h5io import read_field, write_field
from srnet_core.registration.data import _resample
from srnet_core.registration.infer import (_resize_field, instance_optimise, reflection_averaged_field,
                                          reflection_axes, warp_slide)
from srnet_core.registration.train import MethodSettings
from srnet_core.registration.transform import Transform
from srnet_core.registration.warp import SpatialTransformer

from test_train import synthetic_stack


def test_instance_optimisation_recovers_a_known_smooth_field():
    stack, truth = synthetic_stack(shape=(96, 96), amplitude=6.0, seed=3, sigma=4.0)
    method = MethodSettings(lambda_smooth=0.5, lambda_seg=0.0, map_inputs=False)     # MSE + local NCC
    field, losses = instance_optimise(np.zeros_like(truth), stack, method, steps=600, lr=0.1)
    inner = (slice(None), slice(12, -12), slice(12, -12))
    before = np.median(np.hypot(*truth[inner]))
    err = np.median(np.hypot(*(field - truth)[inner]))
    assert before > 1.0 and err < 0.5, (before, err)
    assert losses[-1] < losses[0]


def test_known_translation_is_recovered():
    stack, _ = synthetic_stack(shape=(80, 80), amplitude=0.0, seed=5)
    shift = np.zeros((2, 80, 80), np.float32)
    shift[0], shift[1] = 2.0, -1.5
    with torch.no_grad():
        stack.fixed = SpatialTransformer(2)(torch.from_numpy(stack.moving)[None], torch.from_numpy(shift)[None])[0].numpy()
    method = MethodSettings(lambda_smooth=0.5, lambda_seg=0.0, map_inputs=False, ncc_weight=0.0)
    # 500 steps: MSE on the blurred images (default sim_sigma) has weaker gradients than on sharp ones
    # (0.55 px after 300 steps, 0.09 after 500; unblurred 0.28 / 0.02)
    field, _ = instance_optimise(np.zeros_like(shift), stack, method, steps=500, lr=0.1)
    inner = (slice(None), slice(10, -10), slice(10, -10))
    assert np.median(np.hypot(*(field - shift)[inner])) < 0.5


class _OffsetNetwork(torch.nn.Module):
    """Stands in for a network with a learned global offset: its field is a centred linear field
    (which mirroring maps onto itself: what an equivariant network would return) plus a constant."""

    def __init__(self, offset, gain):
        super().__init__()
        self.offset, self.gain = offset, gain

    def forward(self, x):
        centred = torch.meshgrid(*[torch.arange(n, dtype=x.dtype) - (n - 1) / 2 for n in x.shape[2:]],
                                 indexing="ij")[::-1]                        # x, y(, z)
        field = torch.stack([g * c + o for g, c, o in zip(self.gain, centred, self.offset)])
        return field[None].expand(x.shape[0], -1, *x.shape[2:])


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_reflection_averaging_cancels_a_network_offset_and_keeps_the_rest(spatial_dims):
    offset, gain = [0.4, -0.7, 1.1][:spatial_dims], [0.05, -0.02, 0.03][:spatial_dims]
    network = _OffsetNetwork(offset, gain)
    x = torch.rand(1, 3, *([9, 12, 7][:spatial_dims]))
    unbiased = _OffsetNetwork([0.0] * spatial_dims, gain)(x)
    assert len(reflection_axes("axes", spatial_dims)) == 2 ** spatial_dims
    none = reflection_averaged_field(network, x, "none")
    assert (none - unbiased).flatten(2).mean(2)[0].tolist() == pytest.approx(offset, abs=1e-6)
    for mode in ("point", "axes"):
        # every component's offset cancels; a wrong sign or component for one axis would leave it
        # (or flip the linear part) for that axis
        assert torch.allclose(reflection_averaged_field(network, x, mode), unbiased, atol=1e-6), mode
    with pytest.raises(ValueError, match="reflections must be one of"):
        reflection_averaged_field(network, x, "mirror")


def test_field_resizing_keeps_the_mapping_of_points():
    """A linear field (exact under bilinear and area resampling) moved onto a grid half as fine and
    back: at each coarse pixel centre it moves the same physical point by the same physical amount."""
    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fine = torch.from_numpy(np.stack([0.05 * xx - 0.03 * yy + 2.0, 0.02 * xx + 0.04 * yy - 1.0])[None])
    coarse = _resize_field(fine, (20, 30))
    yc, xc = np.mgrid[0:20, 0:30].astype(np.float64)
    xf, yf = 2 * (xc + 0.5) - 0.5, 2 * (yc + 0.5) - 0.5               # coarse centres in fine px
    expected = np.stack([0.05 * xf - 0.03 * yf + 2.0, 0.02 * xf + 0.04 * yf - 1.0]) / 2
    np.testing.assert_allclose(coarse[0].numpy(), expected, atol=1e-9)
    back = _resize_field(coarse, (h, w))[0].numpy()
    inner = (slice(None), slice(2, -2), slice(2, -2))                 # bilinear clamps at the border
    np.testing.assert_allclose(back[inner], fine[0].numpy()[inner], atol=1e-9)


def test_coarse_to_fine_recovers_a_shift_beyond_the_single_grid_reach():
    """An 11 px shift of a texture with ~7 px features (MSE + local NCC): on the registration grid
    alone the similarity has no useful gradient towards it; two coarser grids first bring it within
    reach."""
    stack, _ = synthetic_stack(shape=(96, 96), amplitude=0.0, seed=5, sigma=3.0)
    shift = np.zeros((2, 96, 96), np.float32)
    shift[0], shift[1] = 9.0, -6.0
    with torch.no_grad():
        stack.fixed = SpatialTransformer(2)(torch.from_numpy(stack.moving)[None], torch.from_numpy(shift)[None])[0].numpy()
    method = MethodSettings(lambda_smooth=0.5, lambda_seg=0.0, map_inputs=False)
    inner = (slice(None), slice(16, -16), slice(16, -16))
    errors = {}
    for levels in (1, 3):
        field, losses = instance_optimise(np.zeros_like(shift), stack, method, steps=150, lr=0.2, levels=levels)
        assert len(losses) == 150 * levels
        errors[levels] = float(np.median(np.hypot(*(field - shift)[inner])))
    assert errors[3] < 0.5 and errors[1] > 3.0, errors
    with pytest.raises(ValueError, match="levels"):
        instance_optimise(np.zeros_like(shift), stack, method, steps=1, levels=0)


def test_fine_steps_recover_detail_the_registration_grid_averages_away():
    """A 128 px working grid registered on a 4x coarser grid (the default downsample) and then on one
    2x coarser: the texture's ~5 px features are averaged away at 4x, so the coarse grid alone stops
    at ~0.36 working px of error; 100 more steps on the finer grid more than halve it."""
    working, truth = synthetic_stack(shape=(128, 128), amplitude=3.0, seed=3, sigma=2.0)
    coarse, fine = working.shrunk(4), working.shrunk(2)
    assert coarse.shape == (32, 32) and fine.shape == (64, 64) and fine.fixed_mask.shape == (64, 64)
    # sim_sigma 0: one texture in both images, so no resampling drift to remove, and the default 1 px
    # blur would wipe the 5 px texture this test is about off the 4x grid (errors 1.07 / 0.38 px with it)
    method = MethodSettings(lambda_smooth=0.5, lambda_seg=0.0, map_inputs=False, sim_sigma=0.0)
    inner = (slice(None), slice(16, -16), slice(16, -16))
    errors = {}
    for fine_steps in (0, 100):
        field, losses = instance_optimise(np.zeros((2, 32, 32), np.float32), coarse, method, steps=150, lr=0.2,
                                          fine=fine, fine_steps=fine_steps)
        assert len(losses) == 150 + fine_steps
        assert field.shape == (2,) + (fine.shape if fine_steps else coarse.shape)
        in_working_px = (fine if fine_steps else coarse).field_to_working(field)
        errors[fine_steps] = float(np.median(np.hypot(*(in_working_px - truth)[inner])))
    assert float(np.median(np.hypot(*truth[inner]))) > 1.0
    assert errors[0] > 0.3 and errors[100] < 0.2, errors


def test_a_mapped_landmark_lands_on_the_content_the_warped_image_shows():
    h, w = 120, 140
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    q = np.array([83.3, 51.7])                                       # a dot in the moving image (x, y)
    moving = np.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2) / 6.0).astype(np.float32)
    field = np.stack([3 * np.sin(xx / 25) + 1.0, 2 * np.cos(yy / 31) - 2.0]).astype(np.float32)
    affine = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    with torch.no_grad():
        warped = SpatialTransformer(2)(torch.from_numpy(moving)[None, None], torch.from_numpy(field)[None])[0, 0].numpy()
    peak = np.array([(xx * warped).sum(), (yy * warped).sum()]) / warped.sum()
    mapped = Transform(affine, field, (1.0, 1.0), (1.0, 1.0)).moving_to_fixed_work(q[None])[0]
    assert np.hypot(*(mapped - peak)) < 0.3, (mapped, peak)


def test_the_affine_resampling_and_the_landmark_mapping_agree():
    """What the registration sees (the moving image resampled through the affine matrix, as
    load_pair_stack does) and where the landmarks go (Transform) use one convention: a dot in a
    moving image of another size, through a rotating, shearing, scaling matrix, lands where the
    mapping puts its centre (a half-pixel slip here would show as a constant shift of every
    deformable field)."""
    hm, wm, hf, wf = 150, 170, 128, 160
    theta = np.deg2rad(17.0)
    affine = np.array([[1.08 * np.cos(theta), -np.sin(theta) + 0.05, 21.3],
                       [np.sin(theta), 0.93 * np.cos(theta), -6.7]])        # fixed working -> moving working
    yy, xx = np.mgrid[0:hm, 0:wm].astype(np.float64)
    transform = Transform(affine, np.zeros((2, hf, wf), np.float32), (1.0, 1.0), (1.0, 1.0))
    for q in ((80.37, 60.61), (101.2, 95.9), (70.0, 40.5)):
        dot = np.exp(-((xx - q[0]) ** 2 + (yy - q[1]) ** 2) / 8.0).astype(np.float32)[None]
        warped = _resample(dot, affine, (hf, wf))[0].astype(np.float64)
        fy, fx = np.mgrid[0:hf, 0:wf]
        peak = np.array([(fx * warped).sum(), (fy * warped).sum()]) / warped.sum()
        mapped = transform.moving_to_fixed_work(np.array([q]))[0]
        assert np.hypot(*(mapped - peak)) < 0.05, (q, mapped, peak)


def test_field_file_round_trip_and_wrong_shape(tmp_path):
    field = np.random.default_rng(0).normal(size=(2, 30, 40)).astype(np.float32)
    path = tmp_path / "field.h5"
    write_field(path, field, {"method": "srnet"})
    back, attrs = read_field(path, (30, 40))
    np.testing.assert_array_equal(back, field)
    with pytest.raises(InputError, match="expected \\(2, 31, 40\\)") as err:
        read_field(path, (31, 40))
    assert str(path) in str(err.value)
    (tmp_path / "cut.h5").write_bytes(path.read_bytes()[:500])
    with pytest.raises(InputError):
        read_field(tmp_path / "cut.h5")


def test_warped_slide_is_pyramidal_and_puts_the_moving_dot_on_the_fixed_landmark(tmp_path):
    import pyvips
    mw, mh = 1500, 1100
    yy, xx = np.mgrid[0:mh, 0:mw]
    q_full = np.array([900.0, 420.0])
    moving = np.full((mh, mw, 3), 240, np.uint8)
    moving[np.hypot(xx - q_full[0], yy - q_full[1]) < 6] = (20, 20, 120)
    src = tmp_path / "moving.png"
    pyvips.Image.new_from_array(moving).pngsave(str(src))
    # fixed full-res 1600 x 1200, working scale 1/8; moving working scale 1/5; a rotation and a field
    fs, ms = (0.125, 0.125), (0.2, 0.2)
    fh, fw = 150, 200
    a = np.deg2rad(12)
    affine = np.array([[np.cos(a), -np.sin(a), 30.0], [np.sin(a), np.cos(a), 5.0]]) * 1.6   # work -> work
    yy_w, xx_w = np.mgrid[0:fh, 0:fw].astype(float)
    field = np.stack([2 * np.sin(xx_w / 30), 1.5 * np.cos(yy_w / 40)])
    t = Transform(affine, field, fs, ms)
    out = tmp_path / "warped.tif"
    warp_slide(src, t, (1600, 1200), out, tile=256)
    warped = pyvips.Image.new_from_file(str(out))
    assert (warped.width, warped.height) == (1600, 1200)
    assert pyvips.Image.new_from_file(str(out), page=1).width == 800       # a pyramid level below
    arr = warped.numpy()
    dark = arr[..., 0] < 100
    centre = np.array([np.nonzero(dark)[1].mean(), np.nonzero(dark)[0].mean()])
    expected = t.moving_to_fixed(q_full[None])[0]
    assert np.hypot(*(centre - expected)) < 2.0, (centre, expected)


def test_inversion_converges_where_the_field_expands_strongly():
    """A smooth local expansion (Jacobian 3 at its centre, as classical methods' fields can have) makes
    the plain fixed-point iteration diverge there; the inversion still finds p with p + u(p) = q."""
    from srnet_core.registration.transform import sample_field
    h = w = 128
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c, sigma = np.array([64.0, 60.0]), 15.0
    bump = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * sigma ** 2))
    field = np.stack([2.0 * (xx - c[0]) * bump, 2.0 * (yy - c[1]) * bump]).astype(np.float32)
    truth = np.array([[64.4, 60.3], [66.0, 57.5], [70.2, 64.9], [40.0, 90.0], [61.3, 62.2]])
    q = truth + sample_field(field, truth)
    t = Transform(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), field, (1.0, 1.0), (1.0, 1.0))
    mapped = t.moving_to_fixed_work(q)
    assert np.abs(mapped - truth).max() < 1e-3, np.abs(mapped - truth)
