"""Benchmark registration inference and a training step (not a test; never run by pytest).

Target (issue "SR-Net registration"): inference without instance optimisation for a 1,024 x 1,024
pair under 1 s on 2 CPU cores.

What it does: builds a 1,024 x 1,024 pair (smoothed-noise densities, k = 6 soft maps) as a PairStack,
the default srnet network (RegNetConfig from the config defaults, 2 + 2k input channels), and times
`predict_field` plus `field_to_working` (what the register rule does between loading and writing)
for the default registration grid (downsample 4: 256 x 256) and for downsample 1 (1,024 x 1,024),
and with `reflections` point and axes (2 and 4 passes) on the default grid, median of 7 runs after one warm-up, torch.set_num_threads(2). Also times one training iteration
(batch 4, 128 px patches) and config.yaml's instance-optimisation steps (downsample-4 grid, then the 2x finer one). Weights are
untrained: the time does not depend on them.

    .venv/bin/python benchmarks/bench_registration.py --write
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import ROOT, machine, verdict, write_section  # noqa: E402
from srnet_core.registration.data import PairStack, _shrink  # noqa: E402
from srnet_core.registration.infer import instance_optimise, predict_field  # noqa: E402
from srnet_core.registration.network import RegistrationUNet  # noqa: E402
from srnet_core.registration.train import (MethodSettings, TrainSettings, forward_loss, net_config_for,  # noqa: E402
                                           sample_batch)
from srnet_core.registration.warp import SpatialTransformer  # noqa: E402

START, END = "<!-- bench_registration:start -->", "<!-- bench_registration:end -->"
INFER = yaml.safe_load((ROOT / "config.yaml").read_text())["registration"]["infer"]


def make_stack(size: int, k: int, downsample: int) -> PairStack:
    rng = np.random.default_rng(0)
    dens = [ndimage.gaussian_filter(rng.random((size, size)), 3).astype(np.float32)[None] for _ in range(2)]
    maps = [rng.dirichlet(np.ones(k), size=(size, size)).transpose(2, 0, 1).astype(np.float32) for _ in range(2)]
    if downsample > 1:
        dens = [_shrink(d, downsample) for d in dens]
        maps = [_shrink(m, downsample) for m in maps]
    shape = dens[0].shape[1:]
    return PairStack(dens[0], dens[1], maps[0], maps[1], np.ones(shape, bool), dens[1],
                     np.array([[1.0, 0, 0], [0, 1.0, 0]]), (1.0, 1.0), (1.0, 1.0), (size, size), (size, size),
                     (size, size))


def median_time(fn, runs: int = 7) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    k = 6
    method = MethodSettings()
    model = RegistrationUNet(net_config_for(method, k)).eval()
    rows = []
    for downsample in (4, 1):
        stack = make_stack(1024, k, downsample)
        seconds = median_time(lambda: stack.field_to_working(predict_field(model, stack, True)))
        rows.append((downsample, stack.shape, seconds))
    stack4 = make_stack(1024, k, 4)
    mirrored = {mode: median_time(lambda: stack4.field_to_working(predict_field(model, stack4, True,
                                                                                 reflections=mode)))
                for mode in ("point", "axes")}
    steps, fine_steps = INFER["instance_steps"], INFER["instance_fine_steps"]
    instance = median_time(lambda: instance_optimise(np.zeros((2, 256, 256), np.float32), stack4, method, steps),
                           runs=3)
    stack2 = make_stack(1024, k, 2)
    fine = median_time(lambda: instance_optimise(np.zeros((2, 256, 256), np.float32), stack4, method, steps,
                                                 fine=stack2, fine_steps=fine_steps), runs=3)
    settings = TrainSettings()
    stn, loss_fn = SpatialTransformer(2), method.loss()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.93, 0.999))
    model.train()

    def step():
        batch = sample_batch([stack4], method, settings, np.random.default_rng(0))
        total, _, _ = forward_loss(model, stn, loss_fn, method, batch)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()

    train_step = median_time(step)
    lines = [START, "## Registration inference and training step (bench_registration.py)", "",
             f"Run {dt.date.today().isoformat()} on {machine()}; torch {torch.__version__}, 2 threads, CPU.",
             "Synthetic 1,024 x 1,024 pair (densities + k = 6 soft maps), default srnet network, untrained "
             "weights (time does not depend on them); median of 7 runs after a warm-up.", "",
             "| registration grid | predict + upsample field | target (< 1 s) |", "|---|---|---|"]
    for downsample, shape, seconds in rows:
        lines.append(f"| downsample {downsample} ({shape[1]} x {shape[0]}) | {seconds:.3f} s | "
                     f"{verdict(seconds, 1.0, 's')} |")
    lines += ["", "- `infer.reflections` on the default 256 x 256 grid (passes of the network averaged): "
                  + ", ".join(f"{mode} {seconds:.3f} s" for mode, seconds in mirrored.items()),
              f"- {steps} instance-optimisation steps on the 256 x 256 grid (default `instance_steps`): "
                  f"{instance:.2f} s; then {fine_steps} more on the 512 x 512 grid (default `instance_fine_steps`): "
                  f"{fine:.2f} s in all",
              f"- one training iteration (batch 4, 128 px patches, srnet loss, Adam): {train_step:.3f} s", END]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(text, START, END)


if __name__ == "__main__":
    main()
