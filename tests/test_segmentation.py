"""Segmentation stages end to end on real tissue, and the HDF5 files' refusals."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from srnet_core.demo import HE_A, KnownTransform, cmu1_svs_path, render_moving, restain, write_image
from srnet_core.errors import InputError
from srnet_core.h5io import (features_writer, read_codebook, read_features, read_prepared, read_segmentation,
                             write_prepared)
from srnet_core.prepare import prepare_image
from srnet_core.segmentation.feature_stages import extract_stage, pretrain_stage
from srnet_core.segmentation.stages import codebook_stage, segment_stage
from srnet_core.slides import read_working


def small_warp(w, h):
    """4 degrees, 2 % scale and a smooth bump: 'slightly warped'."""
    angle = np.deg2rad(4)
    lin = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * 1.02
    centre = np.array([w / 2, h / 2])
    return KnownTransform(np.hstack([lin, (centre - lin @ centre)[:, None]]), np.array([[0.4 * w, 0.5 * h]]),
                          np.array([[0.02 * w, 0.01 * h]]), 0.25 * min(w, h))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The real CMU-1 H&E slide at the demo's working size and a re-stained (HE_A), warped copy, through
    all four stages with the default settings."""
    torch.set_num_threads(2)
    d = tmp_path_factory.mktemp("seg")
    fixed, _, _ = read_working(cmu1_svs_path(), max_side=1024)
    h, w = fixed.shape[:2]
    warp = small_warp(w, h)
    write_image(d / "fixed.png", fixed)
    write_image(d / "moving.png", render_moving(restain(fixed, HE_A), warp, (w, h)))
    for name in ("fixed", "moving"):
        prepare_image(d / f"{name}.png", d / f"{name}.h5", max_side=1024)
    prepared = [str(d / "fixed.h5"), str(d / "moving.h5")]
    pretrain_stage(prepared, str(d / "model.pt"), str(d / "loss.csv"))
    for name in ("fixed", "moving"):
        extract_stage(str(d / f"{name}.h5"), str(d / "model.pt"), str(d / f"{name}.feat.h5"), name)
    features = [str(d / "fixed.feat.h5"), str(d / "moving.feat.h5")]
    k = codebook_stage(features, prepared, "test", str(d / "codebook.h5"), str(d / "gap.csv"), str(d / "gap.png"))
    for name in ("fixed", "moving"):
        segment_stage(str(d / f"{name}.feat.h5"), str(d / f"{name}.h5"), str(d / "codebook.h5"), "test", name,
                      str(d / f"{name}.seg.h5"), str(d / f"{name}.seg.png"))
    return {"dir": d, "warp": warp, "size": (w, h), "k": k}


def test_labels_survive_restaining_and_warping(pipeline):
    d, warp, (w, h) = pipeline["dir"], pipeline["warp"], pipeline["size"]
    fixed_labels, fixed_map, attrs = read_segmentation(d / "fixed.seg.h5")
    moving_labels, _, _ = read_segmentation(d / "moving.seg.h5")
    assert fixed_labels.shape == (h, w) and fixed_map.shape == (pipeline["k"], h, w)
    yy, xx = np.mgrid[0:h, 0:w]
    q = np.rint(warp.fixed_to_moving(np.stack([xx.ravel(), yy.ravel()], 1).astype(float))).astype(int)
    inside = (q[:, 0] >= 0) & (q[:, 0] < w) & (q[:, 1] >= 0) & (q[:, 1] < h)
    inside &= read_prepared(d / "fixed.h5").mask.ravel()
    a = fixed_labels.ravel()[inside]
    b = moving_labels[q[inside, 1], q[inside, 0]]
    ari = adjusted_rand_score(a, b)
    print(f"\nstain robustness (CMU-1 H&E vs HE_A re-stain, warped back): k = {pipeline['k']}, "
          f"ARI = {ari:.3f}, label agreement = {np.mean(a == b):.3f}")
    assert ari >= 0.7, f"ARI {ari:.3f} (k = {pipeline['k']})"


def test_codebook_and_gap_outputs(pipeline):
    d = pipeline["dir"]
    centres, attrs = read_codebook(d / "codebook.h5", dataset="test")
    assert centres.shape == (pipeline["k"], 16) and attrs["k"] == pipeline["k"]
    gap = (d / "gap.csv").read_text().splitlines()
    assert gap[0] == "k,log_w,log_w_ref,gap,sd,s" and len(gap) == 1 + 5      # candidates 6..2
    assert (d / "gap.png").stat().st_size > 1000 and (d / "fixed.seg.png").stat().st_size > 1000
    with pytest.raises(InputError, match="fitted on dataset 'test', not 'other'"):
        read_codebook(d / "codebook.h5", dataset="other")
    with pytest.raises(InputError, match="fitted on dataset"):
        segment_stage(str(d / "fixed.feat.h5"), str(d / "fixed.h5"), str(d / "codebook.h5"), "other", "fixed",
                      str(d / "x.h5"), str(d / "x.png"))
    assert not (d / "x.h5").exists()


def test_features_file_checks(pipeline, tmp_path):
    d = pipeline["dir"]
    features, attrs = read_features(d / "fixed.feat.h5")
    assert features.shape[2] == 16 and attrs["feature_stride"] == 2 and len(attrs["model_sha256"]) == 64
    with pytest.raises(InputError, match="made by model"):
        read_features(d / "fixed.feat.h5", model_sha256="0" * 64)
    with pytest.raises(InputError, match="have 16 channels, expected 8"):
        read_features(d / "fixed.feat.h5", channels=8)
    bad = tmp_path / "nan.h5"
    with features_writer(bad, (4, 5, 3), {"model_sha256": "x"}) as data:
        values = np.ones((4, 5, 3), np.float16)
        values[1, 2, 0] = np.nan
        data[...] = values
    with pytest.raises(InputError, match="1 NaN or infinite values"):
        read_features(bad)
    ok = tmp_path / "ok.h5"
    original = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    with features_writer(ok, (4, 5, 3), {"model_sha256": "abc"}) as data:
        data[...] = original
    back, attrs = read_features(ok, model_sha256="abc", channels=3)
    np.testing.assert_allclose(back, original, rtol=1e-3, atol=1e-3)     # float16 storage
    assert attrs["channels"] == 3


def test_image_without_tissue_is_refused(pipeline, tmp_path):
    d = pipeline["dir"]
    empty = tmp_path / "empty.h5"
    write_prepared(empty, np.full((32, 32, 3), 250, np.uint8), np.zeros((32, 32), bool), np.zeros((0, 4)),
                   {"source": "blank.png", "scale_x": 1.0, "scale_y": 1.0, "full_width": 32, "full_height": 32},
                   {})
    with pytest.raises(InputError, match="no tissue"):
        extract_stage(str(empty), str(d / "model.pt"), str(tmp_path / "f.h5"), "empty")
    assert not (tmp_path / "f.h5").exists()
