"""Table 2 of the brain MRI track on the shared MNI template, by one command, with its cost.

    python benchmarks/bench_brain.py                 # runs `snakemake brain --cores 2` in a fresh folder
    python benchmarks/bench_brain.py --from DIR      # summarises a finished run in DIR instead
                                                     # (DIR/brain_run.time: the wall seconds, if measured)
    python benchmarks/bench_brain.py --baselines     # adds the ants_syn and elastix columns

Writes the section between `<!-- bench_brain:start -->` and `<!-- bench_brain:end -->` in
docs/BENCHMARKS.md: the machine, the command, wall time, the time of each stage (Snakemake's
benchmark files), and Table 2 (the workflow's own table2.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_section  # noqa: E402

sys.path.insert(0, str(ROOT))
from srnet_core.names import BASELINES  # noqa: E402

START, END = "<!-- bench_brain:start -->", "<!-- bench_brain:end -->"


def run(workdir: Path, cores: int, baselines: bool) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "snakemake", "brain", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores)]
    brain = yaml.safe_load((ROOT / "config.yaml").read_text())["brain"]
    # config.yaml's volume paths are relative to the repository (../shared/...); the run is elsewhere
    datasets = {name: {**ds, "volumes": [{k: str((ROOT / v).resolve()) if v else v for k, v in vol.items()}
                                         for vol in ds.get("volumes") or []]}
                for name, ds in brain["datasets"].items()}
    methods = brain["evaluate"]["methods"] + (list(BASELINES) if baselines else [])
    cfg = workdir / "bench_brain_config.yaml"
    cfg.write_text(yaml.safe_dump({"brain": {"datasets": datasets, "evaluate": {"methods": methods}}}))
    cmd += ["--configfile", str(cfg)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - started
    (workdir / "brain_run.time").write_text(f"{seconds:.1f}\n")
    return seconds


def stage_times(workdir: Path, dataset: str) -> pd.DataFrame:
    """One row per brain job of `dataset`: benchmarks/<rule>/<dataset>.tsv or benchmarks/<rule>/<dataset>/<method>.tsv."""
    rows = []
    for stage in sorted((workdir / "benchmarks").glob("brain_*")):
        files = [(dataset, stage / f"{dataset}.tsv")] + [(f.stem, f) for f in sorted((stage / dataset).glob("*.tsv"))]
        for job, f in files:
            if f.exists():
                frame = pd.read_csv(f, sep="\t")
                rows.append({"stage": stage.name, "job": job, "seconds": float(frame["s"].iloc[-1]),
                             "peak_rss_mb": float(frame["max_rss"].iloc[-1])})
    return pd.DataFrame(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=Path, help="a folder holding a finished `brain` run")
    parser.add_argument("--dataset", default="mni")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="run in this folder (default: a new temporary one)")
    parser.add_argument("--baselines", action="store_true", help=f"also the columns {', '.join(BASELINES)}")
    args = parser.parse_args()
    if args.source:
        workdir = args.source
        timing = workdir / "brain_run.time"
        wall = float(timing.read_text()) if timing.exists() else None
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="srnet-brain-"))
        wall = run(workdir, args.cores, args.baselines)
    table_md = (workdir / "results" / args.dataset / "tables" / "table2.md").read_text()
    stages = stage_times(workdir, args.dataset)
    lines = [START, "## Brain MRI track: Table 2 on the shared MNI template (`benchmarks/bench_brain.py`)", "",
             f"- Machine: {machine()}",
             f"- Command: `snakemake brain --cores {args.cores}` with config.yaml's defaults (brain.datasets.mni: "
             "`../shared/data/brain/mni.nii.gz` + `mnia.nii.gz`, the 1 mm MNI152 T1 template and the 116-region "
             "AAL atlas; axial slices 40..127 every 3rd, 2x in-plane zoom to 2 mm pixels, 3 simulated "
             "deformations of up to 10 mm per slice; 1,500 training iterations per method on CPU"
             + (f"; plus the baselines {', '.join(BASELINES)} with registration.baselines' settings)"
                if any(b in table_md for b in BASELINES) else ")"),
             f"- Wall time of the whole run: {wall / 60:.1f} min" if wall else "- Wall time: not measured",
             "", "Time per stage (Snakemake `benchmark:` files, seconds, peak resident memory MB):", "",
             "| stage | job | s | peak MB |", "|---|---|---|---|"]
    for r in stages.itertuples(index=False):
        lines.append(f"| {r.stage} | {r.job} | {r.seconds:.1f} | {r.peak_rss_mb:.0f} |")
    lines += ["", "Table 2 as the workflow wrote it (`results/mni/tables/table2.md`):", "",
              table_md.replace("\n# ", "\n### ").replace("## ", "#### ").lstrip("# ").strip(), END]
    write_section("\n".join(lines) + "\n", START, END)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
