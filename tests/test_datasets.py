import os
import shutil

import pandas as pd
import pytest

from srnet_core.datasets import (images_of, image_id, pair_id, read_cover_table, read_pairs, select_tissues,
                                 tissue_of)
from srnet_core.errors import InputError

def test_real_anhir_table_parses_into_tissue_groups(anhir_table, tmp_path):
    pairs = read_cover_table(anhir_table, tmp_path)
    assert len(pairs) == 481
    assert pairs["status"].value_counts().to_dict() == {"evaluation": 251, "training": 230}
    assert sorted(pairs["tissue"].unique()) == ["COAD", "breast", "gastric", "kidney", "lung-lesion",
                                                "lung-lobes", "mammary-gland", "mice-kidney"]
    counts = pairs.groupby("tissue").size().to_dict()
    assert sum(counts.values()) == 481
    # counts by first folder recomputed independently from the raw CSV
    raw = pd.read_csv(anhir_table)
    firsts = raw["Source image"].str.split("/").str[0].str.replace(r"_\d+$", "", regex=True)
    assert counts == firsts.value_counts().to_dict()
    assert pairs["pair_id"].is_unique
    assert (pairs["error"] == "").all()
    first = pairs.iloc[0]
    assert first["moving"] == "COAD_01/scale-25pc/S1.jpg" and first["fixed"] == "COAD_01/scale-25pc/HE.jpg"
    assert (first["table_height"], first["table_width"], first["table_diagonal"]) == (16308, 7612, 17997)
    assert first["fixed_path"] == os.path.join(tmp_path, "COAD_01/scale-25pc/HE.jpg")
    images = images_of(pairs, tmp_path)
    assert images["image_id"].is_unique
    assert set(images["rel"]) == set(pairs["fixed"]) | set(pairs["moving"])


def test_tissue_selection_keeps_those_pairs_their_images_and_rows(anhir_table, tmp_path):
    pairs = read_cover_table(anhir_table, tmp_path)
    assert select_tissues(pairs, None, anhir_table) is pairs
    chosen = select_tissues(pairs, ["lung-lesion", "COAD"], anhir_table)
    expected = pairs[pairs["tissue"].isin(["lung-lesion", "COAD"])]
    assert len(chosen) == len(expected) > 0 and set(chosen["tissue"]) == {"lung-lesion", "COAD"}
    assert list(chosen["pair_id"]) == list(expected["pair_id"])
    assert list(chosen["row"]) == list(expected["row"])          # ANHIR's row numbers, for submissions
    images = images_of(chosen, tmp_path)
    assert set(images["rel"]) == set(chosen["fixed"]) | set(chosen["moving"])
    with pytest.raises(InputError, match=r"no pairs of tissue\(s\) \['lung'\]; the table's tissues are \['COAD', "
                                         r"'breast'") as err:
        select_tissues(pairs, ["lung", "COAD"], anhir_table)
    assert str(anhir_table) in str(err.value)


def test_pair_ids_are_stable_under_reordering(anhir_table, tmp_path):
    raw = pd.read_csv(anhir_table)
    shuffled = raw.sample(frac=1.0, random_state=3)
    path = tmp_path / "shuffled.csv"
    shuffled.to_csv(path, index=False)
    a = read_cover_table(anhir_table, tmp_path).set_index("pair_id")
    b = read_cover_table(path, tmp_path).set_index("pair_id")
    assert set(a.index) == set(b.index)
    assert (a.loc[b.index, "moving"] == b["moving"]).all()


def test_birl_tables(birl):
    histol = read_cover_table(birl / "pairs-imgs-lnds_histol.csv", birl)
    assert list(histol["tissue"]) == ["rat-kidney", "lesions"]
    assert histol.iloc[0]["fixed"] == "rat-kidney_/scale-5pc/Rat-Kidney_HE.jpg"
    assert histol.iloc[0]["moving"] == "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin.jpg"
    assert (histol.iloc[0]["table_height"], histol.iloc[0]["table_width"]) == (787, 1164)
    for col in ("fixed_path", "moving_path", "fixed_landmarks_path", "moving_landmarks_path"):
        assert all(os.path.isfile(p) for p in histol[col])
    mixed = read_cover_table(birl / "pairs-imgs-lnds_mix.csv", birl, strip_prefix="data-images/")
    assert len(mixed) == 5
    assert list(mixed["tissue"]) == ["images"] * 3 + ["rat-kidney", "lesions"]
    assert all(os.path.isfile(p) for p in mixed["moving_path"])
    assert mixed["status"].eq("training").all()   # BIRL tables have no status column


def test_tissue_and_ids():
    assert tissue_of("COAD_01/scale-25pc/S1.jpg") == "COAD"
    assert tissue_of("lung-lesion_2/scale-5pc/x.jpg") == "lung-lesion"
    assert tissue_of("rat-kidney_/scale-5pc/x.jpg") == "rat-kidney"
    assert image_id("COAD_01/scale-25pc/S1.jpg") == "COAD_01--scale-25pc--S1"
    assert pair_id("a_1/s/M.jpg", "a_1/s/F.jpg") == pair_id("a_1/s/M.jpg", "a_1/s/F.jpg")
    assert pair_id("a_1/s/M.jpg", "a_1/s/F.jpg") != pair_id("a_1/s/M.png", "a_1/s/F.jpg")


def _table(tmp_path, rows, columns=None):
    columns = columns or ["Source image", "Source landmarks", "Target image", "Target landmarks", "status"]
    path = tmp_path / "cover.csv"
    pd.DataFrame(rows, columns=columns).to_csv(path)
    return path


def test_missing_required_column_is_one_clear_error(tmp_path):
    path = _table(tmp_path, [["a_1/m.jpg", "a_1/f.jpg", "training"]],
                  columns=["Source image", "Target image", "status"])
    with pytest.raises(InputError) as err:
        read_cover_table(path, tmp_path)
    assert str(path) in str(err.value)
    assert "Source landmarks" in str(err.value) and "Target landmarks" in str(err.value)


def test_path_escaping_root_marks_only_that_row(tmp_path):
    path = _table(tmp_path, [
        ["a_1/m.jpg", "a_1/m.csv", "a_1/f.jpg", "a_1/f.csv", "training"],
        ["../../etc/m.jpg", "a_1/m.csv", "a_1/f.jpg", "a_1/f.csv", "training"],
        ["a_1/m2.jpg", "a_1/../../outside.csv", "a_1/f.jpg", "a_1/f.csv", "evaluation"],
    ])
    pairs = read_cover_table(path, tmp_path / "root")
    assert pairs.iloc[0]["error"] == ""
    assert "escapes the dataset root" in pairs.iloc[1]["error"] and "../../etc/m.jpg" in pairs.iloc[1]["error"]
    assert "moving landmarks" in pairs.iloc[2]["error"]
    images = images_of(pairs, tmp_path / "root").set_index("rel")
    assert "escapes the dataset root" in images.loc["../../etc/m.jpg", "error"]
    assert images.loc["a_1/f.jpg", "error"] == ""


def test_normalized_table_round_trip(tmp_path, birl):
    pairs = read_cover_table(birl / "pairs-imgs-lnds_histol.csv", birl)
    out = tmp_path / "dataset.csv"
    pairs.to_csv(out, index=False)
    back = read_pairs(out)
    assert list(back["pair_id"]) == list(pairs["pair_id"])
    assert back["table_diagonal"].tolist() == pytest.approx([1405.1, 1153.0])


def test_repeated_row_is_dropped_with_a_warning_naming_the_table_and_rows(tmp_path, caplog):
    path = _table(tmp_path, [
        ["a_1/m.jpg", "a_1/m.csv", "a_1/f.jpg", "a_1/f.csv", "training"],
        ["a_1/m2.jpg", "a_1/m2.csv", "a_1/f.jpg", "a_1/f.csv", "training"],
        ["a_1/m.jpg", "a_1/other.csv", "a_1/f.jpg", "a_1/f.csv", "evaluation"],
    ])
    with caplog.at_level("WARNING", logger="srnet_core.datasets"):
        pairs = read_cover_table(path, tmp_path)
    assert list(pairs["row"]) == [0, 1] and (pairs["error"] == "").all() and pairs["pair_id"].is_unique
    assert pairs.iloc[0]["moving_landmarks"] == "a_1/m.csv"                 # the first row is kept
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: row 2 repeats row 0 (moving a_1/m.jpg, fixed a_1/f.jpg); dropped"]


def test_screen_finds_bad_images_and_landmark_files_once(tmp_path, birl, caplog):
    """Real BIRL images and landmarks beside an unsupported file, a missing image and two bad landmark
    files: each problem becomes the error of every pair it touches, logged once; sizes come from the
    headers; landmarks outside their image are a warning, once per file."""
    from srnet_core.datasets import screen
    src = birl / "rat-kidney_/scale-5pc"
    root = tmp_path / "root"
    (root / "k_1").mkdir(parents=True)
    for name in ("Rat-Kidney_HE.jpg", "Rat-Kidney_PanCytokeratin.jpg", "Rat-Kidney_PanCytokeratin.csv"):
        shutil.copy(src / name, root / "k_1" / name)
    points = pd.read_csv(src / "Rat-Kidney_HE.csv", index_col=0)
    points.iloc[0] = [-3.0, 10.0]
    points.to_csv(root / "k_1/HE.csv")
    (root / "k_1/slide.svs").write_bytes(b"not a slide\n" * 50)
    (root / "k_1/cols.csv").write_text(",A,B\n1,2,3\n")
    fixed, fixed_lm, moving, moving_lm = "k_1/Rat-Kidney_HE.jpg", "k_1/HE.csv", "k_1/Rat-Kidney_PanCytokeratin.jpg", \
        "k_1/Rat-Kidney_PanCytokeratin.csv"
    path = _table(tmp_path, [
        [moving, moving_lm, fixed, fixed_lm, "training"],
        ["k_1/slide.svs", moving_lm, fixed, fixed_lm, "training"],
        ["k_1/slide.svs", moving_lm, moving, moving_lm, "training"],
        ["k_1/absent.jpg", moving_lm, fixed, fixed_lm, "training"],
        [fixed, "k_1/cols.csv", moving, moving_lm, "training"],
        [moving, "k_1/gone.csv", "k_1/slide.svs", moving_lm, "evaluation"],
    ])
    pairs = read_cover_table(path, root)
    with caplog.at_level("WARNING", logger="srnet_core.datasets"):
        screened, images = screen(pairs, images_of(pairs, root), missing_landmarks="error")
    errors = list(screened["error"])
    assert errors[0] == ""
    assert "slide.svs: unsupported or unreadable image format" in errors[1] and errors[1] == errors[2]
    assert errors[3] == f"{root / 'k_1/absent.jpg'}: image file not found"
    assert errors[4] == f"{root / 'k_1/cols.csv'}: landmark CSV lacks column(s) X, Y (found: ['Unnamed: 0', 'A', " \
                        "'B']); expected the ANHIR layout ',X,Y'"
    assert "slide.svs: unsupported" in errors[5] and "gone.csv: landmark file not found" in errors[5]
    images = images.set_index("rel")
    assert images.loc[fixed, ["width", "height", "reader"]].tolist() == ["1164", "787", "libvips"]
    assert images.loc["k_1/slide.svs", "width"] == "" and "unsupported" in images.loc["k_1/slide.svs", "error"]
    messages = [r.getMessage() for r in caplog.records]
    for culprit in ("slide.svs: unsupported", "absent.jpg: image file", "cols.csv: landmark CSV", "gone.csv"):
        assert sum(culprit in m for m in messages) == 1, (culprit, messages)
    assert [m for m in messages if "outside" in m] == [
        f"{root / 'k_1/HE.csv'}: 1 of 71 landmarks lie outside their 1164x787 px image {fixed} (first: landmark 1 "
        "at (-3.0, 10.0)); they are scored as they are"]
    # under missing_landmarks: unscored an absent landmark file is no error
    screened, _ = screen(pairs, images_of(pairs, root), missing_landmarks="unscored")
    assert "gone.csv" not in screened.loc[5, "error"] and "slide.svs" in screened.loc[5, "error"]
