"""Benchmark the slide-preparation target (not a test; never run by pytest).

Target: preparing a generated 40,000 x 30,000 pyramidal TIFF to a 2,048-px working image takes
under 15 s and under 1 GB peak resident memory on 2 cores.

What it does:
  1. Generates (once, cached, not timed) a 40000 x 30000 RGB image that looks like tissue: the
     512 x 512 IHC tile bundled with scikit-image, replicated, inside an elliptical tissue region on a
     white background. Saved as a tiled (256 px) JPEG (Q 85) BigTIFF pyramid, and (unless
     --skip-jpeg) as a plain baseline JPEG for the libvips shrink-on-load path.
  2. Runs exactly what the workflow runs, `srnet_core.prepare.prepare_image(src, dest, max_side=2048)`
     (threads=1, as rules/prepare.smk), in a fresh Python subprocess per repetition, and takes the
     child's wall time (spawn to exit, interpreter start and imports included) and peak resident set
     size (wait4 rusage of that child alone).
  3. Separately, in other fresh subprocesses, times `read_working` and `tissue_mask` on their own.
  4. One extra "cold" run per input after evicting the file from the page cache
     (posix_fadvise DONTNEED), reported apart from the warm repetitions.

Prints a Markdown section; with --write it replaces the section between
`<!-- bench_prepare:start -->` and `<!-- bench_prepare:end -->` in docs/BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_prepare.py --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DOC, machine, verdict, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench_prepare:start -->", "<!-- bench_prepare:end -->"

WIDTH, HEIGHT = 40_000, 30_000
MAX_SIDE = 2048
TARGET_S = 15.0
TARGET_BYTES = 1_000_000_000          # "1 GB" taken as 10^9 bytes; GiB shown alongside

# Code run in the fresh child. argv: mode, source, dest, result-json
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
sys.path.insert(0, ROOT)
mode, source, dest, out = sys.argv[1:5]
res = {}
if mode == "prepare":
    from srnet_core.prepare import prepare_image
    t_imp = time.perf_counter()
    attrs = prepare_image(source, dest, max_side=MAX_SIDE)
    t_end = time.perf_counter()
    res = {"import_s": t_imp - t0, "call_s": t_end - t_imp,
           "reader": attrs["reader"], "vendor": attrs["vendor"],
           "levels": [list(map(float, r)) for r in attrs["levels"]],
           "tissue_fraction": float(attrs["tissue_fraction"])}
else:
    from srnet_core.slides import read_working
    from srnet_core.tissue import tissue_mask
    t_imp = time.perf_counter()
    image, info, scale = read_working(source, max_side=MAX_SIDE)
    t_read = time.perf_counter()
    mask, fraction = tissue_mask(image, source=source)
    t_mask = time.perf_counter()
    res = {"import_s": t_imp - t0, "read_s": t_read - t_imp, "mask_s": t_mask - t_read,
           "shape": list(image.shape), "tissue_fraction": float(fraction)}
with open(out, "w") as f:
    json.dump(res, f)
""".replace("ROOT", repr(str(ROOT))).replace("MAX_SIDE", str(MAX_SIDE))


# ----------------------------------------------------------------------------------------- input --

def _tissue_like(width: int, height: int):
    """Lazy pyvips image: replicated IHC tile inside an ellipse (plus a small second piece), white
    outside. Nothing is computed until it is saved."""
    import numpy as np
    import pyvips
    from skimage import data

    tile = np.ascontiguousarray(data.immunohistochemistry())          # 512 x 512 x 3 uint8
    th, tw = tile.shape[:2]
    base = pyvips.Image.new_from_array(tile)
    # mirror neighbours so the repetition has no hard seams
    base = base.join(base.fliphor(), "horizontal")
    base = base.join(base.flipver(), "vertical")
    tissue = base.replicate(math.ceil(width / (2 * tw)), math.ceil(height / (2 * th))).crop(0, 0, width, height)

    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0], xyz[1]
    # main piece: ellipse centred a little left of centre; second, smaller piece to the right
    e1 = ((x - 0.42 * width) / (0.34 * width)) ** 2 + ((y - 0.5 * height) / (0.40 * height)) ** 2
    e2 = ((x - 0.86 * width) / (0.09 * width)) ** 2 + ((y - 0.35 * height) / (0.16 * height)) ** 2
    inside = (e1 < 1.0) | (e2 < 1.0)                                   # uchar 0 / 255
    return inside.ifthenelse(tissue, [255, 255, 255])


def _existing_ok(path: Path, want_pages: int | None) -> bool:
    import pyvips
    if not path.exists():
        return False
    try:
        img = pyvips.Image.new_from_file(str(path))
        if (img.width, img.height) != (WIDTH, HEIGHT):
            return False
        if want_pages is not None:
            n = img.get("n-pages") if img.get_typeof("n-pages") else 1
            return n >= want_pages
        return True
    except pyvips.Error:
        return False


def _pyramid_levels(width: int, height: int) -> int:
    """Levels libvips writes for tile 256: halve until the image fits in one tile."""
    n = 1
    while width > 256 or height > 256:
        width, height = max(1, (width + 1) // 2), max(1, (height + 1) // 2)  # upper bound is fine
        n += 1
    return n


def _save_with_progress(image, path: Path, saver: str, **kw) -> float:
    tmp = path.with_name(path.name + ".part")
    image.set_progress(True)
    last = [0.0]

    def progress(_img, prog):
        now = time.monotonic()
        if now - last[0] > 10 or prog.percent >= 100:
            last[0] = now
            print(f"    {path.name}: {prog.percent:3d}%  ({prog.run} s, eta {prog.eta} s)", flush=True)
    image.signal_connect("eval", progress)
    t0 = time.perf_counter()
    getattr(image, saver)(str(tmp), **kw)
    os.replace(tmp, path)
    return time.perf_counter() - t0


def make_inputs(workdir: Path, with_jpeg: bool) -> dict[str, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    out = {}
    tif = workdir / f"synthetic_{WIDTH}x{HEIGHT}_pyramid_jpeg.tif"
    if _existing_ok(tif, want_pages=min(8, _pyramid_levels(WIDTH, HEIGHT) - 2)):
        print(f"  reusing {tif}")
    else:
        print(f"  generating {tif} (tiled JPEG pyramid; a few minutes) ...", flush=True)
        s = _save_with_progress(_tissue_like(WIDTH, HEIGHT), tif, "tiffsave", tile=True, pyramid=True,
                                compression="jpeg", Q=85, tile_width=256, tile_height=256, bigtiff=True)
        print(f"  wrote {tif} in {s:.0f} s", flush=True)
    out["pyramidal TIFF"] = tif
    if with_jpeg:
        jpg = workdir / f"synthetic_{WIDTH}x{HEIGHT}.jpg"
        if _existing_ok(jpg, want_pages=None):
            print(f"  reusing {jpg}")
        else:
            print(f"  generating {jpg} (plain baseline JPEG) ...", flush=True)
            s = _save_with_progress(_tissue_like(WIDTH, HEIGHT), jpg, "jpegsave", Q=85)
            print(f"  wrote {jpg} in {s:.0f} s", flush=True)
        out["plain JPEG"] = jpg
    return out


def describe_input(path: Path) -> str:
    import pyvips
    img = pyvips.Image.new_from_file(str(path))
    size = path.stat().st_size
    loader = img.get("vips-loader")
    if loader.startswith("tiff"):
        n = img.get("n-pages") if img.get_typeof("n-pages") else 1
        dims = []
        for page in range(n):
            p = pyvips.Image.new_from_file(str(path), page=page)
            dims.append(f"{p.width}x{p.height}")
        try:
            import tifffile
            with tifffile.TiffFile(path) as tf:
                comp = tf.pages[0].compression.name
        except Exception:  # only for the description
            comp = "JPEG"
        return (f"{img.width} x {img.height} RGB BigTIFF, tiled 256 x 256, {comp} Q85, "
                f"{n} pyramid levels ({', '.join(dims)}), {size / 1e6:.0f} MB")
    return f"{img.width} x {img.height} RGB baseline JPEG, Q85, 1 level, {size / 1e6:.0f} MB"


# ------------------------------------------------------------------------------------- measuring --

def evict(path: Path) -> None:
    """Drop the file's pages from the page cache (works without root for clean pages)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_child(mode: str, source: Path, tmpdir: Path) -> dict:
    dest = tmpdir / "prepared.h5"
    out = tmpdir / "child.json"
    for p in (dest, out):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(source), str(dest), str(out)],
                            cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)      # rusage of this child alone
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child ({mode}, {source}) failed with exit code {proc.returncode}")
    res = json.loads(out.read_text())
    res.update(wall_s=wall, maxrss_bytes=usage.ru_maxrss * 1024,      # ru_maxrss is KiB on Linux
               user_s=usage.ru_utime, sys_s=usage.ru_stime)
    if mode == "prepare":
        res["h5_bytes"] = dest.stat().st_size
    return res


def measure(source: Path, reps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as td:
        tmpdir = Path(td)
        evict(source)
        cold = run_child("prepare", source, tmpdir)
        print(f"    cold  prepare: {cold['wall_s']:.2f} s wall, {cold['maxrss_bytes'] / 2**20:.0f} MiB peak",
              flush=True)
        warm = []
        for i in range(reps):
            r = run_child("prepare", source, tmpdir)
            warm.append(r)
            print(f"    warm  prepare #{i + 1}: {r['wall_s']:.2f} s wall (call {r['call_s']:.2f} s, "
                  f"imports {r['import_s']:.2f} s), {r['maxrss_bytes'] / 2**20:.0f} MiB peak", flush=True)
        parts = []
        for i in range(reps):
            r = run_child("parts", source, tmpdir)
            parts.append(r)
            print(f"    warm  parts   #{i + 1}: read_working {r['read_s']:.2f} s, tissue_mask {r['mask_s']:.2f} s, "
                  f"{r['maxrss_bytes'] / 2**20:.0f} MiB peak", flush=True)
    return {"cold": cold, "warm": warm, "parts": parts}


# ---------------------------------------------------------------------------------------- report --




def versions() -> str:
    import numpy
    import openslide
    import pyvips
    return (f"Python {platform.python_version()}, numpy {numpy.__version__}, "
            f"OpenSlide {openslide.__library_version__} (openslide-python {openslide.__version__}), "
            f"libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}")





def section(results: dict, inputs: dict[str, Path], descriptions: dict[str, str], reps: int,
            notes: list[str]) -> str:
    today = dt.date.today().isoformat()
    L = [START, "", "## Slide preparation (`benchmarks/bench_prepare.py`)", "",
         f"Target: preparing a generated 40,000 x 30,000 pyramidal TIFF to a 2,048-px working image in "
         f"under {TARGET_S:.0f} s and under 1 GB peak resident memory on 2 cores.", "",
         f"- Date: {today}",
         f"- Machine: {machine()}",
         f"- Software: {versions()}",
         "- Measured: `srnet_core.prepare.prepare_image(src, dest, max_side=2048)` (threads=1, as in "
         "`rules/prepare.smk`) in a fresh Python process per run. Wall time is the child process from "
         "spawn to exit (interpreter start and imports included; the call alone is shown too); peak "
         "memory is that child's peak resident set size (`wait4` rusage `ru_maxrss`). "
         f"{reps} warm runs (input in the page cache) plus one cold run after evicting the input from "
         "the page cache. `read_working` and `tissue_mask` are timed on their own in separate fresh "
         "processes.",
         "- Inputs (generated, not timed: the 512 x 512 IHC tile bundled with scikit-image, mirrored and "
         "replicated, inside elliptical tissue regions on white):"]
    for label, desc in descriptions.items():
        L.append(f"  - {label}: {desc}")
    L += ["", "| input | run | wall s (median / max) | `prepare_image` call s (median) | imports s (median) | "
              "peak RSS MiB (max) | CPU user+sys s (median) |",
          "|---|---|---|---|---|---|---|"]
    for label, res in results.items():
        warm, cold = res["warm"], res["cold"]
        walls = [r["wall_s"] for r in warm]
        L.append(f"| {label} | warm x{len(warm)} | {statistics.median(walls):.2f} / {max(walls):.2f} | "
                 f"{statistics.median(r['call_s'] for r in warm):.2f} | "
                 f"{statistics.median(r['import_s'] for r in warm):.2f} | "
                 f"{max(r['maxrss_bytes'] for r in warm) / 2**20:.0f} | "
                 f"{statistics.median(r['user_s'] + r['sys_s'] for r in warm):.2f} |")
        L.append(f"| {label} | cold x1 | {cold['wall_s']:.2f} | {cold['call_s']:.2f} | {cold['import_s']:.2f} | "
                 f"{cold['maxrss_bytes'] / 2**20:.0f} | {cold['user_s'] + cold['sys_s']:.2f} |")
    L += ["", "| input | `read_working` s (median / max) | `tissue_mask` s (median / max) | working image | "
              "tissue fraction | reader | level sizes OpenSlide/libvips sees |",
          "|---|---|---|---|---|---|---|"]
    for label, res in results.items():
        parts, w0 = res["parts"], res["warm"][0]
        rd = [r["read_s"] for r in parts]
        mk = [r["mask_s"] for r in parts]
        h, w = parts[0]["shape"][:2]
        levels = ", ".join(f"{int(a)}x{int(b)}" for a, b, _ in w0["levels"])
        L.append(f"| {label} | {statistics.median(rd):.2f} / {max(rd):.2f} | {statistics.median(mk):.2f} / "
                 f"{max(mk):.2f} | {w} x {h} | {w0['tissue_fraction']:.1%} | {w0['reader']} ({w0['vendor']}) | "
                 f"{levels} |")
    tif = results.get("pyramidal TIFF")
    if tif is not None:
        all_runs = tif["warm"] + [tif["cold"]]
        worst_wall = max(r["wall_s"] for r in all_runs)
        worst_rss = max(r["maxrss_bytes"] for r in all_runs)
        L += ["", "Against the target (pyramidal TIFF, worst of all runs, cold included):", "",
              f"- Time: {worst_wall:.2f} s vs {TARGET_S:.0f} s: **{verdict(worst_wall, TARGET_S, 's')}**",
              f"- Memory: {worst_rss / 1e6:.0f} MB ({worst_rss / 2**30:.2f} GiB) vs 1 GB: "
              f"**{verdict(worst_rss, TARGET_BYTES, 'MB', 1e6)}**"]
    jpg = results.get("plain JPEG")
    if jpg is not None:
        all_runs = jpg["warm"] + [jpg["cold"]]
        worst_wall = max(r["wall_s"] for r in all_runs)
        worst_rss = max(r["maxrss_bytes"] for r in all_runs)
        L += [f"- Plain JPEG (same limits, for reference; the target names the TIFF): "
              f"{worst_wall:.2f} s, {worst_rss / 1e6:.0f} MB: time {verdict(worst_wall, TARGET_S, 's').split(' ')[0]}, "
              f"memory {verdict(worst_rss, TARGET_BYTES, 'MB', 1e6).split(' ')[0]}"]
    for note in notes:
        L.append(f"- Note: {note}")
    L += ["", "Re-run: `.venv/bin/python benchmarks/bench_prepare.py --write`", "", END]
    return "\n".join(L)





def write_doc_(text: str) -> None:
    write_section(text, START, END)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "benchmarks" / "_data",
                    help="where the generated inputs are cached (default benchmarks/_data/)")
    ap.add_argument("--reps", type=int, default=3, help="warm repetitions per input (default 3)")
    ap.add_argument("--skip-jpeg", action="store_true", help="skip the plain-JPEG (libvips) input")
    ap.add_argument("--write", action="store_true", help=f"update the section in {DOC.relative_to(ROOT)}")
    args = ap.parse_args(argv)

    print("inputs:", flush=True)
    notes = []
    inputs = make_inputs(args.workdir, with_jpeg=not args.skip_jpeg)
    if args.skip_jpeg:
        notes.append("plain-JPEG input skipped (--skip-jpeg).")
    descriptions = {label: describe_input(p) for label, p in inputs.items()}
    results = {}
    for label, path in inputs.items():
        print(f"measuring {label}: {descriptions[label]}", flush=True)
        results[label] = measure(path, args.reps)
    text = section(results, inputs, descriptions, args.reps, notes)
    print()
    print(text)
    if args.write:
        write_doc_(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
