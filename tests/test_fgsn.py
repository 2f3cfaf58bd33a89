import numpy as np
import pytest
import torch

from srnet_core.errors import InputError
from srnet_core.segmentation.fgsn import (FGSN, FGSNConfig, downsample_for_features, load_checkpoint,
                                          normalise_image, save_checkpoint, tiled_features, upsample_linear)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = FGSN(FGSNConfig(base_channels=8, feature_channels=6))
    m.eval()
    return m


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(203, 317, 3)).astype(np.uint8)     # odd sizes on purpose
    return normalise_image(rgb)


def test_network_shapes_and_checks(model):
    x = torch.zeros(2, 3, 64, 48)
    assert model(x).shape == (2, 5, 64, 48)
    assert model.multiscale(x).shape == (2, model.config.raw_feature_channels, 64, 48)
    assert model.config.raw_feature_channels == 2 * (8 + 16 + 32)
    with pytest.raises(ValueError, match="multiples of 8"):
        model(torch.zeros(1, 3, 60, 48))
    with pytest.raises(ValueError, match="expects"):
        model(torch.zeros(1, 4, 64, 64))


def test_tiled_features_equal_one_pass_on_odd_sizes(model, image):
    one_pass = tiled_features(model, image, None, tile=1024, margin=64)
    tiled = tiled_features(model, image, None, tile=64, margin=64)
    assert one_pass.shape == (203, 317, model.config.raw_feature_channels)
    # tiles sit on the 8-px pooling grid and their margin exceeds the receptive field: identical
    # up to float rounding (tolerance 1e-5 on values of order 1)
    assert np.abs(one_pass - tiled).max() < 1e-5
    assert np.abs(one_pass).max() > 0.1


def test_projection_per_level_equals_project_after_upsampling(model, image):
    r = model.config.raw_feature_channels
    rng = np.random.default_rng(1)
    projection = (rng.normal(0, 0.1, r).astype(np.float32), rng.normal(size=(6, r)).astype(np.float32))
    raw = tiled_features(model, image, None, tile=128, margin=64)
    expected = np.einsum("hwr,cr->hwc", raw - projection[0], projection[1])
    got = tiled_features(model, image, projection, tile=128, margin=64)
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()


def test_rank_normalisation_ignores_monotonic_channel_changes():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(50, 60, 3)).astype(np.uint8)
    changed = rgb.copy()
    changed[..., 0] = np.clip(0.6 * rgb[..., 0] ** 1.0 + 40, 0, 255).astype(np.uint8)   # monotonic, no ties broken
    lut = np.clip(255 * (np.arange(256) / 255) ** 0.7, 0, 255).astype(np.uint8)
    changed[..., 1] = lut[rgb[..., 1]]
    a, b = normalise_image(rgb), normalise_image(changed)
    # where the change kept grey levels distinct the result is identical
    np.testing.assert_allclose(a[2], b[2])
    assert np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1] > 0.999
    assert abs(a.mean()) < 0.05 and abs(a.std() - 1) < 0.05


def test_upsample_linear_is_centre_aligned():
    small = np.arange(10, dtype=np.float32)[None, :, None].repeat(4, axis=0)   # value = column index
    out = upsample_linear(small, 2, 8, 20)
    expected = np.clip((np.arange(20) + 0.5) / 2 - 0.5, 0, 9)
    np.testing.assert_allclose(out[0, :, 0], expected, atol=1e-6)


def test_downsample_for_features_keeps_geometry():
    rgb = np.zeros((9, 11, 3), np.uint8)
    rgb[:, 4:6] = 200
    mask = np.zeros((9, 11), bool)
    mask[:6] = True
    small, smask = downsample_for_features(rgb, mask, 2)
    assert small.shape == (5, 6, 3) and smask.shape == (5, 6)
    assert (small[:, 2] == 200).all() and (small[:, 1] == 0).all()
    assert smask[:3].all() and not smask[3:].any()


def test_checkpoint_round_trip_with_weights_only(tmp_path, model):
    r = model.config.raw_feature_channels
    projection = (np.zeros(r, np.float32), np.eye(6, r, dtype=np.float32))
    checksum = save_checkpoint(tmp_path / "m.pt", model, projection, extra={"source": "test"})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["config"] == {"in_channels": 3, "base_channels": 8, "n_classes": 5, "feature_channels": 6}
    loaded, proj, checksum2 = load_checkpoint(tmp_path / "m.pt")
    assert checksum == checksum2 and len(checksum) == 64
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    np.testing.assert_array_equal(proj[1], projection[1])
    (tmp_path / "bad.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:1000])
    with pytest.raises(InputError, match="not a readable FGSN checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
