"""The benchmark suite: srnet beside the classical baselines, by one command (not a test).

    .venv/bin/python benchmarks/bench_suite.py            # everything (about an hour on 2 CPU cores)
    make bench                                            # the same

What it runs, on this machine, in one go:
  1. the workflow on the real shared BIRL pairs (../shared/data/birl, rat kidney and lung lesions) and
     on the embedded demo dataset, with the table columns initial, affine, srnet, srnet_noseg, ants_syn
     and elastix (config.yaml's defaults otherwise): median rTRE per tissue from the workflow's own
     tables, and each stage's time and peak memory from Snakemake's `benchmark:` files;
  2. time per pair, method by method, on the same stage files and the same working resolution, one
     method after the other in this process (nothing else running): srnet's inference alone (predict
     and upsample the field), srnet with its default instance optimisation, ants_syn and elastix (2
     threads each; torch with 2 threads), and the ratio of each to ants_syn;
  3. the brain track's Table 2 (benchmarks/bench_brain.py: Dice and HD95 per method);
  4. scaling of preparation and inference with the slide's size (benchmarks/bench_scaling.py).
Writes the sections of docs/BENCHMARKS.md between their markers, and the headline table at the top of
README.md.

Reuse finished runs instead of re-running: --birl-from DIR, --demo-from DIR, --brain-from DIR, and skip
parts with --skip-brain / --skip-scaling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, write_section  # noqa: E402

START, END = "<!-- bench_suite:start -->", "<!-- bench_suite:end -->"
README_START, README_END = "<!-- headline:start -->", "<!-- headline:end -->"
SHARED_BIRL = ROOT.parent / "shared" / "data" / "birl"
METHODS = ["initial", "affine", "srnet", "srnet_noseg", "ants_syn", "elastix"]
THREADS = 2
DEFAULTS = yaml.safe_load((ROOT / "config.yaml").read_text())
INFER, BRAIN_REFLECTIONS = DEFAULTS["registration"]["infer"], DEFAULTS["brain"]["evaluate"]["reflections"]

CONFIGS = {
    "birl": {"run": ["birl"],
             "datasets": {"birl": {"source": "local", "root": str(SHARED_BIRL),
                                   "table": "pairs-imgs-lnds_histol.csv"}},
             "evaluate": {"methods": METHODS}},
    "demo": {"evaluate": {"methods": METHODS}},
}


def run_workflow(name: str, workdir: Path, cores: int) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "suite_config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIGS[name]))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", str(cores), "--configfile", str(cfg)]
    print(f"[suite] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    (workdir / "suite_run.time").write_text(f"{seconds:.1f}\n")
    return seconds


def wall_of(workdir: Path) -> float | None:
    f = workdir / "suite_run.time"
    return float(f.read_text()) if f.exists() else None


def stage_table(workdir: Path, dataset: str) -> pd.DataFrame:
    """Per rule: jobs, median and total seconds, largest peak resident memory (Snakemake benchmark files)."""
    rows = []
    for f in sorted((workdir / "benchmarks").rglob("*.tsv")):
        rel = f.relative_to(workdir / "benchmarks").parts    # rule/dataset.tsv or rule/dataset/[method/]job.tsv
        if Path(rel[1]).stem != dataset:
            continue
        rule = rel[0]
        if rule in ("register", "train_registration", "register_baseline") and len(rel) > 2:
            rule += f" ({Path(rel[2]).stem})"
        frame = pd.read_csv(f, sep="\t")
        rows.append({"rule": rule, "s": float(frame["s"].iloc[-1]), "max_rss": float(frame["max_rss"].iloc[-1])})
    frame = pd.DataFrame(rows)
    return frame.groupby("rule").agg(jobs=("s", "size"), median_s=("s", "median"), total_s=("s", "sum"),
                                     peak_mb=("max_rss", "max")).reset_index()


def pair_times(workdir: Path, dataset: str) -> pd.DataFrame:
    """Re-register every pair of a finished run, one method after the other, and time each."""
    import torch

    from srnet_core.registration.baselines import baseline_register_stage
    from srnet_core.registration.stages import register_stage
    torch.set_num_threads(THREADS)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    infer = config["registration"]["infer"]
    baselines = config["registration"]["baselines"]
    pairs = pd.read_csv(workdir / "results" / dataset / "dataset.csv", dtype=str, keep_default_na=False)
    res = workdir / "results" / dataset
    rows = []
    with tempfile.TemporaryDirectory(prefix="srnet-suite-") as tmp:
        def outs(tag):
            return {f"out_{k}": f"{tmp}/{tag}.{k}" for k in ("field", "landmarks", "overlay", "timing")}

        for n, pair in enumerate(pairs.itertuples(index=False)):
            if pair.error:
                continue
            common = {"fixed_prepared": str(res / "prepared" / f"{pair.fixed_id}.h5"),
                      "moving_prepared": str(res / "prepared" / f"{pair.moving_id}.h5"),
                      "affine": str(res / "affine" / f"{pair.pair_id}.json"), "pair_id": pair.pair_id,
                      "moving_landmarks": pair.moving_landmarks_path, "missing_landmarks": "unscored"}
            srnet = {**common, "method_name": "srnet", "model": str(res / "models/srnet/model.pt"), "method": {},
                     "codebook": str(res / "segmentation/codebook.h5"),
                     "fixed_seg": str(res / "segmentation" / f"{pair.fixed_id}.h5"),
                     "moving_seg": str(res / "segmentation" / f"{pair.moving_id}.h5"),
                     "downsample": config["registration"]["downsample"],
                     **{k: v for k, v in infer.items() if k not in ("instance_steps", "warp_slide")}}
            if n == 0:                                   # warm-up: first-call costs are not per pair
                register_stage(**srnet, **outs("warm"), instance_steps=0)
            plain = register_stage(**srnet, **outs("plain"), instance_steps=0)
            tuned = register_stage(**srnet, **outs("tuned"), instance_steps=infer["instance_steps"])
            row = {"pair": pair.pair_id, "srnet (inference)": plain["seconds_register"],
                   f"srnet (+{infer['instance_steps']}+{infer['instance_fine_steps']} instance steps)":
                       tuned["seconds_register"],
                   "srnet load": plain["seconds_load"]}
            for name in ("ants_syn", "elastix"):
                t = baseline_register_stage(**common, method_name=name, settings=baselines[name], threads=THREADS,
                                            **outs(name))
                row[name] = t["seconds_register"]
            print(f"[suite] {dataset} {pair.pair_id}: " + ", ".join(f"{k} {v:.2f}s" for k, v in row.items()
                                                                    if k != "pair"), flush=True)
            rows.append(row)
    return pd.DataFrame(rows)


def ants_repeatability(workdir: Path, dataset: str, repeats: int) -> pd.DataFrame:
    """Median rTRE of each pair over `repeats` fresh ants_syn runs with the same seed and settings
    (antspyx does not reproduce its result run to run; this says by how much)."""
    from srnet_core.evaluation import evaluate_pair
    from srnet_core.h5io import read_prepared_attrs
    from srnet_core.registration.baselines import baseline_register_stage
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    pairs = pd.read_csv(workdir / "results" / dataset / "dataset.csv", dtype=str, keep_default_na=False)
    res = workdir / "results" / dataset
    rows = []
    with tempfile.TemporaryDirectory(prefix="srnet-repeat-") as tmp:
        for pair in pairs.itertuples(index=False):
            attrs = read_prepared_attrs(res / "prepared" / f"{pair.fixed_id}.h5")
            size = (int(attrs["full_width"]), int(attrs["full_height"]))
            for run in range(repeats):
                outs = {f"out_{k}": f"{tmp}/r.{k}" for k in ("field", "landmarks", "overlay", "timing")}
                baseline_register_stage(fixed_prepared=str(res / "prepared" / f"{pair.fixed_id}.h5"),
                                        moving_prepared=str(res / "prepared" / f"{pair.moving_id}.h5"),
                                        affine=str(res / "affine" / f"{pair.pair_id}.json"), pair_id=pair.pair_id,
                                        method_name="ants_syn", settings=config["registration"]["baselines"]["ants_syn"],
                                        threads=THREADS, moving_landmarks=pair.moving_landmarks_path, **outs)
                _, summary = evaluate_pair(pair.fixed_landmarks_path, outs["out_landmarks"], size,
                                           moving_landmarks=pair.moving_landmarks_path)
                rows.append({"tissue": pair.tissue, "run": run, "rtre_median": summary["rtre_median"]})
                print(f"[suite] ants_syn repeat {run} {pair.tissue}: {summary['rtre_median']:.5f}", flush=True)
    frame = pd.DataFrame(rows)
    all_ = frame.groupby("run")["rtre_median"].median().rename("All")
    return pd.concat([frame.pivot(index="run", columns="tissue", values="rtre_median"), all_], axis=1)


def rtre_table(workdir: Path, dataset: str) -> pd.DataFrame:
    return pd.read_csv(workdir / "results" / dataset / "tables" / "median_rtre.csv", index_col=0)


def fmt_table(frame: pd.DataFrame, digits: int = 5) -> list[str]:
    cols = list(frame.columns)
    lines = ["| tissue | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in frame.iterrows():
        best = min(row[c] for c in cols if c not in ("initial",))
        cells = [(f"**{row[c]:.{digits}f}**" if row[c] == best else f"{row[c]:.{digits}f}") for c in cols]
        lines.append(f"| {idx} | " + " | ".join(cells) + " |")
    return lines


def timing_lines(times: pd.DataFrame) -> tuple[list[str], dict]:
    cols = [c for c in times.columns if c not in ("pair", "srnet load")]
    med = {c: statistics.median(times[c]) for c in cols}
    ref = med["ants_syn"]
    lines = ["| method | median s per pair | pairs | ants_syn / method |", "|---|---|---|---|"]
    for c in cols:
        lines.append(f"| {c} | {med[c]:.3f} | {len(times)} | {ref / med[c]:.1f}x |")
    return lines, med


def targets(tables: dict, med: dict) -> list[str]:
    birl = tables["birl"].loc["All"]
    better = min(birl["ants_syn"], birl["elastix"])
    srnet = birl["srnet"]
    acc = ("PASS" if srnet <= better else f"MISS ({srnet / better - 1:.0%} above the better baseline, "
           f"{'ants_syn' if birl['ants_syn'] <= birl['elastix'] else 'elastix'})")
    plain = next(v for k, v in med.items() if k == "srnet (inference)")
    tuned = next(v for k, v in med.items() if k.startswith("srnet (+"))
    speed = med["ants_syn"] / plain
    elastix = med["elastix"]
    tuned_verdict = "PASS" if tuned < elastix else f"MISS ({tuned / elastix - 1:.0%} slower)"
    return [f"- srnet median rTRE on the real BIRL pairs (All) {srnet:.5f} vs the better baseline {better:.5f}: "
            f"**{acc}**.",
            f"- srnet inference without instance optimisation {speed:.0f}x faster than ants_syn per pair (target "
            f">= 20x): **{'PASS' if speed >= 20 else 'MISS'}**.",
            f"- srnet with instance optimisation {tuned:.2f} s per pair vs elastix {elastix:.2f} s (target: "
            f"faster): **{tuned_verdict}**."]


def brain_summary(workdir: Path) -> pd.DataFrame | None:
    f = workdir / "results" / "mni" / "tables" / "table2.csv"
    return pd.read_csv(f) if f.exists() else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, help="where the runs go (default: a new temporary folder)")
    ap.add_argument("--birl-from", type=Path)
    ap.add_argument("--demo-from", type=Path)
    ap.add_argument("--brain-from", type=Path)
    ap.add_argument("--skip-brain", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--ants-repeats", type=int, default=5, help="fresh ants_syn runs per BIRL pair (0 = none)")
    args = ap.parse_args(argv)
    if not SHARED_BIRL.is_dir():
        raise SystemExit(f"the suite needs the real BIRL pairs at {SHARED_BIRL}")
    base = args.workdir or Path(tempfile.mkdtemp(prefix="srnet-suite-"))
    dirs = {"birl": args.birl_from or base / "birl", "demo": args.demo_from or base / "demo"}
    for name, d in dirs.items():
        if not (args.birl_from if name == "birl" else args.demo_from):
            run_workflow(name, d, args.cores)
    tables = {name: rtre_table(d, name)[METHODS] for name, d in dirs.items()}
    stages = {name: stage_table(d, name) for name, d in dirs.items()}
    times = pd.concat([pair_times(d, name).assign(dataset=name) for name, d in dirs.items()], ignore_index=True)
    (base / "pair_times.csv").write_text(times.to_csv(index=False))
    tlines, med = timing_lines(times.drop(columns="dataset"))
    repeat = ants_repeatability(dirs["birl"], "birl", args.ants_repeats) if args.ants_repeats else None
    brain_dir = args.brain_from or base / "brain"
    if not args.skip_brain:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_brain.py")]
        cmd += ["--from", str(args.brain_from)] if args.brain_from else ["--workdir", str(brain_dir), "--baselines"]
        subprocess.run(cmd, check=True)
    if not args.skip_scaling:
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scaling.py"), "--write",
                        "--json", str(base / "scaling.json")], check=True)
    brain = brain_summary(brain_dir)
    today = dt.date.today().isoformat()
    import torch
    versions = (f"torch {torch.__version__}, antspyx {_version('antspyx')}, itk-elastix {_version('itk-elastix')}; "
                f"{THREADS} threads per method")
    lines = [START, "## srnet beside ANTs SyN and elastix (`benchmarks/bench_suite.py`)", "",
             f"Run {today} on {machine()}; {versions}. No GPU.", "",
             "Accuracy: median rTRE per tissue from the workflow's own tables, config.yaml defaults (srnet: "
             f"300 training iterations on the dataset's pairs, {INFER['instance_steps']} instance-optimisation "
             f"steps per pair on the registration grid and {INFER['instance_fine_steps']} on the 2x finer grid; "
             "ants_syn: affine then SyN with CC radius 4, 40/20/0 iterations; elastix: affine then B-spline, "
             "3 levels x 256 iterations, 16 px final grid). All baselines start from srnet's affine "
             "pre-alignment and see the same tissue-density images at the same working resolution "
             "(longest side 1,024 px). Best registered column in bold.", ""]
    for name in ("birl", "demo"):
        label = ("Real BIRL pairs (`../shared/data/birl`: rat kidney H&E <- PanCytokeratin, lung lesions H&E "
                 "<- proSPC, 5 % scale)" if name == "birl" else "Embedded demo dataset (`make demo`)")
        wall = wall_of(dirs[name])
        lines += [f"### {label}", "", *fmt_table(tables[name]), "",
                  f"Whole workflow run: {wall / 60:.1f} min." if wall else "", ""]
    lines += ["### Time per pair (same stage files, one method at a time, BIRL and demo pairs together)", "",
              *tlines, "", "srnet's times are the registration alone (model and images loaded before; the one-off "
              "load was a median " + f"{statistics.median(times['srnet load']):.2f} s); the baselines' times are "
              "the tool's registration plus turning its transform into srnet's dense field.", "",
              "### Against the targets", "", *targets(tables, med), ""]
    if repeat is not None:
        lines += [f"### How much ants_syn moves between runs ({len(repeat)} fresh runs, same seed, BIRL pairs)", "",
                  "| | " + " | ".join(repeat.columns) + " |", "|---" * (len(repeat.columns) + 1) + "|"]
        for stat in ("min", "median", "max"):
            lines.append(f"| {stat} | " + " | ".join(f"{getattr(repeat[c], stat)():.5f}" for c in repeat.columns)
                         + " |")
        srnet_all = tables["birl"].loc["All", "srnet"]
        lines += ["", "srnet (deterministic for its training seed; see \"BIRL across training seeds\" for other "
                      f"seeds) All = {srnet_all:.5f}: below ants_syn's All in "
                  f"{int((repeat['All'] > srnet_all).sum())} of {len(repeat)} runs, equal in "
                  f"{int((repeat['All'] == srnet_all).sum())}.", ""]
    for name in ("birl", "demo"):
        lines += [f"### Stage time and peak memory, {name} run (Snakemake `benchmark:` files)", "",
                  "| rule | jobs | median s | total s | peak MB |", "|---|---|---|---|---|"]
        for r in stages[name].itertuples(index=False):
            lines.append(f"| {r.rule} | {r.jobs} | {r.median_s:.2f} | {r.total_s:.1f} | {r.peak_mb:.0f} |")
        lines.append("")
    lines.append(END)
    write_section("\n".join(lines) + "\n", START, END)
    headline(tables, med, brain, today)
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def headline(tables: dict, med: dict, brain: pd.DataFrame | None, today: str) -> None:
    birl, demo = tables["birl"], tables["demo"]
    cols = METHODS
    lines = [README_START, f"**Headline** (`make bench`, {today}, {machine().split(',')[0]}, 2 CPU cores, no GPU; "
             "details in [docs/BENCHMARKS.md](docs/BENCHMARKS.md)): median rTRE, lower is better.", "",
             "| data | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, frame in (("BIRL rat kidney (real)", birl.loc[["rat-kidney"]]), ("BIRL lesions (real)",
                         birl.loc[["lesions"]]), ("BIRL all (real)", birl.loc[["All"]]),
                         ("demo all", demo.loc[["All"]])):
        row = frame.iloc[0]
        best = min(row[c] for c in cols if c != "initial")
        lines.append(f"| {label} | " + " | ".join(f"**{row[c]:.4f}**" if row[c] == best else f"{row[c]:.4f}"
                                                  for c in cols) + " |")
    srnet_all, affine_all = birl.loc["All", "srnet"], birl.loc["All", "affine"]
    lines += ["", f"BIRL all to more digits: srnet {srnet_all:.6f} against `affine` {affine_all:.6f} "
              f"({(srnet_all / affine_all - 1) * 100:+.2f} %); lesions srnet {birl.loc['lesions', 'srnet']:.5f} "
              f"against `affine` {birl.loc['lesions', 'affine']:.5f}."]
    plain = med["srnet (inference)"]
    tuned = next(v for k, v in med.items() if k.startswith("srnet (+"))
    lines += ["", f"Time per pair (1,024 px working images, CPU): srnet {plain:.2f} s, srnet with instance "
              f"optimisation {tuned:.2f} s, ants_syn {med['ants_syn']:.1f} s, elastix {med['elastix']:.1f} s."]
    if brain is not None:
        lines.append("")
        lines.append("Brain slices (MNI152 + AAL atlas, simulated deformations, test pairs): mean Dice / HD95 "
                     + ", ".join(f"{r.method} {r.dice_percent:.1f} % / {r.hd95_mm:.2f} mm" for r in brain.itertuples())
                     + f" (networks with `brain.evaluate.reflections: {BRAIN_REFLECTIONS}`).")
    lines.append(README_END)
    readme = ROOT / "README.md"
    text = readme.read_text()
    block = "\n".join(lines)
    if README_START in text:
        head, rest = text.split(README_START, 1)
        text = head + block + rest.split(README_END, 1)[1]
    else:
        first_break = text.index("\n\n", text.index("\n\n") + 2)       # after the first paragraph
        text = text[:first_break] + "\n\n" + block + text[first_break:]
    readme.write_text(text)
    print("updated README.md")


if __name__ == "__main__":
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(THREADS))
    sys.exit(main())
