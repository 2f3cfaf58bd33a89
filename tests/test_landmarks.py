import numpy as np
import pytest

from srnet_core.errors import InputError
from srnet_core.landmarks import read_landmarks, write_landmarks


def test_real_birl_csv_and_pts_agree(birl):
    for stem in ("rat-kidney_/scale-5pc/Rat-Kidney_HE", "lesions_/scale-5pc/Izd2-29-041-w35_proSPC"):
        csv = read_landmarks(birl / f"{stem}.csv")
        pts = read_landmarks(birl / f"{stem}.pts")
        assert csv.shape == pts.shape and csv.shape[1] == 2
        np.testing.assert_allclose(csv, pts, atol=1e-3)
    assert len(read_landmarks(birl / "rat-kidney_/scale-5pc/Rat-Kidney_HE.csv")) == 71
    assert len(read_landmarks(birl / "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin.csv")) == 69
    first = read_landmarks(birl / "landmarks/artificial_reference.csv")[0]
    assert tuple(first) == (144.0, 122.0)


@pytest.mark.parametrize("suffix", [".csv", ".pts"])
def test_write_read_round_trip(tmp_path, suffix):
    pts = np.array([[1.5, 2.25], [1000.125, 7.0], [0.0, 0.0]])
    path = tmp_path / f"lm{suffix}"
    write_landmarks(path, pts)
    np.testing.assert_allclose(read_landmarks(path), pts)
    if suffix == ".csv":
        assert path.read_text().splitlines()[0] == ",X,Y"
        assert path.read_text().splitlines()[1].startswith("1,")


def test_missing_columns_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",A,B\n1,2,3\n")
    with pytest.raises(InputError, match="lacks column") as err:
        read_landmarks(path)
    assert str(path) in str(err.value)


def test_non_numeric_value_named(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(",X,Y\n1,2,3\n2,4,abc\n")
    with pytest.raises(InputError, match=r"non-numeric Y value 'abc' in data row 2"):
        read_landmarks(path)


def test_missing_value_and_missing_file(tmp_path):
    path = tmp_path / "nan.csv"
    path.write_text(",X,Y\n1,2,3\n2,,5\n")
    with pytest.raises(InputError, match="landmark 2 has a missing"):
        read_landmarks(path)
    assert np.isnan(read_landmarks(path, allow_nan=True)[1, 0])
    with pytest.raises(InputError, match="landmark file not found"):
        read_landmarks(tmp_path / "absent.csv")


def test_pts_count_mismatch(tmp_path):
    path = tmp_path / "bad.pts"
    path.write_text("point\n3\n1 2\n3 4\n")
    with pytest.raises(InputError, match="announces 3 points"):
        read_landmarks(path)
