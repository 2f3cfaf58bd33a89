"""The classical libraries' own affine registration on the five real pairs: the reference srnet's affine
pre-alignment is measured against (not a test; never run by pytest).

Target it serves (issue "affine pre-alignment"): on the five real pairs together, srnet's `affine`
within 1.2x of the better of ANTs' and elastix's own affine stages.

What it does: for each real cross-stain pair with expert landmarks in ../shared/data (BIRL rat-kidney
HE <- PanCytokeratin, BIRL lesions HE <- proSPC, lung-lesion_1 He <- CD31, He <- Cc10, CD31 <- Cc10),
reads both images at 1,024 px on the longest side (srnet_core.slides.read_working), makes their tissue
densities (srnet_core.tissue.tissue_mask, srnet_core.registration.affine.tissue_density: what srnet's
pre-alignment sees), and registers them with `srnet_core.registration.baselines.affine_own`: ANTs
`type_of_transform="Affine"` and elastix's default affine map, each with its own initialisation and
defaults, both images placed in full-resolution px (the pairs' images differ in pixel size). Scores
per pair the median rTRE (landmark error / fixed image's full-resolution diagonal, median over the
landmarks; moving landmarks mapped into the fixed frame) of no registration (the identity in full-res
px), ANTs' affine and elastix's affine, and the seconds of each registration (2 ITK threads, after an
untimed warm-up of each library). Both libraries sample their metric at random, and ANTs' result varies
from run to run even with the same seed (the lesions pair: median rTRE 0.009 to 0.036): each library
runs 5 times per pair (seeds 0-4), and a pair's figure is the median of the 5, with their range.

    .venv/bin/python benchmarks/bench_baseline_affine.py --write
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, machine, write_section  # noqa: E402
from srnet_core.coords import full_to_work, work_to_full  # noqa: E402
from srnet_core.landmarks import read_landmarks  # noqa: E402
from srnet_core.registration.affine import tissue_density  # noqa: E402
from srnet_core.registration.baselines import affine_own, identity_affine  # noqa: E402
from srnet_core.slides import read_working  # noqa: E402
from srnet_core.tissue import tissue_mask  # noqa: E402

START, END = "<!-- baseline-affine:start -->", "<!-- baseline-affine:end -->"
DATA = ROOT.parent / "shared" / "data"
TABLES = [("birl", "pairs-imgs-lnds_histol.csv"), ("lesion1", "dataset.csv")]
LIBRARIES = {"ANTs": "ants_syn", "elastix": "elastix"}
MAX_SIDE, THREADS, SEEDS = 1024, 2, (0, 1, 2, 3, 4)


def real_pairs() -> list[dict]:
    pairs = []
    for folder, table in TABLES:
        root = DATA / folder
        with open(root / table, newline="") as f:
            for row in csv.DictReader(f):
                fixed, moving = root / row["Target image"], root / row["Source image"]
                pairs.append({"name": f"{moving.stem} -> {fixed.stem}", "fixed": fixed, "moving": moving,
                              "fixed_landmarks": root / row["Target landmarks"],
                              "moving_landmarks": root / row["Source landmarks"]})
    return pairs


def load(pair: dict) -> dict:
    def side(path):
        rgb, info, scale = read_working(path, max_side=MAX_SIDE)
        return tissue_density(rgb, tissue_mask(rgb, source=str(path))[0]), scale, (info.width, info.height)
    (fixed, fixed_scale, fixed_size), (moving, moving_scale, _) = side(pair["fixed"]), side(pair["moving"])
    lf, lm = read_landmarks(pair["fixed_landmarks"]), read_landmarks(pair["moving_landmarks"])
    n = min(len(lf), len(lm))                     # ANHIR compares the first min(n) points
    return {**pair, "fixed_density": fixed, "moving_density": moving, "fixed_scale": fixed_scale,
            "moving_scale": moving_scale, "diagonal": float(np.hypot(*fixed_size)),
            "lf": lf[:n], "lm": lm[:n], "shape": fixed.shape}


def median_rtre(pair: dict, matrix: np.ndarray) -> float:
    """Moving landmarks through the inverse of `matrix` (fixed working px -> moving working px) into
    the fixed frame; median error over the landmarks / the fixed image's full-resolution diagonal."""
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    q = full_to_work(pair["lm"], pair["moving_scale"])
    mapped = work_to_full(q @ inverse[:, :2].T + inverse[:, 2], pair["fixed_scale"])
    return float(np.median(np.hypot(*(mapped - pair["lf"]).T))) / pair["diagonal"]


def warm_up(pair: dict) -> None:
    """Load each library's modules (itk loads lazily: seconds on first use), untimed."""
    small = pair["fixed_density"][::8, ::8]
    for name in LIBRARIES.values():
        affine_own(name, small, small, (1.0, 1.0), (1.0, 1.0), threads=THREADS)


def run(pairs: list[dict]) -> list[dict]:
    rows = []
    for pair in pairs:
        row = {"pair": pair["name"], "landmarks": len(pair["lf"]), "shape": pair["shape"],
               "none": median_rtre(pair, identity_affine(pair["fixed_scale"], pair["moving_scale"]))}
        for label, name in LIBRARIES.items():
            for seed in SEEDS:
                t0 = time.perf_counter()
                matrix = affine_own(name, pair["fixed_density"], pair["moving_density"], pair["fixed_scale"],
                                    pair["moving_scale"], seed=seed, threads=THREADS)
                row[(label, seed, "s")] = time.perf_counter() - t0
                row[(label, seed)] = median_rtre(pair, matrix)
                print(f"[baseline-affine] {pair['name']}: {label} seed {seed} median rTRE {row[(label, seed)]:.5f} "
                      f"({row[(label, seed, 's')]:.1f} s)", flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict], load: tuple[float, float]) -> str:
    names = {"ANTs": "ANTs' own affine", "elastix": "elastix's own affine"}
    for r in rows:
        for k in names:
            runs = [r[(k, seed)] for seed in SEEDS]
            r[k] = (statistics.median(runs), min(runs), max(runs))
            r[(k, "s")] = statistics.median(r[(k, seed, "s")] for seed in SEEDS)
    lines = ["## Classical libraries' own affine registration: the reference for srnet's pre-alignment "
             "(bench_baseline_affine.py)", "",
             f"Run {dt.date.today().isoformat()} on {machine()}; antspyx {version('antspyx')}, itk-elastix "
             f"{version('itk-elastix')}, {THREADS} ITK threads, after an untimed warm-up of each library; load "
             f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
             "Data: the five real cross-stain pairs with expert landmarks in `../shared/data` (BIRL rat-kidney "
             "HE <- PanCytokeratin, BIRL lesions HE <- proSPC, lung-lesion_1 He <- CD31, He <- Cc10, "
             f"CD31 <- Cc10), {MAX_SIDE} px working images (longest side), tissue densities "
             "(`tissue_mask`, `tissue_density`: what srnet's pre-alignment sees).",
             "Methods (`srnet_core.registration.baselines.affine_own`): ANTs `ants.registration(type_of_transform="
             "\"Affine\")` with its defaults (centre-of-mass initial transform, Mattes MI), elastix's default "
             "affine map (4 resolutions, 256 iterations) with `AutomaticTransformInitialization` "
             "(CenterOfGravity); both images placed in full-resolution px (their pixel sizes differ). "
             "No registration = the identity in full-resolution px.",
             "Score: median rTRE per pair (landmark error / fixed image's full-resolution diagonal, median "
             "over the landmarks, moving landmarks mapped into the fixed frame). Each library runs "
             f"{len(SEEDS)} times per pair (seeds {SEEDS[0]}-{SEEDS[-1]}; ANTs varies between runs even with "
             "one seed): the median of the runs, their range in brackets. Seconds: median of the runs, one "
             "registration each (densities already made).", "",
             "| pair | landmarks | no registration | " + " | ".join(names.values()) + " | "
             + " | ".join(f"{k} s" for k in names) + " |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[k][0]:.4f} [{r[k][1]:.4f}-{r[k][2]:.4f}]" for k in names]
        lines.append(f"| {r['pair']} | {r['landmarks']} | {r['none']:.4f} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{r[(k, 's')]:.1f}" for k in names) + " |")
    agg = {key: (statistics.median(v), statistics.fmean(v))
           for key, v in [("none", [r["none"] for r in rows])] + [(k, [r[k][0] for r in rows]) for k in names]}
    for i, what in enumerate(("median", "mean")):
        seconds = " | ".join(f"{statistics.median(r[(k, 's')] for r in rows):.1f}" for k in names) if i == 0 else " | "
        lines.append(f"| **{what} of the 5 pairs** | | **{agg['none'][i]:.4f}** | "
                     + " | ".join(f"**{agg[k][i]:.4f}**" for k in names) + f" | {seconds} |")
    best = [min(names, key=lambda k: agg[k][i]) for i in (0, 1)]
    lines += ["",
              f"**Reference**: over the five pairs together the better library is {names[best[0]]} by the median "
              f"of the per-pair figures, **{agg[best[0]][0]:.4f}** (1.2x: **{1.2 * agg[best[0]][0]:.4f}**), and "
              f"{names[best[1]]} by their mean, **{agg[best[1]][1]:.4f}** (1.2x: **{1.2 * agg[best[1]][1]:.4f}**). "
              "srnet's `affine` is \"within 1.2x of the better of ANTs' and elastix's own affine stages\" when its "
              "median (and mean) over the same five pairs, scored the same way, is at most the 1.2x figure."]
    return "\n".join([START] + lines + [END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"the real pairs are not at {DATA} (../shared/data beside the checkout)")
    pairs = [load(p) for p in real_pairs()]
    warm_up(pairs[0])
    start = os.getloadavg()[0]
    rows = run(pairs)
    text = report(rows, (start, os.getloadavg()[0]))
    print(text)
    if args.write:
        write_section(text, START, END)


if __name__ == "__main__":
    main()
