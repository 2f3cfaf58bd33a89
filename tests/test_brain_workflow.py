"""The brain track end to end through Snakemake on slices of the shared MNI template and AAL atlas
(a test-size configuration): Table 2, its figure, and re-running only what a change touches."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from conftest import SHARED_DATA, _need_shared, job_counts, run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.shared_data]

METHODS = ["before", "srnet", "srnet_noseg", "voxelmorph_seg", "dirnet", "flownet"]
BASELINES = ["ants_syn", "elastix"]
BRAIN_TEST_RUN = {
    "brain": {
        "datasets": {"mni": {"volumes": [{"image": str(SHARED_DATA / "brain" / "mni.nii.gz"),
                                          "labels": str(SHARED_DATA / "brain" / "mnia.nii.gz")}]}},
        "slices": {"start": 50, "stop": 110, "step": 6, "per_slice": 2},
        "segmentation": {"iterations": 40, "references": 5, "samples": 10000},
        "train": {"iterations": 250, "checkpoint_every": 50},
        "evaluate": {"methods": METHODS + BASELINES},
    }
}


def test_brain_table2_end_to_end(tmp_path):
    _need_shared()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(BRAIN_TEST_RUN))
    result = run_snakemake(tmp_path, "brain", f"--configfile={cfg}", timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    tables = tmp_path / "results" / "mni" / "tables"
    table = pd.read_csv(tables / "table2.csv").set_index("method")
    assert list(table.index) == METHODS + BASELINES
    # 10 axial slices 50..104 with brain, 2 deformations each; 25 % of the slices held out for testing
    assert (table["pairs"] == 6).all() or (table["pairs"] == 4).all()
    before = table.loc["before"]
    assert 60 < before["dice_percent"] < 90                 # the simulated deformations misalign the atlas
    for method in METHODS[1:]:
        assert table.at[method, "dice_percent"] > before["dice_percent"] + 0.5, (method, table)
        assert table.at[method, "hd95_mm"] < before["hd95_mm"], (method, table)
        assert 0 < table.at[method, "seconds"] < 1.0         # a 2D slice pair in well under a second on CPU
        assert table.at[method, "device"].startswith("cpu")
    for method in ("srnet", "srnet_noseg", "voxelmorph_seg"):   # the UNet learns fastest (+5.4 to +7.7 points)
        assert table.at[method, "dice_percent"] > before["dice_percent"] + 2, (method, table)
    for method in BASELINES:                                   # classical registration of the same pairs
        assert table.at[method, "dice_percent"] > before["dice_percent"] + 2, (method, table)
        assert table.at[method, "hd95_mm"] < before["hd95_mm"], (method, table)
        assert table.at[method, "seconds"] > 0 and table.at[method, "device"].startswith("cpu")
    pairs = pd.read_csv(tables / "table2_pairs.csv")
    assert len(pairs) == len(METHODS + BASELINES) * int(before["pairs"])
    labels = pd.read_csv(tables / "table2_labels.csv")
    assert labels["label"].between(1, 116).all() and labels["dice"].between(0, 1).all()
    # the per-pair mean Dice the table averages
    srnet = pairs[pairs["method"] == "srnet"]["dice_percent"].mean()
    assert srnet == pytest.approx(table.at["srnet", "dice_percent"], rel=1e-4)
    md = (tables / "table2.md").read_text()
    assert "| DM (%) |" in md and "| HD95 (mm) |" in md and "| Time (s) |" in md and "Wilcoxon" in md
    tests = pd.read_csv(tables / "table2_significance.csv")
    assert set(tests["method"]) == set(METHODS + BASELINES) - {"srnet"}
    assert (tmp_path / "results" / "mni" / "tables" / "table2_contours.png").stat().st_size > 5000
    assert (tmp_path / "results" / "mni" / "brain" / "slices.png").exists()

    again = run_snakemake(tmp_path, "brain", f"--configfile={cfg}", "-n")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # a clustering change re-makes the maps and what uses them (srnet), nothing else
    BRAIN_TEST_RUN["brain"]["segmentation"]["k0"] = 5
    cfg.write_text(yaml.safe_dump(BRAIN_TEST_RUN))
    changed = run_snakemake(tmp_path, "brain", f"--configfile={cfg}", "-n", "--quiet", "rules")
    assert job_counts(changed) == {"brain_maps": 1, "brain_train": 1, "brain_register": 1, "brain_table": 1,
                                   "brain": 1}, changed.stdout
