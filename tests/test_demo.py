import numpy as np
import pandas as pd
import pytest

from srnet_core.datasets import read_cover_table
from srnet_core.demo import (SAMPLES, demo_files, make_demo_dataset, random_transform, render_moving)
from srnet_core.landmarks import read_landmarks
from srnet_core.slides import slide_info


def test_known_transform_inverts_exactly():
    rng = np.random.default_rng(5)
    t = random_transform(rng, (900, 700), (880, 720))
    q = rng.uniform([50, 50], [850, 650], size=(200, 2))
    p = t.moving_to_fixed(q)
    np.testing.assert_allclose(t.fixed_to_moving(p), q, atol=1e-8)


def test_separable_grid_evaluation_equals_the_pointwise_transform():
    """render_moving evaluates the Gaussian bumps separably on each block of rows."""
    rng = np.random.default_rng(3)
    t = random_transform(rng, (640, 480), (600, 500))
    xs, ys = np.arange(0, 640, 7.0), np.arange(100, 356, 5.0)
    qx, qy = np.meshgrid(xs, ys)
    pointwise = t.moving_to_fixed(np.stack([qx.ravel(), qy.ravel()], axis=1))
    np.testing.assert_allclose(t.moving_to_fixed_grid(xs, ys), pointwise, rtol=0, atol=1e-9)
    assert np.abs(t.elastic_grid(xs, ys)).max() > 1.0           # the elastic part is not negligible


def test_render_moving_follows_the_transform():
    rng = np.random.default_rng(1)
    fixed = np.full((300, 400, 3), 255, np.uint8)
    fixed[100:104, 200:204] = 0                                # a 4 px dark square centred at (201.5, 101.5)
    t = random_transform(rng, (420, 310), (400, 300))
    moving = render_moving(fixed, t, (420, 310))
    dark = 255.0 - moving.mean(axis=2)
    ys, xs = np.nonzero(dark > 1)
    w = dark[ys, xs]
    centre = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    expected = t.fixed_to_moving(np.array([[201.5, 101.5]]))[0]
    assert np.linalg.norm(centre - expected) < 0.3


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, seed=0)
    return out


def test_demo_dataset_is_anhir_shaped(demo_dir):
    table = pd.read_csv(demo_dir / "dataset.csv")
    anhir_columns = ["Unnamed: 0", "Image diagonal [pixels]", "Image size [pixels]", "Source image",
                     "Source landmarks", "Target image", "Target landmarks", "status"]
    assert list(table.columns) == anhir_columns
    pairs = read_cover_table(demo_dir / "dataset.csv", demo_dir)
    assert sorted(pairs["tissue"].unique()) == ["cmu1-he", "ihc-colon"]
    assert set(pairs["status"]) == {"training", "evaluation"}
    assert sorted(str(p.relative_to(demo_dir)) for p in demo_dir.rglob("*") if p.is_file()) == sorted(demo_files())
    readers = {slide_info(p).reader for p in pairs["moving_path"]} | {slide_info(p).reader for p in pairs["fixed_path"]}
    assert readers == {"openslide", "libvips"}
    svs = slide_info(demo_dir / "cmu1-he_1/scale-100pc/HE.svs")
    assert svs.vendor == "aperio"
    for rec in pairs.itertuples():
        info = slide_info(rec.fixed_path)
        assert (rec.table_height, rec.table_width) == (info.height, info.width)
        assert rec.table_diagonal == pytest.approx(np.hypot(info.width, info.height), abs=0.05)


def test_demo_landmarks_follow_the_known_transform(demo_dir):
    """Re-create each pair's transform from the spec and check the files against it (exact ground truth),
    and that every landmark sits inside its image."""
    for spec in SAMPLES:
        base = demo_dir / spec.sample / "scale-100pc"
        fixed_pts = read_landmarks(base / (spec.fixed.rsplit(".", 1)[0] + ".csv"))
        assert len(fixed_pts) == spec.n_landmarks
        fixed_info = slide_info(base / spec.fixed)
        for m in spec.movings:
            moving_pts = read_landmarks(base / (m.name.rsplit(".", 1)[0] + ".csv"))
            info = slide_info(base / m.name)
            rng = np.random.default_rng([0, m.seed])
            t = random_transform(rng, (info.width, info.height), (fixed_info.width, fixed_info.height))
            np.testing.assert_allclose(t.moving_to_fixed(moving_pts), fixed_pts, atol=1e-4)
            assert (moving_pts >= 0).all() and (moving_pts[:, 0] < info.width).all() and (moving_pts[:, 1] < info.height).all()


def test_demo_is_deterministic(demo_dir, tmp_path):
    make_demo_dataset(tmp_path, seed=0)
    for rel in demo_files():
        if rel.endswith(".csv"):
            assert (tmp_path / rel).read_text() == (demo_dir / rel).read_text(), rel
