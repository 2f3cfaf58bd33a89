
import numpy as np
import pandas as pd
import pytest

from srnet_core.errors import InputError
from srnet_core.evaluation import evaluate_pair, median_rtre_table, table_markdown


def _read_xy(path):
    """Independent reader for the test: plain csv module, no srnet code."""
    import csv
    with open(path) as f:
        rows = list(csv.reader(f))[1:]
    return np.array([[float(r[1]), float(r[2])] for r in rows])


def test_initial_rtre_of_real_birl_pair_by_hand(birl):
    fixed = birl / "rat-kidney_/scale-5pc/Rat-Kidney_HE.csv"          # 71 landmarks
    moving = birl / "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin.csv"  # 69 landmarks
    errors, summary = evaluate_pair(str(fixed), str(moving), (1164, 787))
    f, m = _read_xy(fixed)[:69], _read_xy(moving)[:69]
    by_hand = np.sqrt(((f - m) ** 2).sum(axis=1)) / np.sqrt(1164 ** 2 + 787 ** 2)
    assert summary["n_landmarks"] == 69 and len(errors) == 69
    assert summary["rtre_median"] == pytest.approx(np.median(by_hand), rel=1e-12)
    assert summary["rtre_max"] == pytest.approx(by_hand.max(), rel=1e-12)
    np.testing.assert_allclose(errors["rtre"], by_hand, rtol=1e-12)


def test_rtre_under_known_translation(birl):
    """The real landmarks moved by a known shift: rTRE = |shift| / diagonal for every point."""
    fixed = _read_xy(birl / "lesions_/scale-5pc/Izd2-29-041-w35_HE.csv")
    from srnet_core.evaluation import landmark_errors
    errors = landmark_errors(fixed, fixed + [3.0, 4.0], (890, 733))
    np.testing.assert_allclose(errors["rtre"], 5.0 / np.hypot(890, 733))


def test_missing_landmark_file_policy(tmp_path, birl):
    fixed = str(birl / "rat-kidney_/scale-5pc/Rat-Kidney_HE.csv")
    absent = str(tmp_path / "absent.csv")
    with pytest.raises(InputError, match="moving landmark file not found") as err:
        evaluate_pair(fixed, absent, (100, 100))
    assert absent in str(err.value)
    errors, summary = evaluate_pair(fixed, absent, (100, 100), missing_landmarks="unscored")
    assert not summary["scored"] and "missing" in summary["reason"] and errors.empty
    _, summary = evaluate_pair("", fixed, (100, 100))
    assert not summary["scored"] and "no fixed landmarks named" in summary["reason"]


def test_median_table_layout():
    pairs = pd.DataFrame({
        "tissue": ["a", "a", "a", "b", "b"],
        "method": ["initial"] * 5,
        "rtre_median": [0.1, 0.3, 0.2, 0.05, np.nan],
    })
    table = median_rtre_table(pairs, ["initial"])
    assert list(table.index) == ["All", "a", "b"]
    assert table.loc["All", "initial"] == pytest.approx(0.15)   # median of 0.1 0.3 0.2 0.05
    assert table.loc["a", "initial"] == pytest.approx(0.2)
    assert table.loc["b", "initial"] == pytest.approx(0.05)
    assert list(table["pairs"]) == [4, 3, 1]
    md = table_markdown(table, "t")
    assert "| All | 4 | 0.15000 |" in md
