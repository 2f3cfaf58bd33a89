"""srnet_core.brain.metrics: Dice, HD95 (MedPy definition), per-label tables, contour figure.

Every expected number is worked out by hand in the comments (surface voxels = mask minus its
4-/6-connected erosion, border counts as outside; HD95 = numpy's linear 95th percentile of the
pooled directed surface distances, i.e. value at index 0.95 * (n - 1) of the sorted list).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from srnet_core.brain.metrics import (contour_figure, dice, hd95, label_metrics, largest_label,
                                      summarise_pair, surface_distances, surface_mask)


def _box(shape, *slices):
    m = np.zeros(shape, dtype=bool)
    m[tuple(slices)] = True
    return m


# ---------------------------------------------------------------------------------------------- dice

def test_dice_hand_values():
    a = _box((8, 8), slice(0, 4), slice(0, 4))          # 4x4 = 16 px, cols 0..3
    b = _box((8, 8), slice(0, 4), slice(2, 6))          # 4x4 = 16 px, cols 2..5
    # overlap: rows 0..3, cols 2..3 = 4x2 = 8 px -> 2*8 / (16+16) = 0.5
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    c = _box((8, 8), slice(5, 8), slice(5, 8))          # disjoint from a
    assert dice(a, c) == 0.0
    # one empty: 2*0 / (16+0) = 0
    assert dice(a, np.zeros_like(a)) == 0.0
    assert math.isnan(dice(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))
    # 0/1 integer masks are accepted: same as the boolean ones
    assert dice(a.astype(np.uint8), b.astype(int)) == pytest.approx(0.5)


def test_dice_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))
    with pytest.raises(ValueError, match="boolean mask"):
        dice(np.array([[0, 2], [1, 0]]), np.zeros((2, 2), bool))   # a label image, not a mask


# ---------------------------------------------------------------------------------------------- surface

def test_surface_definition():
    # 4x4 filled square: erosion (4-connectivity) keeps the 2x2 interior -> ring of 16 - 4 = 12 px
    sq = _box((8, 8), slice(2, 6), slice(2, 6))
    surf = surface_mask(sq)
    assert surf.sum() == 12 and not surf[3:5, 3:5].any() and surf[2, 2:6].all()
    # plus sign of 5 px: the centre has all 4 face neighbours inside -> kept by the erosion, so it is
    # NOT surface with connectivity 1 (it would be with the 8-connected structure)
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = plus[1:4, 2] = True
    assert surface_mask(plus).sum() == 4 and not surface_mask(plus)[2, 2]
    # mask filling the whole 3x3 array: the array border counts as outside (border_value=0), so the
    # 8 border pixels are surface and only the centre is not
    full = np.ones((3, 3), bool)
    assert surface_mask(full).sum() == 8 and not surface_mask(full)[1, 1]
    # 3D: 3x3x3 cube -> 27 - 1 centre = 26 surface voxels
    assert surface_mask(_box((5, 5, 5), slice(1, 4), slice(1, 4), slice(1, 4))).sum() == 26


def test_directed_distances_use_surface_only():
    # 5x5 square (rows/cols 2..6) vs its centre pixel (4,4). The centre is interior of the square, so
    # its distance to the square's *surface* (the ring) is 2, not 0.
    sq = _box((9, 9), slice(2, 7), slice(2, 7))
    centre = _box((9, 9), slice(4, 5), slice(4, 5))
    np.testing.assert_allclose(surface_distances(centre, sq), [2.0])
    # ring (16 px) -> centre: offsets with max(|dr|,|dc|) = 2: (±2,0),(0,±2) -> 2 (4 px),
    # (±2,±1),(±1,±2) -> sqrt5 (8 px), (±2,±2) -> sqrt8 (4 px)
    d = np.sort(surface_distances(sq, centre))
    np.testing.assert_allclose(d, sorted([2.0] * 4 + [math.sqrt(5)] * 8 + [math.sqrt(8)] * 4))
    # pooled 17 values sorted: 2 x5 (idx 0..4), sqrt5 x8 (5..12), sqrt8 x4 (13..16);
    # 0.95*16 = 15.2 -> between idx 15 and 16, both sqrt8
    assert hd95(sq, centre) == pytest.approx(math.sqrt(8))


# ---------------------------------------------------------------------------------------------- hd95 2D

def test_hd95_filled_squares_shifted_3px():
    # A: rows 2..5, cols 2..5; B: same rows, cols 5..8 (shift 3 along x). Surfaces = 12-px rings.
    # A->B: left edge col 2 (4 px) -> B's left edge col 5: 3; right edge col 5 (4 px) lies on B's
    # left edge: 0; top row cols 3,4 -> (2,5): 2, 1; bottom row the same: 2, 1.
    #   d_AB = [3,3,3,3, 0,0,0,0, 2,1,2,1]; d_BA is the mirror image, same multiset.
    # pooled 24 sorted: 0 x8, 1 x4, 2 x4, 3 x8 (idx 16..23); 0.95*23 = 21.85 -> 3
    a = _box((10, 12), slice(2, 6), slice(2, 6))
    b = _box((10, 12), slice(2, 6), slice(5, 9))
    assert sorted(surface_distances(a, b, (1, 1))) == [0] * 4 + [1] * 2 + [2] * 2 + [3] * 4
    assert hd95(a, b, (1.0, 1.0)) == pytest.approx(3.0)
    assert hd95(b, a, (1.0, 1.0)) == pytest.approx(3.0)        # symmetric
    assert hd95(a, a, (1.0, 1.0)) == 0.0


def test_hd95_anisotropic_column_shift():
    # spacing row 2.0 mm, col 0.5 mm; squares rows 2..5 at cols 2..5 and cols 6..9 (shift 4 px).
    # Nearest surface is always on the same row (a row step costs 2 mm):
    # A->B: col 2 -> col 6: 4*0.5 = 2.0 (x4); col 5 -> col 6: 0.5 (x4); top/bottom cols 3,4 -> col 6
    # of B's left edge on the same row: 1.5, 1.0 (x2 each). B->A mirror.
    # pooled 24: 0.5 x8, 1.0 x4, 1.5 x4, 2.0 x8 (idx 16..23); idx 21.85 -> 2.0 mm
    a = _box((10, 12), slice(2, 6), slice(2, 6))
    b = _box((10, 12), slice(2, 6), slice(6, 10))
    assert hd95(a, b, (2.0, 0.5)) == pytest.approx(2.0)
    # 1-px-thick vertical lines (every pixel is surface): col 2 vs col 6, rows 2..5 -> every pixel's
    # nearest is the same row: 4 * 0.5 = 2.0 mm, all 8 distances -> hd95 = 2.0
    la = _box((10, 12), slice(2, 6), slice(2, 3))
    lb = _box((10, 12), slice(2, 6), slice(6, 7))
    np.testing.assert_allclose(surface_distances(la, lb, (2.0, 0.5)), [2.0] * 4)
    assert hd95(la, lb, (2.0, 0.5)) == pytest.approx(2.0)
    # same lines with isotropic 1 mm: 4 mm
    assert hd95(la, lb, (1.0, 1.0)) == pytest.approx(4.0)


def test_hd95_percentile_interpolates_and_axes_are_not_swapped():
    # pixel P at (2,2) vs a horizontal line row 2, cols 2..6 (all 5 px surface).
    # P->line: 0 (P lies on it). line->P: col offsets 0..4.
    p = _box((8, 10), slice(2, 3), slice(2, 3))
    horiz = _box((8, 10), slice(2, 3), slice(2, 7))
    # spacing (1,1): pooled [0, 0,1,2,3,4] -> 0.95*5 = 4.75 -> 3 + 0.75*(4-3) = 3.75
    assert hd95(p, horiz) == pytest.approx(3.75)
    # spacing (row 2.0, col 0.5): pooled [0, 0,.5,1,1.5,2] -> 1.5 + 0.75*0.5 = 1.875
    assert hd95(p, horiz, (2.0, 0.5)) == pytest.approx(1.875)
    # vertical line col 2, rows 2..6 with the same spacing: row offsets 0..4 * 2.0 mm
    # pooled [0, 0,2,4,6,8] -> 6 + 0.75*2 = 7.5
    vert = _box((8, 10), slice(2, 7), slice(2, 3))
    assert hd95(p, vert, (2.0, 0.5)) == pytest.approx(7.5)


# ---------------------------------------------------------------------------------------------- hd95 3D

def test_hd95_3d_anisotropic():
    sp = (3.0, 1.0, 1.0)
    # two 2x2x2 cubes (every voxel surface), shifted 2 slices along axis 0:
    # A slice 1 -> B slice 3: 2*3 = 6 mm (4 voxels); A slice 2 -> B slice 3: 3 mm (4 voxels); B mirror.
    # pooled 16: 3 x8, 6 x8; 0.95*15 = 14.25 -> 6
    a = _box((6, 4, 4), slice(1, 3), slice(1, 3), slice(1, 3))
    b = _box((6, 4, 4), slice(3, 5), slice(1, 3), slice(1, 3))
    assert hd95(a, b, sp) == pytest.approx(6.0)
    # voxel (2,2,2) vs a line of 4 voxels along axis 0 (slices 2..5): line->voxel 0,3,6,9; voxel->line 0
    # pooled [0,0,3,6,9]: 0.95*4 = 3.8 -> 6 + 0.8*3 = 8.4
    v = _box((7, 5, 5), slice(2, 3), slice(2, 3), slice(2, 3))
    line0 = _box((7, 5, 5), slice(2, 6), slice(2, 3), slice(2, 3))
    assert hd95(v, line0, sp) == pytest.approx(8.4)
    # the same line along axis 2 (1 mm steps): pooled [0,0,1,2,3] -> 2 + 0.8*1 = 2.8
    line2 = _box((7, 5, 7), slice(2, 3), slice(2, 3), slice(2, 6))
    v2 = _box((7, 5, 7), slice(2, 3), slice(2, 3), slice(2, 3))
    assert hd95(v2, line2, sp) == pytest.approx(2.8)
    # 3x3x3 cube vs its centre voxel: surface = 26 voxels, offsets (dz,dy,dx) in {-1,0,1}^3 \ 0,
    # distance sqrt(9dz^2 + dy^2 + dx^2): 1 (x4), sqrt2 (x4), 3 (x2), sqrt10 (x8), sqrt11 (x8);
    # centre -> surface: 1. pooled 27: idx 19..26 are sqrt11; 0.95*26 = 24.7 -> sqrt11
    cube = _box((5, 5, 5), slice(1, 4), slice(1, 4), slice(1, 4))
    centre = _box((5, 5, 5), slice(2, 3), slice(2, 3), slice(2, 3))
    assert hd95(cube, centre, sp) == pytest.approx(math.sqrt(11))
    assert hd95(cube, cube, sp) == 0.0


def test_hd95_empty_and_bad_input():
    a = _box((5, 5), slice(1, 3), slice(1, 3))
    empty = np.zeros((5, 5), bool)
    assert math.isnan(hd95(a, empty, (1, 1)))
    assert math.isnan(hd95(empty, a, (1, 1)))
    assert math.isnan(hd95(empty, empty, (1, 1)))
    with pytest.raises(ValueError, match="spacing has 3"):
        hd95(a, a, (1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        hd95(a, a, (1, 0))
    with pytest.raises(ValueError, match="shapes differ"):
        hd95(a, np.zeros((5, 6), bool), (1, 1))


def test_hd95_crop_does_not_change_border_behaviour():
    # a mask touching the array border: its border pixels are surface (border_value=0). 3x3 mask
    # filling rows/cols 0..2 of a 6x6 array vs its centre pixel (1,1): ring of 8 (centre not surface)
    # -> distances 1 (x4) and sqrt2 (x4); centre -> ring 1. pooled 9: idx 7.6 -> sqrt2
    a = _box((6, 6), slice(0, 3), slice(0, 3))
    c = _box((6, 6), slice(1, 2), slice(1, 2))
    assert hd95(a, c) == pytest.approx(math.sqrt(2))
    np.testing.assert_allclose(surface_distances(c, a), [1.0])


# ---------------------------------------------------------------------------------------------- tables

def _three_labels():
    fixed = np.zeros((12, 12), dtype=np.int32)
    fixed[1:5, 1:5] = 1      # 4x4 = 16 px, cols 1..4
    fixed[6:10, 1:9] = 2     # 4x8 = 32 px, cols 1..8
    fixed[1:3, 7:9] = 3      # 2x2 = 4 px, cols 7..8
    fixed[10:12, 10:12] = 4  # 2x2 = 4 px, only in fixed
    warped = np.zeros_like(fixed)
    warped[:, 2:] = fixed[:, :-2]   # shift right by 2 columns
    warped[warped == 4] = 0         # (label 4 would leave the grid anyway)
    return fixed, warped


def test_label_metrics_hand_values():
    fixed, warped = _three_labels()
    frame = label_metrics(fixed, warped, spacing=(2.0, 0.5))
    assert list(frame.columns) == ["label", "dice", "hd95_mm", "fixed_pixels", "warped_pixels"]
    assert frame["label"].tolist() == [1, 2, 3, 4]
    # label 1: cols 1..4 vs 3..6 overlap cols 3..4 = 4x2 = 8 -> 16/32 = 0.5
    # label 2: cols 1..8 vs 3..10 overlap cols 3..8 = 4x6 = 24 -> 48/64 = 0.75
    # label 3: cols 7..8 vs 9..10 -> 0; label 4 missing in warped -> 0
    np.testing.assert_allclose(frame["dice"], [0.5, 0.75, 0.0, 0.0])
    # HD95: every label is a 2-column shift; the largest directed distance is a left/right edge to
    # the other mask's edge 2 columns away on the same row = 2 * 0.5 = 1.0 mm (a row step costs
    # 2 mm, so never nearer), and at least the top 5% of the pooled list are these maxima:
    # label 1: 24 values, 8 of them 1.0 (idx 21.85 in 16..23); label 2: ring of 20 px each, 40
    # values, 8 maxima (idx 37.05 in 32..39); label 3: all 4 px surface, [0.5,1.0] per row each way,
    # 8 values, 4 maxima (idx 6.65 in 4..7) -> 1.0 mm each; label 4 -> nan
    np.testing.assert_allclose(frame["hd95_mm"][:3], [1.0, 1.0, 1.0])
    assert math.isnan(frame["hd95_mm"][3])
    assert frame["fixed_pixels"].tolist() == [16, 32, 4, 4]
    assert frame["warped_pixels"].tolist() == [16, 32, 4, 0]

    s = summarise_pair(frame)
    # mean dice (0.5 + 0.75 + 0 + 0) / 4 = 0.3125 -> 31.25 %; nanmean hd95 (1+1+1)/3 = 1.0
    assert s["mean_dice_percent"] == pytest.approx(31.25)
    assert s["mean_hd95_mm"] == pytest.approx(1.0)
    assert s["n_labels"] == 4 and s["n_hd95_missing"] == 1


def test_label_metrics_explicit_labels_and_errors():
    fixed, warped = _three_labels()
    frame = label_metrics(fixed, warped.astype(float), (1.0, 1.0), labels=[2, 7])
    # label 2 with 1 mm pixels: hd95 = 2 columns = 2.0; label 7 absent from both -> nan, nan
    assert frame["label"].tolist() == [2, 7]
    assert frame["dice"][0] == pytest.approx(0.75) and frame["hd95_mm"][0] == pytest.approx(2.0)
    assert math.isnan(frame["dice"][1]) and math.isnan(frame["hd95_mm"][1])
    assert frame["fixed_pixels"][1] == 0 and frame["warped_pixels"][1] == 0
    with pytest.raises(ValueError, match="shapes differ"):
        label_metrics(fixed, warped[:, :-1], (1, 1))
    with pytest.raises(ValueError, match="spacing has 3"):
        label_metrics(fixed, warped, (1, 1, 1))
    with pytest.raises(ValueError, match="whole numbers"):
        label_metrics(fixed, warped + 0.5, (1, 1))
    with pytest.raises(ValueError, match="background"):
        label_metrics(fixed, warped, (1, 1), labels=[0, 1])
    with pytest.raises(ValueError, match="lacks column"):
        summarise_pair(pd.DataFrame({"label": [1]}))


def test_label_metrics_3d():
    fixed = np.zeros((4, 6, 6), dtype=np.uint8)
    fixed[1:3, 1:5, 1:5] = 5                      # 2x4x4 = 32 voxels
    warped = np.zeros_like(fixed)
    warped[1:3, 1:5, 2:6] = 5                     # shifted 1 column: overlap 2x4x3 = 24 -> 48/64
    frame = label_metrics(fixed, warped, (3.0, 1.0, 1.0))
    assert frame["label"].tolist() == [5]
    assert frame["dice"][0] == pytest.approx(0.75)
    # every voxel of a 2-slice slab is surface; a 1-column shift moves each x-edge 1 mm and
    # nothing is farther than 1 mm from the other surface -> 1.0
    assert frame["hd95_mm"][0] == pytest.approx(1.0)


def test_largest_label():
    fixed, _ = _three_labels()
    assert largest_label(fixed) == 2                  # 32 px beats 16, 4, 4
    assert largest_label(np.array([[0, 3, 3], [1, 1, 0]])) == 1   # tie 2-2 -> smallest label
    with pytest.raises(ValueError, match="no non-zero"):
        largest_label(np.zeros((3, 3), int))


# ---------------------------------------------------------------------------------------------- figure

def test_contour_figure_writes_png(tmp_path):
    import matplotlib.pyplot as plt

    fixed, warped = _three_labels()
    rng = np.random.default_rng(0)
    image = rng.normal(size=fixed.shape) + fixed
    out = tmp_path / "fig" / "contours.png"
    scores = contour_figure(image, fixed, {"before": warped, "identity": fixed}, label=2, out_png=out,
                            title="pair 1")
    assert scores == pytest.approx({"before": 0.75, "identity": 1.0})
    assert out.stat().st_size > 1000
    png = plt.imread(out)
    height, width = png.shape[:2]
    # 3 square panels side by side (+ titles above): width/height roughly 3
    assert 2.0 < width / height < 4.0
    # no temporary file left behind by the atomic write
    assert [p.name for p in out.parent.iterdir()] == ["contours.png"]

    # anisotropic pixels (rows 4x taller than wide) make the figure taller; label None -> largest
    out2 = tmp_path / "aniso.png"
    contour_figure(image, fixed, {"before": warped}, label=None, out_png=out2, spacing=(2.0, 0.5))
    png2 = plt.imread(out2)
    assert png2.shape[1] / png2.shape[0] < 1.0       # 2 panels, each ~4x taller than wide

    with pytest.raises(ValueError, match="not present"):
        contour_figure(image, fixed, {}, label=9, out_png=tmp_path / "x.png")
    with pytest.raises(ValueError, match="differs"):
        contour_figure(image, fixed, {"bad": warped[:, :-1]}, label=1, out_png=tmp_path / "x.png")
