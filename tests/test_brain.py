"""The brain track's inputs and stages: volumes, slices, simulated deformations, manual maps, Table 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from srnet_core.brain.slices import (SliceSettings, make_slices, random_field, read_slices, read_volume,
                                     warp_backward, write_slices)
from srnet_core.errors import InputError

nib = pytest.importorskip("nibabel")


def _write(path, data, zooms=(1.0, 1.0, 1.0)):
    affine = np.diag(list(zooms) + [1.0])
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def _phantom(shape=(40, 48, 12)):
    """A brain-like volume: an ellipsoid of 3 nested label shells, intensity set by label."""
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(x ** 2 + (y / 0.9) ** 2 + (z / 1.5) ** 2)
    labels = np.zeros(shape, np.int16)
    labels[r < 0.85] = 3
    labels[r < 0.6] = 7
    labels[r < 0.3] = 12
    labels[(r < 0.6) & (x > 0.2)] = 9
    image = np.select([labels == 3, labels == 7, labels == 9, labels == 12], [300.0, 600.0, 800.0, 450.0], 0.0)
    return image.astype(np.float32), labels


def test_volume_reading_spacing_and_slices(tmp_path):
    image, labels = _phantom()
    ip = _write(tmp_path / "t1.nii.gz", image, zooms=(1.0, 1.5, 3.0))
    lp = _write(tmp_path / "aseg.nii.gz", labels, zooms=(1.0, 1.5, 3.0))
    vol = read_volume(ip, lp)
    assert vol.spacing == (1.0, 1.5, 3.0)
    settings = SliceSettings(axis=2, start=3, stop=9, step=2, zoom=2, per_slice=2, magnitude_mm=4.0,
                             smoothness_mm=6.0, validation=0.0, test=0.34)
    slices = make_slices([vol], settings)
    # axial slices of a (40, 48) plane, rotated (48 rows, 40 cols), then 2x block zoom -> (24, 20);
    # rows run along the volume's y (1.5 mm), columns along x (1.0 mm), both doubled
    assert slices.fixed.shape == (6, 24, 20)
    assert slices.spacing == (3.0, 2.0)
    assert list(slices.slice) == [3, 3, 5, 5, 7, 7]
    assert np.bincount(slices.split, minlength=3).tolist() == [4, 0, 2]
    # the two moving images of a slice share its split and its fixed image
    assert slices.split[0] == slices.split[1] and np.array_equal(slices.fixed[0], slices.fixed[1])
    assert set(np.unique(slices.fixed_labels)) <= {0, 3, 7, 9, 12}
    # the largest simulated displacement is the configured one, in mm
    v = slices.field[0]
    length_mm = np.sqrt((v[0] * slices.spacing[1]) ** 2 + (v[1] * slices.spacing[0]) ** 2)
    assert length_mm.max() == pytest.approx(4.0, rel=1e-5)
    # deterministic, and it survives the file round trip
    again = make_slices([read_volume(ip, lp)], settings)
    assert np.array_equal(again.moving, slices.moving)
    write_slices(tmp_path / "s.h5", slices)
    back = read_slices(tmp_path / "s.h5")
    assert np.array_equal(back.moving_labels, slices.moving_labels) and back.spacing == (3.0, 2.0)
    assert back.pair_id(5) == "v0_s007_d1"


def test_deformation_of_labels_and_image_agree():
    """Image = a lookup of its labels; warping both by the same field gives warped image == lookup of
    the warped labels wherever the sample point is not within a pixel of a label boundary."""
    rng = np.random.default_rng(3)
    labels = np.zeros((64, 56), np.int32)
    yy, xx = np.mgrid[0:64, 0:56]
    labels[(yy - 32) ** 2 / 26 ** 2 + (xx - 28) ** 2 / 22 ** 2 < 1] = 1
    labels[(yy - 28) ** 2 / 12 ** 2 + (xx - 24) ** 2 / 10 ** 2 < 1] = 2
    labels[(yy > 34) & (yy < 46) & (xx > 26) & (xx < 40)] = 3
    lookup = np.array([0.0, 0.3, 0.6, 0.9], np.float32)
    image = lookup[labels]
    v = random_field(labels.shape, (1.0, 1.0), magnitude_mm=6.0, smoothness_mm=5.0, rng=rng)
    warped_image = warp_backward(image, v, order=1)
    warped_labels = warp_backward(labels, v, order=0)
    assert np.abs(v).max() > 3                                    # a real deformation, not a no-op
    assert (warped_labels != labels).mean() > 0.05
    # pixels whose sample point has only one label within one pixel: the bilinear value is exact
    from scipy import ndimage
    same = np.ones(labels.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= np.roll(labels, (dy, dx), axis=(0, 1)) == labels
    interior = warp_backward(same.astype(np.int32), v, order=0).astype(bool)
    interior &= ndimage.binary_erosion(np.ones(labels.shape, bool), iterations=8)   # away from the border
    assert interior.sum() > 1200
    np.testing.assert_allclose(warped_image[interior], lookup[warped_labels[interior]], atol=1e-5)


def test_bad_volumes_are_clear_errors(tmp_path):
    image, labels = _phantom()
    ip = _write(tmp_path / "t1.nii.gz", image)
    with pytest.raises(InputError, match="missing.nii.gz: volume not found"):
        read_volume(str(tmp_path / "missing.nii.gz"))
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a volume")
    with pytest.raises(InputError, match="broken.nii.gz: not a readable NIfTI/MGZ volume"):
        read_volume(str(broken))
    small = _write(tmp_path / "small.nii.gz", labels[:-2])
    with pytest.raises(InputError, match="small.nii.gz: label volume is"):
        read_volume(ip, small)
    fractional = _write(tmp_path / "frac.nii.gz", labels.astype(np.float32) + 0.25)
    with pytest.raises(InputError, match="frac.nii.gz: label volume holds non-integer values"):
        read_volume(ip, fractional)
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 1.0, 1.0, 1.0])), str(shifted))
    with pytest.raises(InputError, match="not on its image's voxel grid"):
        read_volume(ip, str(shifted))
    with pytest.raises(ValueError, match="no slice in range"):
        make_slices([read_volume(ip)], SliceSettings(start=100, stop=120))


def test_manual_maps_are_one_hot_over_training_labels():
    from srnet_core.brain.stages import one_hot
    labels = np.array([[0, 3, 3], [9, 4, 0]])
    maps = one_hot(labels, np.array([0, 3, 9]))
    assert maps.shape == (3, 2, 3) and maps.dtype == np.uint8
    assert maps[0].tolist() == [[1, 0, 0], [0, 0, 1]]
    assert maps[1].tolist() == [[0, 1, 1], [0, 0, 0]]
    assert maps[2].tolist() == [[0, 0, 0], [1, 0, 0]]
    assert maps[:, 1, 1].sum() == 0                  # label 4 never seen in training: no channel


def test_brain_method_settings_are_checked():
    from srnet_core.brain.stages import BrainMethod
    with pytest.raises(ValueError, match="maps: none needs lambda_seg: 0"):
        BrainMethod(maps="none").check("x")
    with pytest.raises(ValueError, match="manual labels are a training signal only"):
        BrainMethod(maps="manual", map_inputs=True).check("x")
    BrainMethod(maps="manual", map_inputs=False).check("x")


def test_table2_layout_from_per_pair_scores():
    from srnet_core.brain.stages import pair_summary, table2, table2_markdown
    rows = []
    for method, dices, hd, sec in (("before", [0.5, 0.7], [4.0, 2.0], 0.0), ("srnet", [0.8, 0.9], [2.0, 1.0], 0.01),
                                   ("elastix", [0.7, 0.8], [3.0, 2.0], 1.5)):
        for pair in ("a", "b"):
            for label, d in zip((1, 2), dices):
                rows.append({"pair_id": pair, "method": method, "label": label, "dice": d,
                             "hd95_mm": hd[label - 1] + (pair == "b"), "seconds": sec,
                             "device": {"before": "", "srnet": "cpu (test)", "elastix": "cpu (2 threads)"}[method]})
    pairs = pair_summary(pd.DataFrame(rows))
    # before: Dice (0.5 + 0.7) / 2 = 60 %, HD95 pair a (4 + 2) / 2 = 3, pair b (5 + 3) / 2 = 4 -> 3.5
    table = table2(pairs, ["before", "srnet"]).set_index("method")
    assert table.at["before", "dice_percent"] == pytest.approx(60.0)
    assert table.at["before", "hd95_mm"] == pytest.approx(3.5)
    assert table.at["before", "hd95_mm_std"] == pytest.approx(0.5)
    assert table.at["srnet", "dice_percent"] == pytest.approx(85.0)
    assert table.at["srnet", "hd95_mm"] == pytest.approx(2.0)
    assert np.isnan(table.at["before", "seconds"]) and table.at["srnet", "seconds"] == pytest.approx(0.01)
    md = table2_markdown(table2(pairs, ["before", "srnet", "elastix"]), "T", "test")
    assert "| DM (%) | 60.0 ± 0.0 | 85.0 ± 0.0 | 75.0 ± 0.0 |" in md
    assert "| HD95 (mm) | 3.50 ± 0.50 | 2.00 ± 0.50 | 3.00 ± 0.50 |" in md
    assert "| Time (s) | – | 0.0100 | 1.5000 |" in md
    # each timed column says where and what was timed: networks and baselines are timed differently
    assert "srnet on cpu (test) (forward passes (brain.evaluate.reflections) and warping, model load excluded)" in md
    assert "elastix on cpu (2 threads) (the tool's registration" in md


def test_subjects_folder_layout_and_mgz(tmp_path):
    """A FreeSurfer-style SUBJECTS_DIR: <subject>/mri/brain.mgz with aseg.mgz beside it (MGZ read)."""
    from srnet_core.brain.slices import find_volumes
    image, labels = _phantom()
    for subject in ("OAS1_0002", "OAS1_0001"):
        mri = tmp_path / subject / "mri"
        mri.mkdir(parents=True)
        nib.save(nib.MGHImage(image, np.eye(4)), str(mri / "brain.mgz"))
        nib.save(nib.MGHImage(labels.astype(np.int32), np.eye(4)), str(mri / "aseg.mgz"))
    found = find_volumes(str(tmp_path), "*/mri/brain.mgz", "aseg.mgz")
    assert [v["image"] for v in found] == [str(tmp_path / s / "mri" / "brain.mgz") for s in ("OAS1_0001", "OAS1_0002")]
    volumes = [read_volume(v["image"], v["labels"]) for v in found]
    assert np.array_equal(volumes[0].labels, labels) and volumes[0].image.max() == 800
    slices = make_slices(volumes, SliceSettings(start=3, stop=9, step=3, zoom=1, per_slice=1, test=0.5,
                                                validation=0.0))
    assert sorted(set(slices.volume)) == [0, 1] and len(slices.fixed) == 4
    with pytest.raises(InputError, match="no volume matches"):
        find_volumes(str(tmp_path), "*/mri/T1.mgz")
    (tmp_path / "OAS1_0002" / "mri" / "aseg.mgz").unlink()
    with pytest.raises(InputError, match="aseg.mgz: label volume 'aseg.mgz' missing beside brain.mgz"):
        find_volumes(str(tmp_path), "*/mri/brain.mgz", "aseg.mgz")
