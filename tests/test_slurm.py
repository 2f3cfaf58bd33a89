"""The demo dataset (its ihc-colon pairs) end to end through profiles/slurm, on a throwaway one-node SLURM cluster.

tests/slurm_cluster.py installs (apt-get, root) and starts slurmctld, slurmd and munged for the session
and stops them afterwards. Without root or apt-get the test skips, unless SRNET_REQUIRE_SLURM=1 (CI),
which turns the skip into a failure. `-m "not slurm"` deselects it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

import slurm_cluster
from conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

# Small and fast: the demo's ihc-colon pairs (2 pairs, 3 images: every rule, a third of the jobs;
# the demo workflow test runs all of them), few training iterations, few refinement steps, one refined
# affine start, three reference sets for the gap statistic, one learned method.
SMALL_CONFIG = {
    "datasets": {"demo": {"tissues": ["ihc-colon"]}},
    "segmentation": {"pretrain": {"iterations": 10}, "clustering": {"references": 3}},
    "registration": {"affine": {"refine_top": 1, "iterations": 50},
                     "train": {"iterations": 20}, "infer": {"instance_steps": 10}},
    "evaluate": {"methods": ["initial", "affine", "srnet"]},
}
# Light rules that run on the node running Snakemake (the Snakefile's `localrules`), in this run.
LOCAL_RULES = {"all", "demo_dataset", "dataset", "evaluate", "segmentation_done", "tables", "check_pairs",
               "submission"}
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")


@pytest.fixture(scope="session")
def slurm():
    """The running test cluster; stopped at the end if this session started it."""
    required = os.environ.get("SRNET_REQUIRE_SLURM") == "1"
    try:
        started = slurm_cluster.start()
    except slurm_cluster.ClusterUnavailable as exc:
        if required:
            pytest.fail(f"SRNET_REQUIRE_SLURM=1 but no SLURM test cluster can run here: {exc}")
        pytest.skip(f"no SLURM test cluster here (needs root and apt-get, or SLURM installed): {exc}")
    yield
    if started:
        slurm_cluster.stop()


def _partitions(slurm_ids: list[str]) -> dict[str, str]:
    """SLURM job id -> partition, from slurmctld (finished jobs stay listed for MinJobAge)."""
    proc = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%P", "-j", ",".join(slurm_ids)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return dict(line.split("|") for line in proc.stdout.split())


def test_demo_through_slurm_profile(slurm, tmp_path):
    profile = slurm_cluster.write_test_profile(tmp_path / "profile")
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SMALL_CONFIG))
    cmd = [sys.executable, "-m", "snakemake", "-s", os.fspath(REPO / "Snakefile"), "--directory", os.fspath(tmp_path),
           "--profile", os.fspath(profile), "--configfile", os.fspath(tmp_path / "small.yaml")]
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    elapsed = time.monotonic() - started
    print(f"\nSLURM demo run: {elapsed:.0f} s")
    (tmp_path / "snakemake.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]

    table = pd.read_csv(tmp_path / "results/demo/tables/median_rtre.csv", index_col=0)
    assert list(table.index) == ["All", "ihc-colon"]
    assert list(table.columns) == ["pairs", "initial", "affine", "srnet"]
    assert list(table["pairs"]) == [2, 2]
    assert table.loc["All", "srnet"] < table.loc["All", "initial"]

    # Every job went through sbatch (the `all` target runs locally); each SLURM log (kept by the test
    # profile) is written by the job step's snakemake and names the rule it ran, and the jobs the main
    # process saw finish are exactly the steps run inside SLURM jobs.
    output = result.stdout + result.stderr
    logdir = (tmp_path / ".snakemake/slurm_logs").resolve()
    submitted = [(slurm_id, Path(log)) for _, slurm_id, log in SUBMITTED.findall(output)]
    assert submitted and all(log.is_relative_to(logdir) for _, log in submitted)
    jobs = []                                   # (rule, wildcards, slurm id, log); logs: rule_<rule>/<wildcards>/
    for slurm_id, log in submitted:
        rule = log.relative_to(logdir).parts[0].removeprefix("rule_")
        text = log.read_text()
        steps = re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", text, flags=re.M)
        assert "--executor slurm-jobstep" in text and set(steps) == {rule}, (log, steps)
        jobs.append((rule, log.parent.name, slurm_id, log))
    # The light rules (the Snakefile's `localrules`) ran in the main process, every other job in SLURM.
    finished = sorted(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", output))
    ran_locally = re.findall(r"^local(?:rule|checkpoint) (\w+):", output, flags=re.M)
    assert set(ran_locally) == LOCAL_RULES, ran_locally
    assert sorted(rule for rule, *_ in jobs) == [r for r in finished if r not in LOCAL_RULES], "jobs outside SLURM"
    rules = {rule for rule, *_ in jobs}
    for rule in ("prepare", "pretrain_fgsn", "extract_features", "fit_codebook", "segment",
                 "affine", "train_registration", "register"):
        assert rule in rules, f"no SLURM job for rule {rule}"
    train_log = next(log for rule, _, _, log in jobs if rule == "train_registration").read_text()
    assert "1 of 1 steps (100%) done" in train_log
    import snakemake
    assert os.path.dirname(snakemake.__file__) in train_log, "the job did not run this environment's snakemake"

    # GPU rules went to the gpu partition, the rest (and the affine `register` jobs) to cpu.
    partitions = _partitions([slurm_id for _, _, slurm_id, _ in jobs])
    for rule, wildcards, slurm_id, log in jobs:
        gpu = rule in ("pretrain_fgsn", "extract_features", "train_registration") or (
            rule == "register" and not wildcards.startswith("demo_affine_"))
        assert partitions[slurm_id] == ("gpu" if gpu else "cpu"), (rule, wildcards, partitions[slurm_id])
