"""The pre-alignment (`affine` step) on the five real cross-stain pairs of ../shared/data and on cases
with known truth made from them (registration/prealign_cases.py): median rTRE before and after, per
pair and per case, the time per pair, and how well the pre-alignment's tissue views agree across
stains compared with the prepare stage's masks. Writes the "Pre-alignment" section of
docs/BENCHMARKS.md with --write.

    python benchmarks/bench_prealign.py [--write] [--seeds 2]
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, machine, write_section  # noqa: E402
from srnet_core.coords import full_to_work, work_to_full  # noqa: E402
from srnet_core.landmarks import read_landmarks  # noqa: E402
from srnet_core.registration.affine import AffineSettings, homogeneous, pre_align  # noqa: E402
from srnet_core.registration.alignment_images import alignment_views  # noqa: E402
from srnet_core.registration.prealign_cases import case_rtre, grid_points, make_case  # noqa: E402
from srnet_core.slides import read_working  # noqa: E402
from srnet_core.tissue import tissue_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# (name, fixed, moving, used to choose the defaults)
PAIRS = [
    ("kidney HE<-PanCytokeratin", "birl/rat-kidney_/scale-5pc/Rat-Kidney_HE", "birl/rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin", True),
    ("lesion1 He<-CD31", "lesion1/lung-lesion_1/scale-1200px/He", "lesion1/lung-lesion_1/scale-1200px/CD31", True),
    ("lesions HE<-proSPC", "birl/lesions_/scale-5pc/Izd2-29-041-w35_HE", "birl/lesions_/scale-5pc/Izd2-29-041-w35_proSPC", False),
    ("lesion1 He<-Cc10", "lesion1/lung-lesion_1/scale-1200px/He", "lesion1/lung-lesion_1/scale-1200px/Cc10", False),
    ("lesion1 CD31<-Cc10", "lesion1/lung-lesion_1/scale-1200px/CD31", "lesion1/lung-lesion_1/scale-1200px/Cc10", False),
]
START, END = "<!-- prealign:start -->", "<!-- prealign:end -->"


def load(stem: str):
    rgb, info, scale = read_working(DATA / f"{stem}.jpg", max_side=1024)
    return rgb, scale, (info.width, info.height), read_landmarks(DATA / f"{stem}.csv")


def pair_rtre(matrix, fixed, moving) -> tuple[float, float]:
    (_, fs, fsize, fl), (_, ms, _, ml) = fixed, moving
    n = min(len(fl), len(ml))
    q = full_to_work(ml[:n], ms)
    p = (np.linalg.inv(homogeneous(matrix)) @ np.c_[q, np.ones(n)].T).T[:, :2]
    diag = float(np.hypot(*fsize))
    after = np.median(np.hypot(*(work_to_full(p, fs) - fl[:n]).T)) / diag
    return float(np.median(np.hypot(*(ml[:n] - fl[:n]).T)) / diag), float(after)


def landmark_affine(fixed, moving) -> np.ndarray:
    """Least-squares affine fixed working px -> moving working px through the expert landmarks."""
    n = min(len(fixed[3]), len(moving[3]))
    p, q = full_to_work(fixed[3][:n], fixed[1]), full_to_work(moving[3][:n], moving[1])
    a, *_ = np.linalg.lstsq(np.c_[p, np.ones(n)], q, rcond=None)
    return a.T


def iou_under(matrix, a: np.ndarray, b: np.ndarray) -> float:
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])
    m = swap @ homogeneous(matrix) @ swap
    wb = ndimage.affine_transform(b.astype(np.float32), m[:2, :2], m[:2, 2], output_shape=a.shape, order=1) > 0.5
    return float((a & wb).sum() / max(1, (a | wb).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="write the section of docs/BENCHMARKS.md")
    ap.add_argument("--seeds", type=int, default=2, help="cases per pair and kind")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override an AffineSettings field for a comparison run (never with --write)")
    args = ap.parse_args()
    torch.set_num_threads(1)                       # as the workflow's `affine` rule (threads: 1)
    settings = AffineSettings(**{k: type(getattr(AffineSettings(), k))(v) for k, v in
                                 (item.split("=", 1) for item in args.set)})
    if args.set and args.write:
        ap.error("--set is for comparisons; the documented figures use the defaults")
    lines = [START, "## Pre-alignment on real cross-stain pairs and on cases built to break it", "",
             f"`benchmarks/bench_prealign.py`, {datetime.date.today().isoformat()}, {machine()}, one torch "
             "thread (as the `affine` rule). Median rTRE (landmark error / fixed image diagonal, median over "
             "landmarks); `initial` is the unregistered pair. Defaults were chosen on the pairs marked *tuning* "
             "and the cases made from them; the others are held out.", "",
             "### The five real pairs (working images, longest side 1,024 px)", "",
             "| pair | set | initial | affine | chosen | close call | s |", "|---|---|---:|---:|---|---|---:|"]
    loaded, real_after, seconds = {}, [], []
    for name, f, m, tuning in PAIRS:
        fixed, moving = loaded.setdefault(f, load(f)), loaded.setdefault(m, load(m))
        result = pre_align(fixed[0], moving[0], fixed[1], moving[1], settings)
        initial, after = pair_rtre(result.matrix, fixed, moving)
        real_after.append(after)
        seconds.append(result.seconds)
        lines.append(f"| {name} | {'tuning' if tuning else 'held out'} | {initial:.4f} | {after:.4f} | {result.chosen} "
                     f"| {'yes' if result.close_call else 'no'} | {result.seconds:.1f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Median over the five pairs: **{np.median(real_after):.4f}**, mean {np.mean(real_after):.4f}; "
              f"time per pair {np.median(seconds):.1f} s median, {max(seconds):.1f} s max.", ""]

    lines += ["### Tissue views across stains", "",
              "Overlap (IoU) of the two images' tissue after the expert landmarks' own affine map: the prepare "
              "stage's Otsu masks against the pre-alignment's occupancy views (alignment_images.py).", "",
              "| pair | prepare masks: area fixed / moving | IoU | occupancy >= 0.5: area fixed / moving | IoU |",
              "|---|---:|---:|---:|---:|"]
    for name, f, m, _ in PAIRS:
        fixed, moving = loaded[f], loaded[m]
        truth = landmark_affine(fixed, moving)
        mf, mm = tissue_mask(fixed[0])[0], tissue_mask(moving[0])[0]
        of, om = alignment_views(fixed[0]).mask(), alignment_views(moving[0]).mask()
        lines.append(f"| {name} | {mf.mean():.2f} / {mm.mean():.2f} | {iou_under(truth, mf, mm):.3f} | "
                     f"{of.mean():.2f} / {om.mean():.2f} | {iou_under(truth, of, om):.3f} |")
        print(lines[-1], flush=True)

    lines += ["", "### Cases with known truth (any rotation, mirrors, scale 0.9-1.1)", "",
              "One texture, exact truth (an image against itself re-stained): `restain` (most of the slide), "
              "`frame` (windows that tissue fills edge to edge), `faint` (`frame` with the moving stain faded to "
              "30 % contrast, so its sparse tissue leaves the Otsu mask). Two stains: `cross` (`frame` on the "
              "real pair, truth = expert landmarks, which include the pair's own deformation). A case is "
              "*recovered* below 0.005 (one texture) or below 0.02 and not above the unregistered pair "
              "(`cross`).", "",
              "| case | set | angle | mirrored | scale | initial | affine | recovered | chosen | close call | s |",
              "|---|---|---:|---|---:|---:|---:|---|---|---|---:|"]
    tally: dict[tuple[str, bool], list[bool]] = {}
    for name, f, m, tuning in PAIRS:
        fixed, moving = loaded[f], loaded[m]
        n = min(len(fixed[3]), len(moving[3]))
        fp, mp = full_to_work(fixed[3][:n], fixed[1]), full_to_work(moving[3][:n], moving[1])
        jobs = [(kind, seed) for kind in ("restain", "frame", "faint", "cross") for seed in range(args.seeds)]
        for kind, seed in jobs:
            rng = np.random.default_rng(1000 * seed + zlib.crc32(f"{name} {kind}".encode()) % 997)
            if kind == "cross":
                case = make_case(f"{name} {kind} {seed}", kind, fixed[0], moving[0], fp, mp, rng)
            else:           # one texture: the fixed image (even seeds) or the moving one, against itself
                rgb = fixed[0] if seed % 2 == 0 else moving[0]
                pts = grid_points(rgb)
                label = name.split(" ")[0] + " " + name.split(" ")[1].split("<-")[seed % 2 == 1]
                case = make_case(f"{label} {kind} {seed}", kind, rgb, rgb, pts, pts, rng)
            t0 = time.perf_counter()
            result = pre_align(case.fixed, case.moving, (1.0, 1.0), (1.0, 1.0), settings)
            initial, after = case_rtre(case, result.matrix)
            ok = (after < 0.02 and after <= initial) if kind == "cross" else after < 0.005
            tally.setdefault((kind, tuning), []).append(ok)
            lines.append(f"| {case.name} | {'tuning' if tuning else 'held out'} | {case.angle_deg:.0f} | "
                         f"{'yes' if case.flipped else 'no'} | {case.scale:.3f} | {initial:.4f} | {after:.4f} | "
                         f"{'yes' if ok else '**no**'} | {result.chosen} | {'yes' if result.close_call else 'no'} | "
                         f"{time.perf_counter() - t0:.1f} |")
            print(lines[-1], flush=True)
    lines += ["", "| kind | tuning: recovered | held out: recovered |", "|---|---:|---:|"]
    for kind in ("restain", "frame", "faint", "cross"):
        cells = [f"{sum(tally.get((kind, t), []))} / {len(tally.get((kind, t), []))}" for t in (True, False)]
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    lines.append(END)
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text, START, END)


if __name__ == "__main__":
    main()
