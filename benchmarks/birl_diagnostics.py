"""Why srnet lands where it does on a finished run's real pairs (a diagnostic, not a timed benchmark).

For every pair of a finished workflow run (affine matrices, segmentation maps and the srnet model in
place), prints:

1. how well the two images' segmentation labels agree after the affine step (adjusted Rand index on
   the tissue both cover: ~1 for one section re-stained, ~0 when the classes do not correspond);
2. the median rTRE and the final instance loss of instance optimisation with config.yaml's
   settings, started from the affine step alone ("zero") and from the network's field ("net"), with
   and without srnet's segmentation term in the loss;
3. the resampling drift: the mean field (working px, over the fixed tissue) that instance
   optimisation from the affine step finds without the segmentation term, for the pair as registered
   and swapped (the fixed image registered to the moving one), with the images unblurred (sim_sigma 0)
   and blurred as the method is. A real misalignment gives opposite signs in the two directions;
   resampling blur gives the same sign in both (losses.SimilarityLoss).

Run after the workflow, e.g. on the suite's BIRL folder (docs/BENCHMARKS.md, "Another host, longer
training, and what holds srnet at `affine` on BIRL"):

    .venv/bin/python benchmarks/birl_diagnostics.py /tmp/suite/birl --dataset birl
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from srnet_core.evaluation import landmark_errors  # noqa: E402
from srnet_core.h5io import read_prepared_attrs  # noqa: E402
from srnet_core.landmarks import read_landmarks  # noqa: E402
from srnet_core.registration.data import load_pair_stack  # noqa: E402
from srnet_core.registration.infer import (instance_optimise, map_moving_landmarks, predict_field,  # noqa: E402
                                            resampling_drift)
from srnet_core.registration.train import load_model  # noqa: E402


def label_agreement(stack) -> float:
    from sklearn.metrics import adjusted_rand_score
    both = (stack.fixed[0] > 0) & (stack.moving[0] > 0)
    return float(adjusted_rand_score(stack.fixed_map.argmax(0)[both], stack.moving_map.argmax(0)[both]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the workflow's working directory (holds results/)")
    parser.add_argument("--dataset", default="birl")
    parser.add_argument("--method", default="srnet", help="a trained method that uses segmentation maps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())["registration"]
    infer, down = config["infer"], int(config["downsample"])
    res = args.run / "results" / args.dataset
    pairs = pd.read_csv(res / "dataset.csv", dtype=str, keep_default_na=False)
    loaded = load_model(str(res / "models" / args.method / "model.pt"), "cpu")
    lam = infer["instance_lambda_smooth"]
    # the method as instance optimisation runs it (register_stage's instance_lambda_smooth override)
    refine = dataclasses.replace(loaded.method, lambda_smooth=float(loaded.method.lambda_smooth if lam is None else lam))
    rows = []
    for p in pairs.itertuples(index=False):
        if p.error:
            continue
        working = load_pair_stack(str(res / "prepared" / f"{p.fixed_id}.h5"),
                                  str(res / "prepared" / f"{p.moving_id}.h5"), str(res / "affine" / f"{p.pair_id}.json"),
                                  str(res / "segmentation" / f"{p.fixed_id}.h5"),
                                  str(res / "segmentation" / f"{p.moving_id}.h5"))
        stack = working.shrunk(down)
        # the finer grid of the last instance steps, as register_stage builds it
        fine = working.shrunk(down // 2) if infer["instance_fine_steps"] > 0 and down >= 2 else None
        fixed_pts, moving_pts = read_landmarks(p.fixed_landmarks_path), read_landmarks(p.moving_landmarks_path)
        attrs = read_prepared_attrs(str(res / "prepared" / f"{p.fixed_id}.h5"))
        size = (int(attrs["full_width"]), int(attrs["full_height"]))
        starts = {"zero": np.zeros((2,) + tuple(stack.shape), np.float32),
                  "net": predict_field(loaded.model, stack, loaded.method.map_inputs, "cpu", infer["reflections"])}
        row = {"pair": p.pair_id, "labels ARI": label_agreement(working)}
        for start, field in starts.items():
            for maps, weight in (("maps", loaded.method.lambda_seg), ("no maps", 0.0)):
                method = dataclasses.replace(refine, lambda_seg=float(weight))
                u, losses = instance_optimise(field, stack, method, infer["instance_steps"], infer["instance_lr"],
                                              "cpu", infer["instance_levels"], fine, infer["instance_fine_steps"])
                grid = stack if fine is None else fine
                warped = map_moving_landmarks(grid, grid.field_to_working(u), moving_pts)
                errors = landmark_errors(fixed_pts, warped, size, moving_pts)
                row[f"{start}, {maps}: rTRE"] = float(errors["rtre"].median())
                row[f"{start}, {maps}: loss"] = float(losses[-1])
        for sigma in (0.0, loaded.method.sim_sigma):
            drift = resampling_drift(str(res / "prepared" / f"{p.fixed_id}.h5"), str(res / "prepared" / f"{p.moving_id}.h5"),
                                     working.affine, dataclasses.replace(refine, sim_sigma=float(sigma)),
                                     infer["instance_steps"], infer["instance_lr"], down,
                                     infer["instance_fine_steps"])
            for (i, name), (axis, label) in itertools.product(enumerate(("pair", "swapped")), enumerate("xy")):
                row[f"drift {label}, sigma {sigma:g}, {name}"] = float(drift[i, axis])
        print(", ".join(f"{k} {v:.5f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        rows.append(row)
    frame = pd.DataFrame(rows).set_index("pair")
    rtre = [c for c in frame.columns if c.endswith("rTRE")]
    frame.loc["All (median over pairs)", rtre] = frame[rtre].median()
    names = list(frame.index)
    print("\n| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for column in frame.columns:
        print(f"| {column} | " + " | ".join("" if pd.isna(v) else f"{v:.5f}" for v in frame[column]) + " |")


if __name__ == "__main__":
    main()
