
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


def test_robustness_and_missing_points_scored_as_anhir_does(tmp_path, birl):
    """Real BIRL landmarks: the first 30 warped points land 1 px from their fixed partner (improved),
    then 5 are NaN and the file stops 10 points early: those 15 take their initial error, count as not
    improved, and the pair is flagged."""
    from srnet_core.landmarks import write_landmarks
    fixed_path = birl / "rat-kidney_/scale-5pc/Rat-Kidney_HE.csv"
    moving_path = birl / "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin.csv"
    f, m = _read_xy(fixed_path)[:69], _read_xy(moving_path)[:69]
    warped = f[:59] + [0.6, 0.8]
    warped[30:35] = np.nan
    warped[35:59] = m[35:59]                     # unchanged: equal to the initial error, not improved
    path = tmp_path / "warped.csv"
    write_landmarks(path, warped)
    errors, summary = evaluate_pair(str(fixed_path), str(path), (1164, 787), moving_landmarks=str(moving_path))
    diag = np.hypot(1164, 787)
    initial = np.hypot(*(m - f).T) / diag
    expected = initial.copy()
    expected[:30] = 1.0 / diag
    assert summary["n_landmarks"] == 69 and summary["n_missing"] == 15
    np.testing.assert_allclose(errors["rtre"], expected, rtol=1e-9)
    improved_by_hand = int((initial[:30] > 1.0 / diag).sum())
    assert summary["robustness"] == pytest.approx(improved_by_hand / 69)
    assert summary["rtre_median"] == pytest.approx(np.median(expected))
    assert "15 of 69 warped landmarks missing" in summary["reason"] and str(path) in summary["reason"]
    # the initial method itself: nothing improves
    _, initial_summary = evaluate_pair(str(fixed_path), str(moving_path), (1164, 787),
                                       moving_landmarks=str(moving_path))
    assert initial_summary["robustness"] == 0.0 and initial_summary["n_missing"] == 0


def test_header_only_warped_file_is_all_missing(tmp_path, birl):
    fixed_path = birl / "lesions_/scale-5pc/Izd2-29-041-w35_HE.csv"
    moving_path = birl / "lesions_/scale-5pc/Izd2-29-041-w35_proSPC.csv"
    empty = tmp_path / "w.csv"
    empty.write_text(",X,Y\n")
    errors, summary = evaluate_pair(str(fixed_path), str(empty), (890, 733), moving_landmarks=str(moving_path))
    _, initial = evaluate_pair(str(fixed_path), str(moving_path), (890, 733), moving_landmarks=str(moving_path))
    assert summary["n_missing"] == summary["n_landmarks"] == initial["n_landmarks"]
    assert summary["rtre_median"] == pytest.approx(initial["rtre_median"]) and summary["robustness"] == 0


def _pairs(rows):
    return pd.DataFrame(rows, columns=["pair_id", "tissue", "status", "method", "scored", "rtre_median",
                                       "rtre_mean", "rtre_max", "robustness", "seconds", "n_missing"])


def test_anhir_scores_on_a_hand_made_table():
    from srnet_core.evaluation import anhir_scores
    pairs = _pairs([
        ("p1", "a", "training", "srnet", True, 0.01, 0.02, 0.05, 0.9, 2.0, 0),
        ("p2", "a", "training", "srnet", True, 0.03, 0.04, 0.07, 0.7, 4.0, 0),
        ("p3", "b", "evaluation", "srnet", True, 0.08, 0.09, 0.20, 0.1, 6.0, 3),
        ("p4", "b", "evaluation", "srnet", False, np.nan, np.nan, np.nan, np.nan, 1.0, 0),
        ("p1", "a", "training", "initial", True, 0.05, 0.06, 0.10, 0.0, 0.0, 0),
    ])
    scores = anhir_scores(pairs, ["initial", "srnet"]).set_index(["method", "status"])
    s = scores.loc[("srnet", "all")]
    assert s["pairs"] == 3 and s["pairs_with_missing_landmarks"] == 1
    assert s["Average-Median-rTRE"] == pytest.approx((0.01 + 0.03 + 0.08) / 3)
    assert s["Median-Median-rTRE"] == pytest.approx(0.03)
    assert s["Average-Average-rTRE"] == pytest.approx(0.05)
    assert s["Average-Max-rTRE"] == pytest.approx((0.05 + 0.07 + 0.20) / 3)
    assert s["Average-Robustness"] == pytest.approx(1.7 / 3)
    assert s["Average-Execution-time [s]"] == pytest.approx(4.0)
    assert scores.loc[("srnet", "training"), "Median-Median-rTRE"] == pytest.approx(0.02)
    assert scores.loc[("srnet", "evaluation"), "pairs"] == 1
    assert scores.loc[("initial", "all"), "Average-Robustness"] == 0


def test_wilcoxon_against_hand_computed_p_values():
    """Five pairs, srnet better on all: exact two-sided p = 2 / 2^5. Better on 4 of 5 with the worse
    one the smallest difference: W = 1, p = 2 * 2 / 32 (ranks summing to <= 1: {} and {1})."""
    from srnet_core.evaluation import significance, significance_markdown
    rows = []
    for i, (s, noseg, mse) in enumerate([(0.01, 0.02, 0.0112), (0.02, 0.05, 0.04), (0.03, 0.06, 0.06),
                                         (0.04, 0.08, 0.09), (0.05, 0.10, 0.0495)]):
        rows += [(f"p{i}", "a", "training", "srnet", True, s, 0, 0, 0, 0, 0),
                 (f"p{i}", "a", "training", "srnet_noseg", True, noseg, 0, 0, 0, 0, 0),
                 (f"p{i}", "a", "training", "srnet_mse", True, mse, 0, 0, 0, 0, 0),
                 (f"p{i}", "a", "training", "same", True, s, 0, 0, 0, 0, 0)]
    tests = significance(_pairs(rows), ["srnet", "srnet_noseg", "srnet_mse", "same"]).set_index("method")
    assert tests.loc["srnet_noseg", "p_value"] == pytest.approx(2 / 32)
    assert tests.loc["srnet_noseg", "reference_better"] == 5
    assert tests.loc["srnet_mse", "statistic"] == pytest.approx(1.0)
    assert tests.loc["srnet_mse", "p_value"] == pytest.approx(4 / 32)
    assert np.isnan(tests.loc["same", "p_value"]) and "identical" in tests.loc["same", "note"]
    md = significance_markdown(tests.reset_index())
    assert "| srnet | srnet_noseg | 5 | 5 | 0.0625 |" in md


def test_real_anhir_cover_table_gives_eight_tissue_rows(anhir_table, tmp_path):
    """The 230 training pairs of the real ANHIR table (the ones with both landmark files), scored with
    a per-pair value: the table has `All` and the 8 tissues, with the right pair counts."""
    from srnet_core.datasets import read_cover_table
    pairs = read_cover_table(anhir_table, tmp_path)
    training = pairs[pairs["status"] == "training"].copy()
    training["method"], training["scored"] = "initial", True
    training["rtre_median"] = np.arange(len(training)) / 1000.0
    table = median_rtre_table(training, ["initial"])
    assert list(table.index) == ["All", "COAD", "breast", "gastric", "kidney", "lung-lesion", "lung-lobes",
                                 "mammary-gland", "mice-kidney"]
    assert table.loc["All", "pairs"] == 230
    assert table["pairs"].iloc[1:].sum() == 230
    assert table.loc["All", "initial"] == pytest.approx(np.median(training["rtre_median"]))


def test_failed_pair_is_scored_as_a_missing_result(tmp_path, birl):
    """ANHIR's rule for a pair without a result: every landmark keeps its initial error, robustness 0;
    unscored only when its landmarks or the fixed image's size cannot be read."""
    from srnet_core.evaluation import evaluate_failed_pair
    fixed = str(birl / "rat-kidney_/scale-5pc/Rat-Kidney_HE.csv")
    moving = str(birl / "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin.csv")
    _, initial = evaluate_pair(fixed, moving, (1164, 787))
    errors, summary = evaluate_failed_pair(fixed, moving, (1164, 787), float("nan"), "x.jpg: truncated", "prepare")
    assert summary["scored"] and summary["failed"] and summary["failed_stage"] == "prepare"
    assert summary["reason"] == "x.jpg: truncated" and summary["robustness"] == 0
    assert summary["rtre_median"] == pytest.approx(initial["rtre_median"], rel=1e-12)
    assert summary["n_missing"] == summary["n_landmarks"] == 69 and errors["missing"].all()
    # the fixed image unreadable: the cover table's diagonal gives the same numbers
    _, by_table = evaluate_failed_pair(fixed, moving, None, float(np.hypot(1164, 787)), "r", "dataset")
    assert by_table["rtre_median"] == pytest.approx(initial["rtre_median"], rel=1e-12)
    bad = tmp_path / "bad.csv"
    bad.write_text(",X,Y\n1,ten,2\n")
    for args in ((fixed, str(bad), (1164, 787), np.nan), (fixed, moving, None, np.nan),
                 (fixed, "", (1164, 787), np.nan)):
        _, unscored = evaluate_failed_pair(*args, "r", "dataset")
        assert not unscored["scored"] and unscored["failed"] and unscored["unscored_because"]


def test_failed_pairs_are_listed_once_and_counted_in_the_scores():
    from srnet_core.evaluation import anhir_scores, failed_markdown, failed_pairs
    pairs = _pairs([
        ("p1", "a", "training", "srnet", True, 0.01, 0.02, 0.05, 0.9, 2.0, 0),
        ("p2", "a", "training", "srnet", True, 0.05, 0.06, 0.10, 0.0, np.nan, 69),
        ("p2", "a", "training", "initial", True, 0.05, 0.06, 0.10, 0.0, np.nan, 69),
        ("p3", "b", "evaluation", "srnet", False, np.nan, np.nan, np.nan, np.nan, np.nan, 0),
    ])
    pairs["failed"] = [False, True, True, True]
    pairs["failed_stage"] = ["", "prepare", "prepare", "dataset"]
    pairs["reason"] = ["", "m.jpg: truncated", "m.jpg: truncated", "l.csv: lacks column X"]
    pairs["row"] = [0, 1, 1, 2]
    failed = failed_pairs(pairs, pd.DataFrame({"pair_id": ["p1", "p2", "p3"], "moving": ["a", "m.jpg", "c"],
                                               "fixed": ["f", "f", "f"]}))
    assert list(failed["pair_id"]) == ["p2", "p3"]
    assert failed.iloc[0][["stage", "reason", "methods", "moving", "scored"]].tolist() == \
        ["prepare", "m.jpg: truncated", "srnet initial", "m.jpg", True]
    assert not failed.iloc[1]["scored"]
    md = failed_markdown(failed, 3)
    assert "## Failed pairs: 2 of 3" in md and "| p3 | b | dataset | srnet | l.csv: lacks column X (not scored) |" in md
    scores = anhir_scores(pairs, ["initial", "srnet"]).set_index(["method", "status"])
    s = scores.loc[("srnet", "all")]
    assert s["pairs"] == 2 and s["pairs_failed"] == 1 and s["pairs_with_missing_landmarks"] == 0
    assert s["Average-Robustness"] == pytest.approx(0.45) and s["Average-Execution-time [s]"] == 2.0
    assert failed_pairs(pairs[~pairs["failed"]]).empty


def test_affine_choice_reads_the_close_call_flag(tmp_path):
    import json

    from srnet_core.evaluation import affine_choice
    (tmp_path / "affine").mkdir()
    path = tmp_path / "affine" / "p.json"
    path.write_text(json.dumps({"chosen": "search", "close_call": True, "reason": "runner-up within 0.004"}))
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"seconds_total": 1.0}))
    assert affine_choice([str(path), str(timing)]) == {"affine_chosen": "search", "affine_close_call": True,
                                                       "affine_reason": "runner-up within 0.004"}
    assert affine_choice([]) == {}
