"""Scaling of preparation and inference with the slide's size (not a test; never run by pytest).

Target (issue "Classical baselines side by side and the benchmark suite"): preparation and inference
peak memory flat (within 2x) from a 5k to a 50k px slide; time growing no faster than the pixels.

For each longest side in --sides (default 5000, 20000, 50000; 4:3 slides), it
  1. generates (once, cached under benchmarks/_data/scaling/, not timed) a tissue-like RGB slide as a
     tiled JPEG BigTIFF pyramid (the same generator as bench_prepare.py);
  2. runs, in a fresh Python subprocess, exactly the workflow's `prepare_image` (max_side 1024,
     threads 1): wall time and peak resident memory of that child (wait4 rusage);
  3. runs, in another fresh subprocess, inference as the workflow does it for a pair made of this slide
     and itself under a known 3-degree rotation: `register_stage` with an srnet model (untrained
     weights: its time does not depend on them; no instance optimisation) writing the field, landmarks
     and overlay, then `warp_slide_stage` writing the warped moving slide at full resolution as a
     pyramidal TIFF (libvips mapim). Wall time and peak resident memory of that child.

    .venv/bin/python benchmarks/bench_scaling.py [--sides 5000 20000 50000] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_section  # noqa: E402
from bench_prepare import _save_with_progress, _tissue_like  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "_data" / "scaling"
START, END = "<!-- bench_scaling:start -->", "<!-- bench_scaling:end -->"
MAX_SIDE = 1024

CHILD = r"""
import json, math, sys, time
t0 = time.perf_counter()
sys.path.insert(0, ROOT)
mode, source, work, out = sys.argv[1:5]
res = {}
if mode == "prepare":
    from srnet_core.prepare import prepare_image
    prepare_image(source, work + "/slide.h5", max_side=MAX_SIDE, threads=1)
else:
    import numpy as np
    import torch
    from srnet_core.h5io import read_prepared
    from srnet_core.registration.network import build_network
    from srnet_core.registration.stages import register_stage, warp_slide_stage
    from srnet_core.registration.train import MethodSettings, net_config_for, save_model
    h, w = read_prepared(work + "/slide.h5").mask.shape
    a = math.radians(3.0)
    c, s = math.cos(a), math.sin(a)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    matrix = [[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]]
    open(work + "/affine.json", "w").write(json.dumps({"format": "srnet-affine-1", "matrix": matrix}))
    method = MethodSettings(lambda_seg=0.0, map_inputs=False)
    torch.manual_seed(0)
    save_model(work + "/model.pt", build_network(net_config_for(method, 0)), method, 0, {"downsample": 4})
    t1 = time.perf_counter()
    timing = register_stage(fixed_prepared=work + "/slide.h5", moving_prepared=work + "/slide.h5",
                            affine=work + "/affine.json", pair_id="scaling", method_name="srnet_noseg",
                            out_field=work + "/field.h5", out_landmarks=work + "/lm.csv",
                            out_overlay=work + "/overlay.png", out_timing=work + "/timing.json",
                            model=work + "/model.pt", method={"lambda_seg": 0.0, "map_inputs": False},
                            instance_steps=0, downsample=4)
    res["register_s"] = time.perf_counter() - t1
    res["predict_s"] = timing["seconds_predict"]
    t2 = time.perf_counter()
    warp_slide_stage(source, work + "/field.h5", work + "/slide.h5", work + "/warped.tif")
    res["warp_s"] = time.perf_counter() - t2
res["inside_s"] = time.perf_counter() - t0
open(out, "w").write(json.dumps(res))
"""


def slide(side: int) -> Path:
    import pyvips
    width, height = side, side * 3 // 4
    path = DATA / f"tissue_{width}x{height}_pyramid_jpeg.tif"
    if path.exists():
        try:
            if pyvips.Image.new_from_file(str(path)).width == width:
                return path
        except pyvips.Error:
            pass
    DATA.mkdir(parents=True, exist_ok=True)
    print(f"  generating {path.name} ...", flush=True)
    seconds = _save_with_progress(_tissue_like(width, height), path, "tiffsave", tile=True, pyramid=True,
                                  compression="jpeg", Q=85, tile_width=256, tile_height=256, bigtiff=True)
    print(f"  wrote {path.name} in {seconds:.0f} s", flush=True)
    return path


def run_child(mode: str, source: Path, work: Path) -> dict:
    out = work / f"{mode}.json"
    code = CHILD.replace("ROOT", repr(str(ROOT))).replace("MAX_SIDE", str(MAX_SIDE))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, mode, str(source), str(work), str(out)])
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{mode} child failed on {source} (status {status})")
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, **json.loads(out.read_text())}


def measure(sides: list[int]) -> list[dict]:
    import pyvips
    rows = []
    for side in sides:
        src = slide(side)
        img = pyvips.Image.new_from_file(str(src))
        with tempfile.TemporaryDirectory(prefix="srnet-scaling-") as tmp:
            work = Path(tmp)
            prep = run_child("prepare", src, work)
            infer = run_child("infer", src, work)
            out_bytes = (work / "warped.tif").stat().st_size
        rows.append({"side": side, "width": img.width, "height": img.height, "mpx": img.width * img.height / 1e6,
                     "file_mib": src.stat().st_size / 2**20, "prepare": prep, "infer": infer,
                     "warped_mib": out_bytes / 2**20})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def section(rows: list[dict]) -> str:
    lines = [START, "## Scaling with the slide's size (`benchmarks/bench_scaling.py`)", "",
             f"Run {dt.date.today().isoformat()} on {machine()}; torch CPU. Generated tissue-like RGB slides "
             "(tiled JPEG BigTIFF pyramids, Q 85), each step in a fresh Python process (imports included); "
             "peak = the child's peak resident set size.", "",
             "| slide (px) | megapixels | prepare: time | prepare: peak | inference: register (field, "
             "landmarks, overlay) | inference: warp full-res slide | inference: peak |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        p, i = r["prepare"], r["infer"]
        lines.append(f"| {r['width']:,} x {r['height']:,} | {r['mpx']:,.0f} | {p['wall_s']:.1f} s | "
                     f"{p['peak_mib']:,.0f} MiB | {i['register_s']:.2f} s (predict {i['predict_s'] * 1000:.0f} ms) | "
                     f"{i['warp_s']:.1f} s ({r['warped_mib']:,.0f} MiB TIFF) | {i['peak_mib']:,.0f} MiB |")
    first, last = rows[0], rows[-1]
    px = last["mpx"] / first["mpx"]
    lines += [""]
    for key, label in (("prepare", "Preparation"), ("infer", "Inference")):
        ratio = last[key]["peak_mib"] / first[key]["peak_mib"]
        verdict = "PASS" if ratio <= 2.0 else f"MISS (over by {ratio / 2.0 - 1:.0%})"
        lines.append(f"- {label} peak memory {first['side']:,} -> {last['side']:,} px: x{ratio:.2f} for x{px:.0f} "
                     f"pixels; target within 2x: **{verdict}**.")
    warp_ratio = last["infer"]["warp_s"] / first["infer"]["warp_s"]
    prep_ratio = last["prepare"]["wall_s"] / first["prepare"]["wall_s"]
    lines.append(f"- Time {first['side']:,} -> {last['side']:,} px: preparation x{prep_ratio:.1f}, full-resolution "
                 f"warp x{warp_ratio:.1f}, for x{px:.0f} pixels (the working-resolution registration itself does not "
                 "grow: it sees a 1,024 px image whatever the slide).")
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[5000, 20000, 50000])
    ap.add_argument("--write", action="store_true", help="update docs/BENCHMARKS.md")
    ap.add_argument("--json", type=Path, help="also save the raw figures here")
    args = ap.parse_args(argv)
    rows = measure(args.sides)
    text = section(rows)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write:
        write_section(text, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
