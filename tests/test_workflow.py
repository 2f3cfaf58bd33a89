"""Real Snakemake runs of this checkout's workflow on small data."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts, run_snakemake
from srnet_core.errors import InputError
from srnet_core.h5io import read_prepared_attrs

pytestmark = pytest.mark.workflow


def _xy(path):
    frame = pd.read_csv(path)
    return frame[["X", "Y"]].to_numpy(float)


def _initial_by_hand(root: Path, table: Path) -> pd.DataFrame:
    import pyvips
    raw = pd.read_csv(table)
    rows = []
    for _, rec in raw.iterrows():
        fixed, moving = _xy(root / rec["Target landmarks"]), _xy(root / rec["Source landmarks"])
        n = min(len(fixed), len(moving))
        header = pyvips.Image.new_from_file(str(root / rec["Target image"]))
        diag = np.hypot(header.width, header.height)
        rtre = np.hypot(*(fixed[:n] - moving[:n]).T) / diag
        rows.append({"tissue": rec["Source image"].split("/")[0].rstrip("_0123456789"),
                     "median": np.median(rtre)})
    return pd.DataFrame(rows)


# The default demo with shorter work (FGSN pretraining 40 iterations and each method's training 60
# instead of 300; 40 + 20 instance steps per pair instead of 100 + 50) and two of its four learned
# columns (srnet with maps, srnet_noseg without): every stage and output of `make demo` in under
# half its time (225-254 s against 567 s on one host, docs/BENCHMARKS.md). srnet_mse and srnet_cc
# are the same rules with other loss weights (tests/test_train.py checks the weights); `make demo`
# trains and scores them, and benchmarks/bench_demo.py measures the default's own time and table.
TRAIN_ITERATIONS = 60
DEMO_SHORT = {"segmentation": {"pretrain": {"iterations": 40}},
              "registration": {"train": {"iterations": TRAIN_ITERATIONS},
                               "infer": {"instance_steps": 40, "instance_fine_steps": 20}},
              "evaluate": {"methods": ["initial", "affine", "srnet", "srnet_noseg"]}}
LEARNED = ("srnet", "srnet_noseg")


def test_demo_end_to_end_then_nothing_to_do(tmp_path):
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(DEMO_SHORT))

    def with_change(change: dict) -> tuple[str, ...]:
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(change))
        return "--configfile", str(short), str(tmp_path / "cfg.yaml")

    result = run_snakemake(tmp_path, "--configfile", str(short), timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results/demo/tables/median_rtre.csv", index_col=0)
    assert list(table.index) == ["All", "cmu1-he", "ihc-colon"]
    assert list(table["pairs"]) == [6, 4, 2]
    assert list(table.columns) == ["pairs", "initial", "affine", *LEARNED]
    # the CMU-1 pairs (glass around the tissue): affine, then SR-Net, each lowers the error
    assert table.loc["cmu1-he", "srnet"] < table.loc["cmu1-he", "affine"] < table.loc["cmu1-he", "initial"]
    reg = tmp_path / "results/demo/registration/srnet/cmu1-he_1_HEDshift-a-to-HE_60a3c0"
    for name in ("field.h5", "warped_landmarks.csv", "overlay.png", "timing.json"):
        assert (reg / name).stat().st_size > 0, name
    for method in LEARNED:
        model = tmp_path / f"results/demo/models/{method}"
        assert (model / "model.pt").exists() and (model / "loss.png").exists()
        assert len(pd.read_csv(model / "loss.csv")) == TRAIN_ITERATIONS
    by_hand = _initial_by_hand(tmp_path / "data/demo", tmp_path / "data/demo/dataset.csv")
    assert table.loc["All", "initial"] == pytest.approx(by_hand["median"].median(), rel=1e-5)
    for tissue, group in by_hand.groupby("tissue"):
        assert table.loc[tissue, "initial"] == pytest.approx(group["median"].median(), rel=1e-5)
    md = (tmp_path / "results/demo/tables/median_rtre.md").read_text()
    assert "| All | 6 |" in md
    attrs = read_prepared_attrs(tmp_path / "results/demo/prepared/cmu1-he_1--scale-100pc--HE.h5")
    assert (attrs["reader"], attrs["vendor"], attrs["full_width"], attrs["full_height"]) == ("openslide", "aperio", 2220, 2967)
    assert attrs["scale_y"] == pytest.approx(1024 / 2967)
    import pyvips
    preview = pyvips.Image.new_from_file(str(tmp_path / "results/demo/prepared/cmu1-he_1--scale-100pc--HE.png"))
    assert (preview.width, preview.height) == (766, 1024)
    assert not list(tmp_path.rglob("*.tmp-*")), "temporary files left behind"
    for log in ("logs/prepare/demo/cmu1-he_1--scale-100pc--HE.log", "logs/tables/demo.log"):
        assert (tmp_path / log).stat().st_size > 0

    again = run_snakemake(tmp_path, "--configfile", str(short), "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # ANHIR scores, Wilcoxon tests, box plots, the submission folder
    tables = tmp_path / "results/demo/tables"
    scores = pd.read_csv(tables / "anhir_scores.csv").set_index(["method", "status"])
    assert scores.loc[("initial", "all"), "Average-Robustness"] == 0
    assert scores.loc[("srnet", "all"), "Average-Robustness"] > 0.5
    assert scores.loc[("srnet", "all"), "pairs"] == 6 and scores.loc[("srnet", "all"), "Average-Execution-time [s]"] > 0
    pairs = pd.read_csv(tables / "pairs.csv")
    srnet_pairs = pairs[pairs["method"] == "srnet"].merge(
        pd.read_csv(tmp_path / "results/demo/dataset.csv")[["pair_id", "moving"]], on="pair_id")
    assert scores.loc[("srnet", "all"), "Median-Median-rTRE"] == pytest.approx(srnet_pairs["rtre_median"].median(),
                                                                             rel=1e-5)
    tests = pd.read_csv(tables / "significance.csv")
    assert sorted(tests["method"]) == ["affine", "initial", "srnet_noseg"]
    assert (tests["pairs"] == 6).all()
    assert tests.set_index("method").loc["initial", "reference_better"] == 6
    assert "Wilcoxon" in (tables / "median_rtre.md").read_text()
    assert (tables / "rtre_boxplot.png").stat().st_size > 10_000
    submission = tmp_path / "results/demo/submission/srnet"
    results = pd.read_csv(submission / "registration-results.csv", index_col=0)
    assert len(results) == 6 and list(results.index) == list(range(6))
    for _, rec in results.iterrows():
        warped = submission / rec["Warped source landmarks"]
        same = srnet_pairs[srnet_pairs["moving"] == rec["Source image"]]
        assert warped.exists() and len(same) == 1
        assert _xy(warped) == pytest.approx(_xy(tmp_path / "results/demo/registration/srnet" / same["pair_id"].iloc[0]
                                                / "warped_landmarks.csv"))
        assert rec["Execution time [minutes]"] == pytest.approx(same["seconds"].iloc[0] / 60, rel=1e-4)
    assert json.loads((submission / "computer-performances.json").read_text())["cores"] >= 1

    # the HTML report: one self-contained page with the tables and figures
    report = run_snakemake(tmp_path, "--configfile", str(short), "--report", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stderr[-3000:]
    page = (tmp_path / "report.html").read_text(errors="replace")
    assert "median_rtre.csv" in page and "anhir_scores.csv" in page and "rtre_boxplot.png" in page
    assert "median relative target registration error" in page.lower()

    # segmentation maps: one codebook for the dataset, a map and an overlay per image
    seg = tmp_path / "results/demo/segmentation"
    assert len(list(seg.glob("*--*.h5"))) == 9 and len(list(seg.glob("*--*.png"))) == 9
    assert (seg / "gap_curve.png").exists() and (seg / "codebook.h5").exists()
    assert len(list((tmp_path / "results/demo/features").glob("*.h5"))) == 9

    # a preparation setting re-runs preparation and what follows, not the data stages
    changed = run_snakemake(tmp_path, *with_change({"prepare": {"max_side": 512}}), "-n", "--quiet", "rules")
    assert job_counts(changed) == {"prepare": 9, "evaluate": 24, "tables": 1, "check_pairs": 1, "pretrain_fgsn": 1,
                                    "extract_features": 9, "fit_codebook": 1, "segment": 9,
                                    "segmentation_done": 1, "affine": 6, "train_registration": 2,
                                    "register": 18, "submission": 1, "all": 1}
    # a clustering setting (B) re-runs the codebook, the maps and the methods that use maps, not
    # features, pretraining, the affine step or srnet_noseg
    changed = run_snakemake(tmp_path, *with_change({"segmentation": {"clustering": {"references": 5}}}),
                            "-n", "--quiet", "rules")
    assert job_counts(changed) == {"fit_codebook": 1, "segment": 9, "segmentation_done": 1, "train_registration": 1,
                                    "register": 6, "evaluate": 6, "tables": 1, "check_pairs": 1, "submission": 1,
                                    "all": 1}
    # lambda2 of srnet re-runs srnet's training and what follows only
    changed = run_snakemake(tmp_path, *with_change({"registration": {"methods": {"srnet": {"lambda_seg": 2.0}}}}),
                            "-n", "--quiet", "rules")
    assert job_counts(changed) == {"train_registration": 1, "register": 6, "evaluate": 6, "tables": 1,
                                    "check_pairs": 1, "submission": 1, "all": 1}

    # the regulariser of instance optimisation re-runs the learned methods' registrations and what
    # follows: no training, not the affine column
    changed = run_snakemake(tmp_path, *with_change({"registration": {"infer": {"instance_lambda_smooth": 0.5}}}),
                            "-n", "--quiet", "rules")
    assert job_counts(changed) == {"register": 12, "evaluate": 12, "tables": 1, "check_pairs": 1, "submission": 1,
                                    "all": 1}

    # apply mode: srnet's model from this run registers the pairs; no training job
    model = tmp_path / "results/demo/models/srnet/model.pt"
    changed = run_snakemake(tmp_path, *with_change({"registration": {"methods": {"srnet": {"checkpoint": str(model)}}},
                                                    "evaluate": {"methods": ["initial", "srnet"]}}),
                            "-n", "--quiet", "rules")
    assert "train_registration" not in job_counts(changed)


BAD_CASES = {
    # name: (moving image, moving landmarks, expected message, stage that finds it)
    "truncated": ("bad/trunc.jpg", "bad/good.csv", "truncated", "prepare"),
    "unsupported": ("bad/slide.svs", "bad/good.csv", "unsupported or unreadable image format", "dataset"),
    "blank": ("bad/blank.png", "bad/good.csv", "no tissue found", "prepare"),
    "escape": ("../outside.jpg", "bad/good.csv", "escapes the dataset root", "dataset"),
    "missing_image": ("bad/absent.jpg", "bad/good.csv", "image file not found", "dataset"),
    "missing_landmarks": ("bad/moving.jpg", "bad/absent.csv", "landmark file not found", "dataset"),
    "landmark_columns": ("bad/moving2.jpg", "bad/cols.csv", "lacks column", "dataset"),
    "landmark_values": ("bad/moving3.jpg", "bad/values.csv", "non-numeric X value", "dataset"),
}
BAD_LANDMARKS = ("missing_landmarks", "landmark_columns", "landmark_values")
GOOD_MOVING = "good/Rat-Kidney_PanCytokeratin.jpg"


def _write_bad_dataset(root: Path, birl: Path) -> Path:
    """The real rat-kidney pair, BAD_CASES (each against the same fixed image) and a repeat of the first
    row; one of the fixed image's landmarks (shared by every pair) is moved outside the image."""
    src = birl / "rat-kidney_/scale-5pc"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    for name in ("Rat-Kidney_HE.jpg", "Rat-Kidney_PanCytokeratin.jpg", "Rat-Kidney_PanCytokeratin.csv"):
        shutil.copy(src / name, root / "good" / name)
    fixed_points = pd.read_csv(src / "Rat-Kidney_HE.csv", index_col=0)
    fixed_points.iloc[2] = [5000.0, 40.0]                # the image is 1164 px wide
    fixed_points.to_csv(root / "good/Rat-Kidney_HE.csv")
    moving = (src / "Rat-Kidney_PanCytokeratin.jpg").read_bytes()
    (root / "bad/trunc.jpg").write_bytes(moving[: len(moving) // 3])
    (root / "bad/slide.svs").write_bytes(b"not a slide\n" * 200)
    for name in ("moving.jpg", "moving2.jpg", "moving3.jpg"):
        (root / "bad" / name).write_bytes(moving)
    shutil.copy(src / "Rat-Kidney_PanCytokeratin.csv", root / "bad/good.csv")
    (root / "bad/cols.csv").write_text(",A,B\n1,10,20\n")
    (root / "bad/values.csv").write_text(",X,Y\n1,10,20\n2,ten,30\n")
    import pyvips
    rng = np.random.default_rng(0)
    blank = np.clip(242 + rng.normal(0, 2, (600, 800, 3)), 0, 255).astype(np.uint8)
    pyvips.Image.new_from_array(blank).pngsave(str(root / "bad/blank.png"))
    (root.parent / "outside.jpg").write_bytes(moving)
    fixed, fixed_lm = "good/Rat-Kidney_HE.jpg", "good/Rat-Kidney_HE.csv"
    first = [GOOD_MOVING, "good/Rat-Kidney_PanCytokeratin.csv", fixed, fixed_lm, "training"]
    rows = [first] + [[m, lm, fixed, fixed_lm, "training"] for m, lm, _, _ in BAD_CASES.values()] + [first]
    table = root / "cover.csv"
    pd.DataFrame(rows, columns=["Source image", "Source landmarks", "Target image", "Target landmarks",
                                "status"]).to_csv(table)
    return table


# initial and a learned method (srnet_noseg: no maps, so no segmentation stages) trained for a few
# iterations, after a short affine search (the pair's rotation is near 0): enough to show that bad pairs
# block neither training nor the tables
BAD_RUN = {"segmentation": {"enabled": False},
           "registration": {"affine": {"angles": 4, "flips": False, "iterations": 30},
                            "train": {"iterations": 4, "batch_size": 2, "patch": 64},
                            "infer": {"instance_steps": 0, "instance_fine_steps": 0}},
           "evaluate": {"methods": ["initial", "srnet_noseg"], "reference": "srnet_noseg"}}


def test_bad_inputs_fail_alone_and_the_tables_hold_them(tmp_path, birl):
    """A dataset of one real pair beside every kind of bad input, run as a user would (`--keep-going`):
    each problem is reported once, as one line naming the file, with no traceback; training and the
    tables go on without the failed pairs; they are listed with their reasons and scored as ANHIR
    scores a missing result; the run exits non-zero naming them; nothing partial is left."""
    root = tmp_path / "data_root" / "ds"
    table = _write_bad_dataset(root, birl)
    work = tmp_path / "work"
    work.mkdir()
    config = {"run": ["bad"], "datasets": {"bad": {"source": "local", "root": str(root), "table": str(table)}},
              **BAD_RUN}
    (work / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(work, "--configfile", str(work / "cfg.yaml"), "--keep-going")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    pairs = pd.read_csv(work / "results/bad/dataset.csv", keep_default_na=False).set_index("moving")
    logs = {p.relative_to(work).as_posix(): p.read_text() for p in (work / "logs").rglob("*.log")}
    dataset_log = logs["logs/dataset/bad.log"]

    # a repeated cover-table row: dropped with a warning naming the table and both rows
    assert len(pairs) == 1 + len(BAD_CASES) and pairs.index.is_unique
    assert f"WARNING srnet_core.datasets: {table}: row {len(BAD_CASES) + 1} repeats row 0" in dataset_log
    # landmarks outside their image: one warning naming the file, though every pair uses it
    outside = [ln for ln in dataset_log.splitlines() if "lie outside" in ln]
    assert len(outside) == 1 and "WARNING" in outside[0], outside
    assert f"{root / 'good/Rat-Kidney_HE.csv'}: 1 of 71 landmarks lie outside" in outside[0]

    failed = pd.read_csv(work / "results/bad/tables/failed_pairs.csv", keep_default_na=False).set_index("pair_id")
    assert len(failed) == len(BAD_CASES)
    per_pair = pd.read_csv(work / "results/bad/tables/pairs.csv").set_index(["pair_id", "method"])
    for name, (moving, landmarks, message, stage) in BAD_CASES.items():
        pair = pairs.loc[moving]
        row = failed.loc[pair.pair_id]
        assert row["stage"] == stage and message in row["reason"], (name, row.to_dict())
        assert row["methods"] == "initial srnet_noseg", name
        # reported once: one ERROR line naming the file, in the log of the stage that found it
        culprit = f"{root / landmarks}" if name in BAD_LANDMARKS else moving.split("/")[-1]
        log = logs["logs/dataset/bad.log" if stage == "dataset" else f"logs/prepare/bad/{pair.moving_id}.log"]
        lines = [ln for ln in log.splitlines() if "ERROR" in ln and message in ln]
        assert len(lines) == 1 and culprit in lines[0], (name, lines)
        assert result.stderr.count(message) == 1, name          # on the console too: once
        for path, text in logs.items():
            if pair.pair_id in path:
                assert "ERROR" not in text, f"{name}: reported again in {path}"
        if stage == "prepare":       # a failure record, refused by every reader with its reason
            with pytest.raises(InputError, match="holds no result: prepare failed"):
                read_prepared_attrs(work / f"results/bad/prepared/{pair.moving_id}.h5")
        else:                        # found before anything ran: nothing prepared or registered
            assert not (work / f"results/bad/prepared/{pair.moving_id}.h5").exists(), name
            assert not (work / f"results/bad/affine/{pair.pair_id}.json").exists(), name
        # scored as a missing result: the initial error for every method, robustness 0; unscorable
        # (not in the medians) when its own landmark file is the problem
        scores = per_pair.loc[pair.pair_id]
        assert scores["failed"].all(), name
        if name in BAD_LANDMARKS:
            assert not scores["scored"].any() and str(row["scored"]) == "False", name
        else:
            assert scores["scored"].all() and (scores["robustness"] == 0).all(), name
            assert (scores["rtre_median"] == scores.loc["initial", "rtre_median"]).all(), name
            assert scores["n_missing"].eq(scores["n_landmarks"]).all() and scores["seconds"].isna().all(), name

    # the good pair finished; training was not blocked
    scores = per_pair.loc[pairs.loc[GOOD_MOVING, "pair_id"]]
    assert scores["scored"].all() and not scores["failed"].any()
    assert scores.loc["srnet_noseg", "rtre_median"] < scores.loc["initial", "rtre_median"] / 2
    assert (work / "results/bad/models/srnet_noseg/model.pt").exists()
    train_log = logs["logs/train_registration/bad/srnet_noseg.log"]
    for name in ("truncated", "blank"):
        assert f"leaving out {pairs.loc[BAD_CASES[name][0], 'pair_id']}" in train_log

    # the tables: every pair in them, the failed ones listed with their reasons
    table_csv = pd.read_csv(work / "results/bad/tables/median_rtre.csv", index_col=0)
    assert table_csv.loc["All", "pairs"] == 1 + len(BAD_CASES) - len(BAD_LANDMARKS)
    anhir = pd.read_csv(work / "results/bad/tables/anhir_scores.csv").set_index(["method", "status"])
    assert (anhir.xs("all", level="status")["pairs_failed"] == len(BAD_CASES) - len(BAD_LANDMARKS)).all()
    md = (work / "results/bad/tables/median_rtre.md").read_text()
    assert f"## Failed pairs: {len(BAD_CASES)} of {len(pairs)}" in md
    assert all(f"| {pairs.loc[m, 'pair_id']} |" in md for m, *_ in BAD_CASES.values())
    submission = pd.read_csv(work / "results/bad/submission/srnet_noseg/registration-results.csv",
                             keep_default_na=False)
    assert len(submission) == len(pairs)
    assert (submission["Warped source landmarks"] != "").sum() == 1       # failed pairs: no warped landmarks

    # the last check names the failed pairs and fails the run; nothing partial is left
    check = logs["logs/check_pairs/bad.log"]
    assert f"{len(BAD_CASES)} of {len(pairs)} pairs failed" in check
    assert all(pairs.loc[m, "pair_id"] in check for m, *_ in BAD_CASES.values())
    assert "Error in rule check_pairs" in result.stderr
    assert not (work / "results/bad/tables/check_pairs.txt").exists()
    assert not list(work.rglob("*.tmp-*")), "partial outputs left behind"

    # a repaired slide: the dataset stage looks again (its header changed), then that pair and the
    # training that can now use it re-run, and the tables; the other pairs' results stay
    shutil.copy(root / "good/Rat-Kidney_PanCytokeratin.jpg", root / "bad/blank.png")
    cfg = (f"--configfile={work / 'cfg.yaml'}",)
    assert job_counts(run_snakemake(work, *cfg, "-n", "--quiet", "rules"))["dataset"] == 1
    assert run_snakemake(work, *cfg, "results/bad/dataset.csv").returncode == 0
    counts = job_counts(run_snakemake(work, *cfg, "-n", "--quiet", "rules"))
    assert counts == {"prepare": 1, "affine": 1, "train_registration": 1, "register": 3, "evaluate": 4,
                      "tables": 1, "check_pairs": 1, "submission": 1, "all": 1}, counts


def test_cover_table_missing_column_is_one_clear_error(tmp_path, birl):
    root = tmp_path / "ds"
    root.mkdir()
    table = root / "cover.csv"
    pd.DataFrame({"Source image": ["a_1/m.jpg"], "Target image": ["a_1/f.jpg"]}).to_csv(table)
    config = {"run": ["t"], "datasets": {"t": {"source": "local", "root": str(root), "table": str(table)}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, "--configfile", str(tmp_path / "cfg.yaml"))
    assert result.returncode != 0
    log = (tmp_path / "logs/dataset/t.log").read_text()
    assert f"{table}: cover table lacks required column(s)" in log
    assert not (tmp_path / "results/t/dataset.csv").exists()


def test_download_dataset_through_loopback(tmp_path, birl, http_root_server):
    """The shipped birl_samples entry, served from ../shared/data/birl on 127.0.0.1."""
    url = http_root_server(birl)
    override = {"run": ["birl_samples"], "datasets": {"birl_samples": {"url_base": url}},
                "segmentation": {"enabled": False},       # the demo run covers segmentation
                "evaluate": {"methods": ["initial"]}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(override))
    result = run_snakemake(tmp_path, "--configfile", str(tmp_path / "cfg.yaml"))
    assert result.returncode == 0, result.stderr[-4000:]
    for rel in ("rat-kidney_/scale-5pc/Rat-Kidney_HE.jpg", "pairs-imgs-lnds_histol.csv"):
        assert (tmp_path / "data/birl_samples" / rel).read_bytes() == (birl / rel).read_bytes()
    table = pd.read_csv(tmp_path / "results/birl_samples/tables/median_rtre.csv", index_col=0)
    by_hand = _initial_by_hand(birl, birl / "pairs-imgs-lnds_histol.csv").set_index("tissue")
    assert table.loc["rat-kidney", "initial"] == pytest.approx(by_hand.loc["rat-kidney", "median"], rel=1e-5)
    assert table.loc["lesions", "initial"] == pytest.approx(by_hand.loc["lesions", "median"], rel=1e-5)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, birl, http_root_server):
    url = http_root_server(birl)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    files = config["datasets"]["birl_samples"]["files"]
    files[1]["sha256"] = "0" * 64   # Rat-Kidney_HE.jpg
    override = {"run": ["birl_samples"], "datasets": {"birl_samples": {"url_base": url, "files": files}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(override))
    result = run_snakemake(tmp_path, "--configfile", str(tmp_path / "cfg.yaml"), "--keep-going")
    assert result.returncode != 0
    target = tmp_path / "data/birl_samples" / files[1]["path"]
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    log = (tmp_path / "logs/download/birl_samples" / (files[1]["path"] + ".log")).read_text()
    assert "checksum mismatch" in log and url in log
    assert (tmp_path / "data/birl_samples/lesions_/scale-5pc/Izd2-29-041-w35_HE.jpg").exists()


def test_dag_for_the_real_anhir_table(tmp_path, anhir_table):
    """The published ANHIR cover table (a small stand-in JPEG for each image, landmark files absent): the
    pair table is built and the DAG has one prepare job per distinct image, one evaluate job per pair
    and one table."""
    import pyvips
    raw = pd.read_csv(anhir_table)
    stand_in = pyvips.Image.black(16, 12, bands=3) + 200
    for rel in set(raw["Source image"]) | set(raw["Target image"]):
        (tmp_path / "ANHIR" / rel).parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_to_file(str(tmp_path / "ANHIR" / rel))
    config = {"run": ["anhir"], "datasets": {"anhir": {
        "source": "local", "root": str(tmp_path / "ANHIR"), "table": str(anhir_table),
        "missing_landmarks": "unscored"}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    cfg = (f"--configfile={tmp_path / 'cfg.yaml'}",)
    built = run_snakemake(tmp_path, *cfg, "results/anhir/dataset.csv")
    assert built.returncode == 0, built.stderr[-3000:]
    dry = run_snakemake(tmp_path, *cfg, "-n", "--quiet", "rules")
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry)
    assert (pd.read_csv(tmp_path / "results/anhir/dataset.csv", keep_default_na=False)["error"] == "").all()
    distinct = len(set(raw["Source image"]) | set(raw["Target image"]))
    assert counts["prepare"] == distinct
    assert counts["evaluate"] == 481 * 6                  # initial, affine and four learned methods
    assert counts["register"] == 481 * 5 and counts["affine"] == 481 and counts["train_registration"] == 4
    assert counts["tables"] == 1 and counts["check_pairs"] == 1 and counts["submission"] == 1


def test_srnet_on_the_real_birl_pairs_beats_initial_and_affine(birl_run):
    """The two real BIRL pairs (different stains, real deformation), the whole workflow with the
    default config: the affine step and srnet each cut the initial error by far, and srnet's median
    rTRE is below `affine`'s over all pairs and on the kidney pair. (Measured on the dev host: All
    0.00339 against 0.00359, kidney 0.00231 against 0.00275; training seeds 0-5 give All
    0.00336-0.00356 and kidney 0.00231-0.00260. On the lesions pair srnet lands from 3 % below to 5 %
    above `affine` over those seeds, so that tissue is held only to 10 %; docs/BENCHMARKS.md, "The
    suite's BIRL run at the default config".)"""
    table = pd.read_csv(birl_run / "results/birl/tables/median_rtre.csv", index_col=0)
    for tissue in ("All", "rat-kidney", "lesions"):
        assert table.loc[tissue, "affine"] < table.loc[tissue, "initial"] / 4, table
        assert table.loc[tissue, "srnet"] < table.loc[tissue, "initial"] / 4, table
    assert table.loc["All", "srnet"] < table.loc["All", "affine"], table
    assert table.loc["rat-kidney", "srnet"] < table.loc["rat-kidney", "affine"], table
    assert table.loc["lesions", "srnet"] < 1.1 * table.loc["lesions", "affine"], table


DRIFT_UNBLURRED, DRIFT_BLURRED = 1.0, 0.5     # px; measured 1.69 / 2.10 and 0.20 / 0.28 (kidney / lesions)


def test_no_resampling_drift_on_the_real_birl_pairs(birl_run):
    """Each real pair registered both ways round from the affine step (instance optimisation as
    config.yaml sets it, without L_seg): a real misalignment reverses sign when the pair is swapped,
    resampling blur's drift does not. Unblurred (sim_sigma 0) the two directions add up to
    DRIFT_UNBLURRED px on some axis; with the default blur they nearly cancel (docs/BENCHMARKS.md,
    "The resampling drift, found and removed")."""
    from srnet_core.registration.data import read_affine
    from srnet_core.registration.infer import resampling_drift
    from srnet_core.registration.train import MethodSettings
    infer = yaml.safe_load((REPO / "config.yaml").read_text())["registration"]
    res = birl_run / "results/birl"
    pairs = pd.read_csv(res / "dataset.csv", dtype=str, keep_default_na=False)
    assert len(pairs) == 2
    for p in pairs.itertuples(index=False):
        files = (str(res / "prepared" / f"{p.fixed_id}.h5"), str(res / "prepared" / f"{p.moving_id}.h5"),
                 read_affine(res / "affine" / f"{p.pair_id}.json"))
        sums = {}
        for sigma in (0.0, MethodSettings().sim_sigma):
            method = MethodSettings(lambda_smooth=infer["infer"]["instance_lambda_smooth"], sim_sigma=sigma)
            drift = resampling_drift(*files, method, infer["infer"]["instance_steps"], infer["infer"]["instance_lr"],
                                     infer["downsample"], infer["infer"]["instance_fine_steps"])
            sums[sigma] = drift.sum(axis=0)
        assert sums[0.0].max() > DRIFT_UNBLURRED, (p.pair_id, sums)
        assert np.abs(sums[MethodSettings().sim_sigma]).max() < DRIFT_BLURRED, (p.pair_id, sums)


def test_baselines_join_every_table_with_only_their_own_jobs(birl_run, tmp_path):
    """Adding ants_syn and elastix from srnet's pre-alignment, and elastix from its own initialisation
    (elastix_own), to a finished run registers the pairs with them and re-makes the tables, nothing
    upstream; they write what srnet writes and each cuts the initial error (by far from srnet's start).
    From their own start they are timed without srnet's affine step and do not wait for it (checked on
    ants_syn_own's DAG; it runs on a real pair in test_baselines.py: running it here too would double
    this test's registration time)."""
    pytest.importorskip("ants", reason="antspyx is not installed (pip install '.[baselines]')")
    pytest.importorskip("itk", reason="itk-elastix is not installed (pip install '.[baselines]')")
    baselines = ["ants_syn", "elastix", "elastix_own"]
    work = tmp_path / "run"
    shutil.copytree(birl_run, work, symlinks=True)
    cfg = yaml.safe_load((work / "cfg.yaml").read_text())
    cfg["evaluate"]["methods"] += baselines
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    dry = run_snakemake(work, f"--configfile={work / 'cfg.yaml'}", "-n", "--quiet", "rules")
    counts = job_counts(dry)
    counts.pop("all", None)
    assert counts == {"register_baseline": 6, "evaluate": 6, "tables": 1, "check_pairs": 1, "submission": 1}, \
        dry.stdout[-3000:]
    result = run_snakemake(work, f"--configfile={work / 'cfg.yaml'}")
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(work / "results/birl/tables/median_rtre.csv", index_col=0)
    assert list(table.columns) == ["pairs", "initial", "affine", "srnet"] + baselines
    pairs = pd.read_csv(work / "results/birl/tables/pairs.csv")
    for method in baselines:
        for tissue in ("All", "rat-kidney", "lesions"):
            # from their own start the lesions pair (initial 0.057) ends at 0.026 for elastix and anywhere
            # from 0.005 to 0.029 for ANTs (its affine stage lands in a different optimum from run to run)
            bound = table.loc[tissue, "initial"] / (1 if method.endswith("_own") else 4)
            assert table.loc[tissue, method] < bound, table
        for folder in sorted((work / f"results/birl/registration/{method}").iterdir()):
            timing = json.loads((folder / "timing.json").read_text())
            assert timing["method"] == method and timing["seconds_register"] > 0 and "thread" in timing["device"]
            warped = pd.read_csv(folder / "warped_landmarks.csv")
            assert len(warped) == timing["landmarks"] > 60 and np.isfinite(warped[["X", "Y"]].to_numpy()).all()
            seconds = pairs.set_index(["method", "pair_id"]).loc[(method, folder.name), "seconds"]
            if method.endswith("_own"):                  # srnet's affine step is not part of their time
                assert seconds == pytest.approx(timing["seconds_total"], rel=1e-4), (method, folder.name)
            else:
                assert seconds > timing["seconds_total"], (method, folder.name)
    scores = pd.read_csv(work / "results/birl/tables/anhir_scores.csv").set_index(["method", "status"])
    assert all(scores.loc[(m, "all"), "pairs"] == 2 for m in baselines), scores
    assert set(pd.read_csv(work / "results/birl/tables/significance.csv")["method"]) >= set(baselines)
    # without srnet's affine step's results, a pair's ants_syn_own registration is still the one job to run
    for path in (work / "results/birl/affine").glob("*.json"):
        path.unlink()
    cfg["evaluate"]["methods"].append("ants_syn_own")
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    target = f"results/birl/registration/ants_syn_own/{folder.name}/timing.json"
    dry = run_snakemake(work, f"--configfile={work / 'cfg.yaml'}", target, "-n", "--quiet", "rules")
    counts = job_counts(dry)
    counts.pop("all", None)
    assert counts == {"register_baseline": 1}, dry.stdout[-3000:]
