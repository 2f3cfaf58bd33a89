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


BIRL_RUN = {
    "run": ["birl"],
    "datasets": {"birl": {"source": "local", "root": str(BIRL), "table": "pairs-imgs-lnds_histol.csv"}},
    "evaluate": {"methods": ["initial", "affine", "srnet"]},
}


@pytest.fixture(scope="session")
def birl_run(birl, tmp_path_factory) -> Path:
    """One complete, uninterrupted workflow run on the two real BIRL pairs with config.yaml's defaults
    (BIRL_RUN: only the dataset and the table's columns are set); shared by the accuracy, drift,
    baseline and reliability tests. Returns its directory."""
    import yaml
    work = tmp_path_factory.mktemp("birl_run")
    (work / "cfg.yaml").write_text(yaml.safe_dump(BIRL_RUN))
    result = run_snakemake(work, f"--configfile={work / 'cfg.yaml'}")
    assert result.returncode == 0, result.stderr[-4000:]
    return work


@pytest.fixture(scope="session")
def lesion1() -> Path:
    """Three real cross-stain pairs of ANHIR lung-lesion_1 (He, CD31, Cc10) with expert landmarks."""
    _need_shared()
    return SHARED_DATA / "lesion1"


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
