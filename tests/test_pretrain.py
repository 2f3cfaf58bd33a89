import numpy as np
import pytest
import torch
from PIL import Image

from srnet_core.errors import InputError
from srnet_core.segmentation import pretrain
from srnet_core.segmentation.fgsn import FGSNConfig
from srnet_core.segmentation.pretrain import (PretrainSettings, glas_pairs, load_glas, pseudo_labels,
                                              train_fgsn)


def _glas_image(rng, size=96):
    """Pink stroma with purple 'glands' (ellipses with a pale lumen); annotation = gland instance ids."""
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.zeros((size, size, 3)) + np.array([235, 170, 200])
    anno = np.zeros((size, size), np.uint8)
    for i in range(1, rng.integers(2, 5)):
        cy, cx = rng.uniform(15, size - 15, 2)
        ry, rx = rng.uniform(7, 14, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        rgb[inside] = [120, 60, 150]
        rgb[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 0.2] = [245, 235, 245]
        anno[inside] = i
    rgb += rng.normal(0, 12, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), anno


@pytest.fixture
def glas_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("testA", 3), ("testB", 2)):
        for i in range(1, n + 1):
            rgb, anno = _glas_image(rng)
            Image.fromarray(rgb).save(tmp_path / f"{split}_{i}.bmp")
            Image.fromarray(anno).save(tmp_path / f"{split}_{i}_anno.bmp")
    (tmp_path / "Grade.csv").write_text("name,grade\n")     # GlaS ships one; ignored
    return tmp_path


def test_glas_layout_is_read(glas_dir):
    assert [p[0].name for p in glas_pairs(glas_dir)] == [f"train_{i}.bmp" for i in range(1, 7)]
    assert len(glas_pairs(glas_dir, ("testA", "testB"))) == 5
    samples = load_glas(glas_dir)
    assert len(samples) == 6
    s = samples[0]
    assert s.rgb.shape == (96, 96, 3) and s.labels.shape == (96, 96)
    assert set(np.unique(s.labels)) == {0, 1}                     # instances -> gland vs background
    anno = np.asarray(Image.open(glas_dir / "train_1_anno.bmp"))
    assert ((anno > 0) == (s.labels == 1)).all()


def test_glas_errors(tmp_path, glas_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no GlaS image/annotation pairs"):
        glas_pairs(tmp_path / "empty")
    with pytest.raises(InputError, match="GlaS folder not found"):
        glas_pairs(tmp_path / "absent")
    (glas_dir / "train_3.bmp").unlink()
    with pytest.raises(InputError, match="annotation without its image"):
        glas_pairs(glas_dir)


def test_supervised_pretraining_learns_glands(tmp_path, glas_dir):
    settings = PretrainSettings(iterations=120, batch_size=6, crop=64, lr=3e-3, seed=0)
    model, history = train_fgsn(load_glas(glas_dir), 2, settings, tmp_path / "work",
                                FGSNConfig(base_channels=8))
    assert history[-1]["loss"] < history[0]["loss"]
    test = load_glas(glas_dir, ("testA",))
    from srnet_core.segmentation.fgsn import normalise_image
    correct = total = 0
    with torch.no_grad():
        for s in test:
            pred = model(torch.from_numpy(normalise_image(s.rgb))[None]).argmax(1)[0].numpy()
            correct += (pred == s.labels).sum()
            total += s.labels.size
    assert correct / total > 0.9, f"held-out pixel accuracy {correct / total:.3f}"


def test_pseudo_labels_number_classes_by_density():
    rgb = np.full((60, 60, 3), 245, np.uint8)
    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:50] = True
    rgb[10:50, 10:23] = (200, 150, 190)       # pale
    rgb[10:50, 23:36] = (150, 90, 160)        # medium
    rgb[10:50, 36:50] = (70, 30, 110)         # dark
    labels = pseudo_labels(rgb, mask, 3)
    assert (labels[~mask] == 0).all()
    assert (labels[20, 15], labels[20, 30], labels[20, 45]) == (1, 2, 3)


def test_killed_pretraining_resumes_exactly(tmp_path, glas_dir, monkeypatch):
    samples = load_glas(glas_dir)
    settings = PretrainSettings(iterations=12, batch_size=2, crop=32, seed=3, checkpoint_every=5)
    config = FGSNConfig(base_channels=4)
    reference, _ = train_fgsn(samples, 2, settings, tmp_path / "ref", config)

    real_batch = pretrain._batch
    calls = {"n": 0}

    def dying_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("killed")     # like a SIGINT/walltime stop mid-training
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(pretrain, "_batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        train_fgsn(samples, 2, settings, tmp_path / "run", FGSNConfig(base_channels=4))
    assert (tmp_path / "run" / "state.pt").exists()
    monkeypatch.setattr(pretrain, "_batch", real_batch)
    resumed, history = train_fgsn(samples, 2, settings, tmp_path / "run", FGSNConfig(base_channels=4))
    assert [h["iteration"] for h in history] == list(range(1, 13))
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), name
