"""The classical baselines (ants_syn, elastix) as Table 2 columns: every evaluation pair of the brain
slices registered by the baseline and written in the same file format as the learned methods.
A module of its own so that the learned methods' stages (and their code hashes) never reach the
optional baseline libraries."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import torch

from ..atomic import sha256_of
from ..registration.baselines import baseline_settings, load_baseline, register_baseline
from ..registration.warp import SpatialTransformer
from .slices import read_slices
from .stages import register_all


def baseline_register_stage(slices_h5: str, method_name: str, settings: dict, out_h5: str, split: str = "test",
                            threads: int = 1) -> dict:
    """Register every pair of `split` with a classical baseline (ants_syn, elastix) and write the same
    file as `register_stage`. Time per pair = the baseline's registration (its own affine stage, then
    its deformable one), turning its transform into a dense field, and warping the moving image and
    labels; the library load is excluded. The simulated deformations need no pre-alignment."""
    used = asdict(baseline_settings(method_name, settings))       # unknown keys fail before any work
    slices = read_slices(slices_h5)
    indices = slices.indices(split)
    if not len(indices):
        raise ValueError(f"no {split} pairs in {slices_h5}")
    load_baseline(method_name, threads)
    torch.set_num_threads(max(1, threads))
    stn, stn_nearest = SpatialTransformer(2), SpatialTransformer(2, mode="nearest", padding_mode="zeros")

    def run(i):
        flow, _ = register_baseline(method_name, slices.fixed[i], slices.moving[i], settings, threads)
        u = torch.from_numpy(flow)[None]
        with torch.inference_mode():
            warped = stn(torch.from_numpy(slices.moving[i])[None, None], u)[0, 0].numpy()
            labels = torch.from_numpy(slices.moving_labels[i].astype(np.float32))[None, None]
            return flow, warped, stn_nearest(labels, u)[0, 0].numpy()

    attrs = {"method": method_name, "split": split, "device": f"cpu ({threads} thread{'s' if threads > 1 else ''})",
             "model_sha256": "", "slices_sha256": sha256_of(slices_h5), "settings": json.dumps(used, sort_keys=True)}
    return register_all(slices, indices, run, out_h5, attrs)
