import numpy as np
import pytest

from srnet_core.errors import InputError
from srnet_core.h5io import read_prepared, read_prepared_attrs
from srnet_core.prepare import prepare_image


def test_prepare_real_birl_image_with_tiles(tmp_path, birl):
    src = birl / "lesions_/scale-5pc/Izd2-29-041-w35_HE.jpg"        # 890 x 733
    dest = tmp_path / "p.h5"
    prepare_image(src, dest, max_side=445, tile_size=64, tile_min_tissue=0.5)
    prepared = read_prepared(dest)
    assert prepared.image.shape == (366, 445, 3) and prepared.image.dtype == np.uint8
    assert prepared.full_size == (890, 733)
    assert prepared.scale == pytest.approx((0.5, 366 / 733))
    assert prepared.mask.shape == (366, 445) and 0.05 < prepared.mask.mean() < 0.95
    assert len(prepared.tiles) > 0
    for x, y, w, h in prepared.tiles:
        assert prepared.mask[y:y + h, x:x + w].mean() >= 0.5
    assert read_prepared_attrs(dest)["reader"] == "libvips"


def test_prepare_error_leaves_no_output(tmp_path):
    src = tmp_path / "blank.png"
    import pyvips
    pyvips.Image.new_from_array(np.full((300, 300, 3), 250, np.uint8)).pngsave(str(src))
    dest = tmp_path / "out" / "blank.h5"
    with pytest.raises(InputError, match="no tissue found"):
        prepare_image(src, dest, max_side=128)
    assert not dest.exists()
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_prepare_reports_dataset_stage_error(tmp_path):
    with pytest.raises(InputError, match="escapes the dataset root"):
        prepare_image(tmp_path / "../x.jpg", tmp_path / "x.h5", error="path '../x.jpg' escapes the dataset root /d")
    assert not (tmp_path / "x.h5").exists()


def test_reader_refuses_incomplete_file(tmp_path):
    import h5py
    path = tmp_path / "partial.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="incomplete or foreign"):
        read_prepared(path)
