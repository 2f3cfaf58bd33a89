"""Shared fixtures: the real data in ../shared/data, a loopback HTTP server, Snakemake runs."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BIRL = SHARED_DATA / "birl"
ANHIR_TABLE = SHARED_DATA / "anhir" / "dataset_medium.csv"


def _need_shared() -> None:
    """Skip without ../shared (a user's clone); in CI (SRNET_REQUIRE_SHARED=1) its absence is an error."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("SRNET_REQUIRE_SHARED") == "1":
            pytest.fail(f"{SHARED_DATA} is missing but SRNET_REQUIRE_SHARED=1 (CI must run real-data tests)")
        pytest.skip(f"real shared data not found at {SHARED_DATA} (only present beside the dev checkout)")


@pytest.fixture(scope="session")
def birl() -> Path:
    _need_shared()
    return BIRL


BIRL_SHORT_RUN = {
    "run": ["birl"],
    "datasets": {"birl": {"source": "local", "root": str(BIRL), "table": "pairs-imgs-lnds_histol.csv"}},
    "segmentation": {"pretrain": {"iterations": 60}},
    "registration": {"train": {"iterations": 60, "checkpoint_every": 20}},
    "evaluate": {"methods": ["initial", "affine", "srnet"]},
}


@pytest.fixture(scope="session")
def birl_run(birl, tmp_path_factory) -> Path:
    """One complete, uninterrupted workflow run on the two real BIRL pairs with a short training
    (BIRL_SHORT_RUN); shared by the accuracy and the reliability tests. Returns its directory."""
    import yaml
    work = tmp_path_factory.mktemp("birl_run")
    (work / "cfg.yaml").write_text(yaml.safe_dump(BIRL_SHORT_RUN))
    result = run_snakemake(work, f"--configfile={work / 'cfg.yaml'}")
    assert result.returncode == 0, result.stderr[-4000:]
    return work


@pytest.fixture(scope="session")
def anhir_table() -> Path:
    _need_shared()
    return ANHIR_TABLE


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root_server():
    """Start a loopback HTTP server for a folder: `url = server(folder)`; stopped after the test."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=os.fspath(folder))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def job_counts(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Jobs per rule from the table printed by `snakemake -n --quiet rules`."""
    counts = {}
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def run_snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real workflow (this checkout's Snakefile) in workdir; output captured."""
    cmd = [sys.executable, "-m", "snakemake", "-s", os.fspath(REPO / "Snakefile"),
           "--directory", os.fspath(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ---- parallel runs (pytest-xdist: `make test` runs two workers, --dist loadgroup --no-loadscope-reorder)

# Longest first (seconds on CI's 2-core machine), so that the workers finish together instead of one
# starting the demo workflow when the other is done. Matched as node-id prefixes. xdist hands each
# worker one more unit while it has two tests or fewer queued: the demo and the SLURM test start on
# one worker each, the BIRL group (3 tests) and the brain workflow queue up behind them.
SLOWEST_FIRST = (
    "tests/test_workflow.py::test_demo_end_to_end",    # ~580 s: the default demo workflow
    "tests/test_slurm.py",                             # the demo through SLURM, mostly waiting on jobs
    "tests/test_reliability.py",                       # with the shared BIRL run (group birl_run)
    "tests/test_workflow.py::test_srnet_on_the_real_birl_pairs",
    "tests/test_workflow.py::test_baselines_join",
    "tests/test_brain_workflow.py",
    "tests/test_segmentation.py",
    "tests/test_workflow.py",
    "tests/test_demo.py",
)
# Modules whose tests share a module-scoped fixture worth computing once: one worker runs them all.
SHARED_MODULE_FIXTURES = ("test_backbones.py", "test_demo.py", "test_fgsn.py", "test_segmentation.py",
                          "test_slides.py")


@pytest.hookimpl(tryfirst=True)      # before xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, prefix in enumerate(SLOWEST_FIRST) if item.nodeid.startswith(prefix)),
                    len(SLOWEST_FIRST))

    for item in items:
        if "birl_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("birl_run"))     # one shared BIRL run, one worker
        elif item.path.name in SHARED_MODULE_FIXTURES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    items.sort(key=rank)
