"""Alternative registration backbones (backbones.py): DIRNet's exact B-spline upsampling, FlowNet-Simple,
shapes at odd sizes in 2D and 3D, near-identity start, build_network dispatch, and a short training run."""

import pytest
import torch
import torch.nn.functional as F

from srnet_core.registration.backbones import BSplineUpsample, DIRNet, FlowNetSimple, cubic_bspline
from srnet_core.registration.network import RegistrationUNet, RegNetConfig, build_network
from srnet_core.registration.warp import SpatialTransformer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is as fast, and on a loaded 2-core machine two
    OpenMP threads competing with another process made the training test ~100x slower (28 s vs 0.2 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BACKBONE_CLASSES = {"dirnet": DIRNet, "flownet": FlowNetSimple}
SIZES = {2: (37, 45), 3: (12, 17, 19)}


def _first_conv(net):
    return next(m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CLASSES))
@pytest.mark.parametrize("d", [2, 3])
def test_odd_sizes_give_full_size_near_identity_fields(backbone, d):
    torch.manual_seed(0)
    net = build_network(RegNetConfig(spatial_dims=d, in_channels=4, backbone=backbone))
    assert type(net) is BACKBONE_CLASSES[backbone]
    x = torch.randn(2, 4, *SIZES[d])
    flow = net(x)
    assert flow.shape == (2, d) + SIZES[d]
    assert torch.isfinite(flow).all()
    assert 0 < flow.abs().max() < 1e-2                # near the identity, but not a dead constant zero
    with pytest.raises(ValueError, match=r"expected \(N, 4"):
        net(x[:, :3])
    with pytest.raises(ValueError, match="expected"):
        net(x[0])


def test_build_network_dispatch_and_config_errors():
    assert type(build_network(RegNetConfig())) is RegistrationUNet
    with pytest.raises(ValueError, match="unknown backbone"):
        build_network(RegNetConfig(backbone="voxelmorph2"))
    for spacing in (0, 1, 6, 12, -8, 2.0):
        with pytest.raises(ValueError, match="power of 2"):
            build_network(RegNetConfig(backbone="dirnet", grid_spacing=spacing))
    with pytest.raises(ValueError, match="downsampling stages"):     # 2^5 needs 5 stages, encoder has 4
        build_network(RegNetConfig(backbone="dirnet", grid_spacing=32))
    with pytest.raises(ValueError, match="spatial_dims"):
        build_network(RegNetConfig(spatial_dims=1, backbone="flownet"))
    with pytest.raises(ValueError, match="at least 3 encoder"):
        build_network(RegNetConfig(backbone="flownet", encoder=[16, 32]))


def test_dirnet_control_grid_and_spacing():
    net = DIRNet(RegNetConfig(grid_spacing=4, encoder=[8, 8, 8]))
    coeffs = net.coefficients(torch.randn(1, 2, 37, 45))
    # padded to 40 x 48 -> 10 x 12 cells, plus two control points beyond each edge
    assert coeffs.shape == (1, 2, 14, 16)
    assert net(torch.randn(1, 2, 37, 45)).shape == (1, 2, 37, 45)
    positions = BSplineUpsample.control_points(14, 4)
    assert positions[2].item() == 1.5 and positions[-3].item() == 37.5    # first/last cell centres
    assert positions[0].item() == -6.5 and positions[-1].item() == 45.5


def test_cubic_bspline_values():
    t = torch.tensor([0.0, 0.5, 1.0, -1.0, 1.5, 2.0, 2.5, -3.0])
    expected = torch.tensor([2 / 3, 23 / 48, 1 / 6, 1 / 6, 1 / 48, 0.0, 0.0, 0.0])
    assert torch.allclose(cubic_bspline(t), expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("d,spacing", [(2, 2), (2, 8), (3, 4)])
def test_bspline_partition_of_unity_and_linear_reproduction(d, spacing):
    up = BSplineUpsample(d, spacing).double()
    grid = (5, 6, 7)[:d]                                         # control points per axis
    size = tuple((k - 4) * spacing for k in grid)                # the pixels they cover
    const = up(torch.full((1, 2) + grid, 3.25, dtype=torch.float64))
    assert const.shape == (1, 2) + size
    assert torch.allclose(const, torch.full_like(const, 3.25), rtol=0, atol=1e-12)
    const32 = BSplineUpsample(d, spacing)(torch.full((1, 2) + grid, 3.25))     # the float32 buffer path
    assert const32.dtype == torch.float32 and (const32 - 3.25).abs().max() < 1e-6

    # coefficients that are a linear function of the control-point positions give that function
    pos = [BSplineUpsample.control_points(k, spacing) for k in grid]
    cp = torch.meshgrid(*pos, indexing="ij")
    px = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in size], indexing="ij")
    slopes = (0.7, -1.3, 0.4)[:d]

    def linear(axes):
        return 2.0 + sum(a * x for a, x in zip(slopes, axes))

    dense = up(linear(cp)[None, None])[0, 0]
    assert torch.allclose(dense, linear(px), rtol=0, atol=1e-9)
    # a smaller output is the same field cropped; more pixels than the control points cover is refused
    assert torch.allclose(up(linear(cp)[None, None], size=tuple(n - 1 for n in size))[0, 0],
                          linear(px)[tuple(slice(0, n - 1) for n in size)], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="cover at most"):
        up(linear(cp)[None, None], size=tuple(n + 1 for n in size))


def test_bspline_matches_the_direct_sum():
    """u(p) = sum_k c_k B3((py - yk) / s) B3((px - xk) / s), evaluated term by term."""
    s, grid = 4, (6, 7)
    up = BSplineUpsample(2, s).double()
    coeffs = torch.randn(2, 3, *grid, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dense = up(coeffs)
    ys, xs = (BSplineUpsample.control_points(k, s) for k in grid)
    py = torch.arange((grid[0] - 4) * s, dtype=torch.float64)
    px = torch.arange((grid[1] - 4) * s, dtype=torch.float64)
    by = cubic_bspline((py[:, None] - ys[None]) / s)        # (H, Ky)
    bx = cubic_bspline((px[:, None] - xs[None]) / s)        # (W, Kx)
    direct = torch.einsum("hk,nckl,wl->nchw", by, coeffs, bx)
    assert dense.shape == direct.shape == (2, 3, 8, 12)
    assert torch.allclose(dense, direct, rtol=0, atol=1e-12)
    # every one of the 4 border control points per axis matters somewhere in the image
    assert (by[:, [0, 1, -2, -1]].amax(dim=0) > 0).all() and (bx[:, [0, 1, -2, -1]].amax(dim=0) > 0).all()


def test_flownet_pyramid_units_and_levels():
    torch.manual_seed(0)
    net = FlowNetSimple(RegNetConfig(encoder=[8, 8, 16, 16], decoder=[16, 8, 8]))
    assert len(net.upconvs) == 2 and len(net.extra) == 1 and len(net.predict) == 3
    for p in net.predict:                        # make the predictions large enough to compare
        torch.nn.init.normal_(p.weight, std=0.05)
    flow, pyramid = net(torch.randn(1, 2, 37, 45), return_pyramid=True)
    assert [tuple(p.shape[2:]) for p in pyramid] == [(3, 3), (5, 6), (10, 12)]   # 1/16, 1/8, 1/4
    # the final field is the 1/4 prediction interpolated in input-pixel units, not rescaled
    padded = F.interpolate(pyramid[-1], scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(flow, padded[..., :37, :45], atol=1e-6)
    assert flow.abs().mean() > 1e-2


def _blob_pair(shift=2, n=32):
    yy, xx = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                            indexing="ij")
    blob = torch.exp(-((xx - 15.5) ** 2 + (yy - 15.5) ** 2) / (2 * 4.0 ** 2))
    moved = torch.exp(-((xx - 15.5 - shift) ** 2 + (yy - 15.5) ** 2) / (2 * 4.0 ** 2))
    return blob[None, None], moved[None, None]


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CLASSES))
def test_a_few_adam_steps_register_a_shifted_blob(backbone):
    torch.manual_seed(0)
    fixed, moving = _blob_pair()
    net = build_network(RegNetConfig(backbone=backbone))
    stn = SpatialTransformer(2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.cat([fixed, moving], dim=1)
    losses = []
    for _ in range(40):
        flow = net(x)
        loss = F.mse_loss(stn(moving, flow), fixed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], losses          # seeds 0-2: 0.0003-0.006
    # the moving blob sits 2 px to the right: at the blob's centre u_x ~ +2 (seeds 0-2: 1.92-2.23), u_y ~ 0
    centre = net(x)[0, :, 12:20, 12:20].mean(dim=(1, 2))
    assert 1.5 < centre[0].item() < 2.5 and abs(centre[1].item()) < 0.25


@pytest.mark.parametrize("backbone", sorted(BACKBONE_CLASSES))
@pytest.mark.parametrize("d", [2, 3])
def test_gradients_reach_the_first_layer(backbone, d):
    torch.manual_seed(0)
    net = build_network(RegNetConfig(spatial_dims=d, backbone=backbone, encoder=[8, 8, 8, 8],
                                     decoder=[8, 8, 8]))
    shape = (16, 20) if d == 2 else (9, 12, 10)
    fixed, moving = torch.rand(1, 1, *shape), torch.rand(1, 1, *shape)
    flow = net(torch.cat([fixed, moving], dim=1))
    F.mse_loss(SpatialTransformer(d)(moving, flow), fixed).backward()
    grad = _first_conv(net).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().max() > 0
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    assert all(p.grad is not None for p in net.parameters())
