"""Registration building blocks: warp direction and convention, losses, network, transform composition."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from srnet_core.registration.losses import (DiffusionRegulariser, GaussianSmoothing, LocalNCC, SRNetLoss,
                                           SegmentationLoss, box_sum)
from srnet_core.registration.network import RegistrationUNet, RegNetConfig
from srnet_core.registration.transform import Transform, sample_field
from srnet_core.registration.warp import SpatialTransformer


def _image(h=40, w=50, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(1, 1, h, w)).astype(np.float32))


def test_identity_and_integer_shift_follow_the_field_convention():
    stn = SpatialTransformer(2)
    img = _image()
    assert torch.allclose(stn(img, torch.zeros(1, 2, 40, 50)), img, atol=1e-4)   # float32 round-off
    field = torch.zeros(1, 2, 40, 50)
    field[:, 0] = 3.0                         # u = (dx, dy) = (3, -2): warped(p) = moving(p + u)
    field[:, 1] = -2.0
    out = stn(img, field)
    assert torch.allclose(out[..., 2:, :-3], img[..., :-2, 3:], atol=1e-5)


def test_warp_3d_and_dtype_device_follow_the_input():
    stn = SpatialTransformer(3)
    vol = torch.randn(2, 3, 6, 7, 8, dtype=torch.float64)
    field = torch.zeros(2, 3, 6, 7, 8, dtype=torch.float64)
    field[:, 2] = 1.0                          # dz
    out = stn(vol, field)
    assert out.dtype == torch.float64
    assert torch.allclose(out[:, :, :-1], vol[:, :, 1:])
    with pytest.raises(ValueError, match="does not fit"):
        stn(vol, field[:, :2])


def test_local_ncc_values_and_flat_patches():
    ncc = LocalNCC(2, window=9)
    a = _image()
    assert ncc(a, a).item() == pytest.approx(0.0, abs=1e-3)            # loss = 1 - NCC
    assert ncc(a, 2 * a + 5).item() == pytest.approx(0.0, abs=1e-3)   # invariant to gain and offset
    assert ncc(a, _image(seed=1)).item() > 0.8                          # unrelated noise
    assert ncc(a, -a).item() == pytest.approx(0.0, abs=1e-3)            # squared: sign-blind, as VoxelMorph
    flat = torch.zeros(1, 1, 40, 50)
    value = ncc(flat, flat)
    assert torch.isfinite(value) and value.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        ncc(a, a[..., :-1])


@pytest.mark.parametrize("spatial_dims,shape,window", [(2, (2, 3, 37, 64), 9), (2, (1, 1, 5, 300), 7),
                                                       (3, (1, 2, 9, 11, 13), 5)])
def test_box_sum_equals_a_zero_padded_ones_convolution(spatial_dims, shape, window):
    """The cumulative-sum window sums match the grouped ones-kernel convolution they replace, values and
    gradients (borders included: zero padding, a window wider than an axis)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.rand(shape, generator=gen, dtype=torch.float64)
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    kernel = torch.ones((shape[1], 1) + (window,) * spatial_dims, dtype=torch.float64)
    expected = conv(x, kernel, padding=window // 2, groups=shape[1])
    (expected_grad,) = torch.autograd.grad((expected * weight).sum(), x)
    got = box_sum(x, window, spatial_dims)
    (got_grad,) = torch.autograd.grad((got * weight).sum(), x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-10) and torch.allclose(got_grad, expected_grad, atol=1e-10)
    # float32 input: summed in float64, returned in float32 within float32 rounding
    x32 = x.detach().float()
    assert box_sum(x32, window, spatial_dims).dtype == torch.float32
    assert torch.allclose(box_sum(x32, window, spatial_dims).double(), expected.detach(), atol=1e-5)


@pytest.mark.parametrize("window", [4, 5])
def test_box_sum_gradient_is_the_mirrored_window_sum(window):
    """box_sum's hand-written backward (the adjoint window sum) against finite differences, for an even
    window too, where the window is not centred and its adjoint is the mirrored one."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((1, 2, 7, 9), generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_sum(t, window, 2), (x,))
    if window % 2 == 0:     # x[i - w/2 ... i + w/2 - 1] along each axis
        ones = torch.ones(1, 1, 1, 12, dtype=torch.float64)
        assert box_sum(ones, window, 2)[0, 0, 0, :3].tolist() == [window / 2, window / 2 + 1, window / 2 + 2]


def test_diffusion_regulariser_on_known_fields():
    reg = DiffusionRegulariser(2)
    assert reg(torch.full((1, 2, 10, 12), 4.0)).item() == 0.0
    yy, xx = torch.meshgrid(torch.arange(10.0), torch.arange(12.0), indexing="ij")
    field = torch.stack([0.5 * xx, 0.0 * yy])[None]    # du_x/dx = 0.5, everything else 0
    # mean over pixels of |grad u|^2: 0.25 on the x differences of channel 0, averaged over 2 channels, x2
    assert reg(field).item() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        reg(torch.zeros(1, 3, 10, 12))


def test_srnet_loss_parts_and_weights():
    loss = SRNetLoss(2)
    a, m = _image(), torch.rand(1, 4, 40, 50)
    field = torch.zeros(1, 2, 40, 50)
    total, parts = loss(a, a, field, m, m)
    assert total.item() == pytest.approx(0.0, abs=1e-3) and set(parts) == {"sim", "smooth", "seg"}
    m2 = torch.rand(1, 4, 40, 50)
    total2, parts2 = loss(a, a, field, m, m2)
    assert total2.item() == pytest.approx(1.05 * SegmentationLoss(2)(m, m2).item(), rel=1e-3)
    assert (loss.lambda_smooth, loss.lambda_seg) == (0.95, 1.05)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gaussian_smoothing_keeps_constants_and_mass_and_checks_shapes(spatial_dims):
    smooth = GaussianSmoothing(spatial_dims, 1.0)
    shape = (1, 2) + (12,) * spatial_dims
    const = torch.full(shape, 0.7)
    assert torch.allclose(smooth(const), const, atol=1e-6)                    # replicated edges: no border edge
    impulse = torch.zeros(shape)
    impulse[(0, 0) + (6,) * spatial_dims] = 1.0
    out = smooth(impulse)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5) and out[0, 1].abs().max() == 0   # per channel
    centre = out[(0, 0) + (6,) * (spatial_dims - 1)]                             # a line through the impulse
    assert centre[7].item() / centre[6].item() == pytest.approx(np.exp(-0.5), rel=1e-4)
    assert torch.equal(GaussianSmoothing(spatial_dims, 0.0)(impulse), impulse)
    with pytest.raises(ValueError):
        smooth(torch.zeros(1, 1, 12))
    with pytest.raises(ValueError):
        GaussianSmoothing(spatial_dims, -1.0)


def _drift(sim_sigma: float, seed: int) -> np.ndarray:
    """Mean field (px) that instance optimisation finds between two images of one smooth structure with
    independent fine texture (two stains of one geometry in miniature): the truth is zero."""
    from scipy.ndimage import gaussian_filter
    from srnet_core.registration.infer import _optimise_field
    structure = gaussian_filter(np.random.default_rng(0).standard_normal((128, 128)), 4)
    structure = (structure - structure.min()) / np.ptp(structure)
    rng = np.random.default_rng(seed)
    fixed, moving = (torch.from_numpy((structure + 0.1 * rng.standard_normal(structure.shape)).astype(np.float32))[None, None]
                     for _ in range(2))
    loss = SRNetLoss(2, lambda_smooth=2.0, lambda_seg=0.0, sim_sigma=sim_sigma)
    u, _ = _optimise_field(torch.zeros(1, 2, 128, 128), fixed, moving, None, None, loss, 100, 0.2)
    return u[0].mean(dim=(1, 2)).numpy()


def test_similarity_blur_removes_the_resampling_drift_between_different_textures():
    """Without blur, resampling's own smoothing makes a ~0.4 px shift look better than the truth (zero)
    when the images' fine texture differs; the default sim_sigma (1 px) brings it under 0.06 px. The
    BIRL pairs showed the same drift, the same sign from either direction (docs/BENCHMARKS.md)."""
    from srnet_core.registration.train import MethodSettings
    assert MethodSettings().sim_sigma == 1.0
    for seed in (10, 11):
        assert (_drift(0.0, seed) > 0.3).all()
        assert np.abs(_drift(MethodSettings().sim_sigma, seed)).max() < 0.06


def test_network_any_size_2d_and_3d():
    net = RegistrationUNet(RegNetConfig(spatial_dims=2, in_channels=4))
    flow = net(torch.randn(2, 4, 45, 61))
    assert flow.shape == (2, 2, 45, 61) and flow.abs().max() < 1e-2     # starts near identity
    net3 = RegistrationUNet(RegNetConfig(spatial_dims=3, in_channels=2, encoder=[8, 8], decoder=[8, 8, 8]))
    assert net3(torch.randn(1, 2, 9, 10, 11)).shape == (1, 3, 9, 10, 11)
    with pytest.raises(ValueError, match="expected"):
        net(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_inference_layout_gives_the_training_layouts_field(spatial_dims):
    """Eval mode runs channels-last (faster on CPU): same field as the default layout, for any input
    layout, including a (1, C, ...) tensor that is NHWC in memory with a batch stride of C."""
    torch.manual_seed(0)
    net = RegistrationUNet(RegNetConfig(spatial_dims=spatial_dims, in_channels=4, encoder=[8, 8], decoder=[8, 8, 8]))
    for conv in net.modules():
        if isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.normal_(conv.weight, std=0.2)        # a non-trivial field, not ~0
    spatial = (20, 28) if spatial_dims == 2 else (10, 12, 14)
    channels_last = torch.randn(*spatial, 4)                     # as numpy arrays arrive (H, W, C)
    x = channels_last.movedim(-1, 0)[None]                       # (1, C, ...) viewing NHWC memory
    with torch.no_grad():
        net.train()
        expected = net(x.contiguous())
        net.eval()
        for inp in (x, x.contiguous()):
            got = net(inp)
            assert got.is_contiguous()
            assert expected.abs().max() > 0.1
            assert torch.allclose(got, expected, atol=1e-5 * float(expected.abs().max()))
    net.eval()
    net.flow.weight.data = net.flow.weight.data.contiguous()   # as a fresh model: converted on first use
    with torch.inference_mode():
        net(x)
    net.train()                                                  # training after inference still works
    loss = net(x.contiguous()).square().mean()
    loss.backward()
    assert torch.isfinite(net.flow.weight.grad).all()


def test_optimising_a_field_recovers_a_known_shift():
    """Transformer + losses + direction together: a blob moved by (+3, -2) px is found by gradient
    descent on a free field; the field at the blob says (3, -2) to a tenth of a pixel."""
    yy, xx = np.mgrid[0:48, 0:48].astype(np.float32)
    fixed = np.exp(-((xx - 22) ** 2 + (yy - 26) ** 2) / 30)
    moving = np.exp(-((xx - 25) ** 2 + (yy - 24) ** 2) / 30)     # fixed(p) = moving(p + (3, -2))
    f = torch.from_numpy(fixed)[None, None]
    m = torch.from_numpy(moving)[None, None]
    field = torch.zeros(1, 2, 48, 48, requires_grad=True)
    stn, loss_fn = SpatialTransformer(2), SRNetLoss(2, lambda_smooth=0.05, ncc_weight=0.0)
    opt = torch.optim.Adam([field], lr=0.1)
    for _ in range(600):
        loss, _ = loss_fn(f, stn(m, field), field)
        opt.zero_grad()
        loss.backward()
        opt.step()
    warped = stn(m, field).detach()[0, 0].numpy()

    def centroid(img):
        return np.array([(xx * img).sum(), (yy * img).sum()]) / img.sum()

    assert np.linalg.norm(centroid(moving) - centroid(fixed)) > 3.5              # before: 3.6 px apart
    assert np.linalg.norm(centroid(warped) - centroid(fixed)) < 0.1              # after: aligned
    u = field.detach()[0, :, 24:29, 20:25].mean(dim=(1, 2)).numpy()            # at the blob's centre
    assert u == pytest.approx([3.0, -2.0], abs=0.3)


def test_transform_inverts_a_smooth_field_to_subpixel():
    h, w = 80, 100
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    field = np.stack([4 * np.sin(xx / 17) * np.cos(yy / 23), 3 * np.cos(xx / 29) + 0.02 * yy])
    angle = np.deg2rad(10)
    affine = np.array([[np.cos(angle), -np.sin(angle), 5.0], [np.sin(angle), np.cos(angle), -3.0]]) * [[1.1], [1.1]]
    t = Transform(affine, field, fixed_scale=(0.25, 0.25), moving_scale=(0.5, 0.5))
    p_full = np.random.default_rng(0).uniform([40, 40], [360, 280], size=(200, 2))
    q_full = t.fixed_to_moving(p_full)
    back = t.moving_to_fixed(q_full)
    assert np.abs(back - p_full).max() < 0.01 * 4       # below 0.01 working px (4 full-res px each)
    # the forward map is the composition written in the module docstring
    p = (p_full + 0.5) * 0.25 - 0.5
    r = p + sample_field(field, p)
    q = r @ affine[:, :2].T + affine[:, 2]
    np.testing.assert_allclose(q_full, (q + 0.5) / 0.5 - 0.5)


def test_deformable_check_keeps_a_field_that_helps_and_rejects_one_that_hurts():
    """The landmark-free check after the deformable step: the true shift raises the pair's own RMS local
    NCC and is kept; a field that tears the alignment apart lowers it and is not."""
    from scipy import ndimage

    from srnet_core.registration.data import PairStack
    from srnet_core.registration.stages import deformable_check
    rng = np.random.default_rng(0)
    fixed = ndimage.gaussian_filter(rng.random((96, 96)), 2)
    fixed = ((fixed - fixed.min()) / (fixed.max() - fixed.min())).astype(np.float32)   # a density's range
    moving = np.roll(fixed, (0, 3), axis=(0, 1))                  # moving(p + (3, 0)) = fixed(p)
    stack = PairStack(fixed[None], moving[None], None, None, np.ones((96, 96), bool), moving[None],
                      np.eye(3)[:2], (1.0, 1.0), (1.0, 1.0), (96, 96), (96, 96), (96, 96))
    helps = np.zeros((2, 96, 96), np.float32)
    helps[0] = 3.0
    good = deformable_check(stack, helps)
    assert good["kept"] and good["after"] > good["before"] + 0.3, good
    hurts = rng.normal(0, 4, size=(2, 96, 96)).astype(np.float32)
    bad = deformable_check(stack, hurts)
    assert not bad["kept"] and bad["after"] < bad["before"], bad
