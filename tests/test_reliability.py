"""Reliability promises tested against the real engine: a code change re-runs exactly the stages that
run that code; a workflow killed with SIGKILL during feature extraction and during training completes
when started again, training resumes from its checkpoint, and the tables equal those of an
uninterrupted run (every stage after FGSN pretraining computed afresh in its own folder, so also a
check that those stages are deterministic)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, job_counts, run_snakemake

pytestmark = pytest.mark.workflow

WORKFLOW_PARTS = ("Snakefile", "rules", "workflow_scripts", "srnet_core", "config.yaml", "envs", "report")


def _birl_config(path: Path, birl: Path, **overrides) -> Path:
    config = {"run": ["birl"], "datasets": {"birl": {"source": "local", "root": str(birl),
                                                     "table": "pairs-imgs-lnds_histol.csv"}}}
    config.update(overrides)
    path.write_text(yaml.safe_dump(config))
    return path


def test_code_change_reruns_exactly_the_stages_that_run_it(tmp_path, birl):
    """A copy of the workflow (its own srnet_core): editing evaluation.py re-runs evaluation and the
    tables only; editing tissue.py (reached by prepare through two imports) re-runs preparation and
    what follows; the dataset stage never re-runs."""
    wf = tmp_path / "wf"
    wf.mkdir()
    for part in WORKFLOW_PARTS:
        src = REPO / part
        (shutil.copytree(src, wf / part, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir()
         else shutil.copy(src, wf / part))
    work = tmp_path / "work"
    work.mkdir()
    cfg = _birl_config(work / "cfg.yaml", birl, segmentation={"enabled": False},
                       evaluate={"methods": ["initial"]})

    def snakemake(*args):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(wf / "Snakefile"), "--directory", str(work),
               "--cores", "2", f"--configfile={cfg}", *args]
        env = {**os.environ, "PYTHONPATH": str(wf)}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)

    done = snakemake()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake("-n"))
    with open(wf / "srnet_core/evaluation.py", "a") as f:
        f.write("\n# changed: evaluation code\n")
    assert job_counts(snakemake("-n", "--quiet", "rules")) == {"evaluate": 2, "tables": 1, "check_pairs": 1,
                                                               "all": 1}
    with open(wf / "srnet_core/tissue.py", "a") as f:
        f.write("\n# changed: tissue masks\n")
    assert job_counts(snakemake("-n", "--quiet", "rules")) == {"prepare": 4, "evaluate": 2, "tables": 1,
                                                               "check_pairs": 1, "all": 1}


def _start(workdir: Path, cfg: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", f"--configfile={cfg}", "--rerun-incomplete"]
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, what: str, limit: float = 600) -> None:
    """SIGKILL the whole workflow (snakemake and its job processes) once `ready()` holds."""
    deadline = time.monotonic() + limit
    while not ready():
        assert proc.poll() is None, f"the workflow ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {limit:.0f} s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


# What the killed run takes over from birl_run: the stages before feature extraction, FGSN
# pretraining among them (2.5 min of CI at the default 300 iterations, and never a kill point here).
KEPT_FROM_CLEAN_RUN = ("cfg.yaml", ".snakemake", "results/birl/dataset.csv", "results/birl/images.csv",
                       "results/birl/prepared", "results/birl/models/fgsn", "logs/dataset", "logs/prepare",
                       "logs/pretrain_fgsn", "benchmarks/prepare", "benchmarks/pretrain_fgsn")


def _copy_up_to_pretraining(clean: Path, work: Path) -> None:
    for part in KEPT_FROM_CLEAN_RUN:
        src = clean / part
        assert src.exists(), f"{src} missing from the clean run"
        (work / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree(src, work / part, symlinks=True) if src.is_dir() else shutil.copy2(src, work / part))


def test_killed_workflow_resumes_and_matches_an_uninterrupted_run(tmp_path, birl_run):
    """birl_run is one clean run; a run killed twice, in its own folder holding only birl_run's
    outputs up to FGSN pretraining, must give its tables. Every later output of the killed run (affine
    step, features, codebook, maps, training, inference, evaluation) is computed afresh in other
    processes, so equal tables also show that those stages are deterministic."""
    work = tmp_path / "killed"
    work.mkdir()
    _copy_up_to_pretraining(birl_run, work)
    cfg = work / "cfg.yaml"
    dry = run_snakemake(work, f"--configfile={cfg}", "-n", "--quiet", "rules")
    counts = job_counts(dry)
    assert "pretrain_fgsn" not in counts and "prepare" not in counts and counts["train_registration"] == 1, counts
    features = work / "logs/extract_features/birl"
    _kill_when(_start(work, cfg, tmp_path / "run1.log"),
               lambda: features.is_dir() and any(features.iterdir()), "feature extraction")
    checkpoint = work / "results/birl/models/srnet/checkpoints/state.pt"
    unlock = run_snakemake(work, f"--configfile={cfg}", "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    _kill_when(_start(work, cfg, tmp_path / "run2.log"), checkpoint.exists, "training checkpoint")
    assert not (work / "results/birl/models/srnet/model.pt").exists()
    assert run_snakemake(work, f"--configfile={cfg}", "--unlock").returncode == 0
    final = _start(work, cfg, tmp_path / "run3.log")
    assert final.wait(timeout=900) == 0, (tmp_path / "run3.log").read_text()[-4000:]
    train_log = (work / "logs/train_registration/birl/srnet.log").read_text()
    assert "resuming training at iteration" in train_log, train_log[-2000:]

    tables = [pd.read_csv(w / "results/birl/tables/median_rtre.csv", index_col=0) for w in (birl_run, work)]
    pd.testing.assert_frame_equal(tables[0], tables[1])      # killed twice, resumed: identical
    per_pair = [pd.read_csv(w / "results/birl/tables/pairs.csv").drop(columns=["seconds"]).sort_values(
        ["method", "pair_id"]).reset_index(drop=True) for w in (birl_run, work)]
    pd.testing.assert_frame_equal(per_pair[0], per_pair[1])
