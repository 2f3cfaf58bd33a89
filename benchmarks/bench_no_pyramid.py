"""Worst case for the OpenSlide path: a tiled TIFF with *no* pyramid, so level 0 must be streamed.

Generates (not timed) a 40,000 x 3,000 single-level tiled JPEG TIFF from scikit-image's IHC tile and
measures `read_working(path, max_side=2048)` in a fresh process: wall time and peak RSS.
Usage: .venv/bin/python benchmarks/bench_no_pyramid.py [--workdir benchmarks/_data]
"""

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(REPO / "benchmarks/_data"))
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path = Path(args.workdir) / "flat_40000x3000.tif"
    if not path.exists():
        import pyvips
        from skimage import data
        tile = pyvips.Image.new_from_array(data.immunohistochemistry()).copy(interpretation="srgb")
        tile.replicate(79, 6).crop(0, 0, 40000, 3000).tiffsave(
            str(path), tile=True, pyramid=False, compression="jpeg", Q=85, tile_width=256, tile_height=256)
    code = ("import sys, time; sys.path.insert(0, %r); from srnet_core.slides import read_working; "
            "t = time.perf_counter(); a, info, _ = read_working(%r, max_side=2048); "
            "print(a.shape[1], a.shape[0], info.reader, round(time.perf_counter() - t, 2))") % (str(REPO), str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"| 40000 x 3000 tiled TIFF, 1 level ({path.stat().st_size / 1e6:.0f} MB) | {out[0]} x {out[1]} "
          f"| {out[2]} | {out[3]} s | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
