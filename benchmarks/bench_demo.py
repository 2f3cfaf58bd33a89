"""Time `make demo` from a fresh clone, install excluded.

Clones this repository into a temporary folder, points its .venv at an existing, installed venv
(default: this checkout's .venv) so that only the workflow is timed, and runs `make demo`.
Usage: .venv/bin/python benchmarks/bench_demo.py [--venv .venv]
"""

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", default=str(REPO / ".venv"))
    args = parser.parse_args()
    venv = Path(args.venv).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "srnet"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        os.symlink(venv, clone / ".venv")
        (venv / ".srnet-installed").touch()          # installed already: make skips the install step
        started = time.perf_counter()
        result = subprocess.run(["make", "demo"], cwd=clone, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
        table = (clone / "results/demo/tables/median_rtre.md").read_text()
    print(f"make demo (install excluded): {elapsed:.1f} s on {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}\n\n{table}")


if __name__ == "__main__":
    main()
