"""The registration stages as functions the workflow scripts call (one per rule): affine pre-alignment
per pair, training per method, registration per pair and method, the warped full-resolution slide."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import asdict

import numpy as np

from ..atomic import write_text_atomic
from ..errors import InputError
from ..h5io import read_codebook, read_field, read_prepared, write_field
from ..landmarks import read_landmarks, write_landmarks
from ..outcome import usable
from ..record import pass_on

log = logging.getLogger(__name__)


def pick_device():
    from ..segmentation.fgsn import pick_device as pick
    return pick()


def affine_stage(fixed_prepared: str, moving_prepared: str, out_json: str, pair_id: str, settings: dict) -> dict:
    """The pre-alignment of one pair. It never fails on image content: a pair with nothing to align
    on keeps the unregistered pair, with the reason in the JSON and the log."""
    if pass_on([fixed_prepared, moving_prepared], [out_json], "affine"):   # an image failed: outcome.py
        return {}
    from .affine import AffineSettings, pre_align
    fixed, moving = read_prepared(fixed_prepared), read_prepared(moving_prepared)
    result = pre_align(fixed.image, moving.image, fixed.scale, moving.scale, AffineSettings(**settings))
    payload = {**result.to_json(), "pair_id": pair_id, "fixed_shape": list(fixed.mask.shape),
               "moving_shape": list(moving.mask.shape)}
    write_text_atomic(out_json, json.dumps(payload, indent=1))
    log.info("%s: affine found in %.1fs: %s, %.0f deg%s; similarity %.3f (unregistered: %.3f)%s", pair_id,
             result.seconds, result.chosen, result.angle_deg, " mirrored" if result.flipped else "", result.score,
             result.score_identity, "; CLOSE CALL: " + result.reason if result.close_call else "")
    return payload


def _codebook_k(codebook: str | None) -> tuple[int, str]:
    if not codebook:
        return 0, ""
    from ..atomic import sha256_of
    centres, _ = read_codebook(codebook)
    return len(centres), sha256_of(codebook)


def train_stage(pairs: list[dict], codebook: str | None, method_name: str, method: dict, settings: dict,
                network: dict, out_model: str, out_csv: str, out_png: str, checkpoint_dir: str,
                downsample: int = 4) -> str:
    """`pairs`: dicts with fixed, moving (prepared), affine (json) and, for map methods, fixed_seg, moving_seg."""
    from .data import load_pair_stack
    from .train import MethodSettings, TrainSettings, net_config_for, plot_loss, save_model, train_registration
    from .train import write_history
    method_ = MethodSettings(**method)
    settings_ = TrainSettings(**settings)
    pairs = usable(pairs, f"training {method_name}", files=lambda p: list(p.values()),
                   name=lambda p: os.path.basename(p["affine"]).removesuffix(".json"))
    k, codebook_sha = _codebook_k(codebook if method_.uses_maps else None)
    stacks = [load_pair_stack(p["fixed"], p["moving"], p["affine"],
                              p.get("fixed_seg") if method_.uses_maps else None,
                              p.get("moving_seg") if method_.uses_maps else None, downsample) for p in pairs]
    config = net_config_for(method_, k, network.get("encoder"), network.get("decoder"))
    device = pick_device()
    log.info("training %s on %d pairs (%s), %d iterations of %d patches of %d px, k=%d, %d input channels",
             method_name, len(stacks), device, settings_.iterations, settings_.batch_size, settings_.patch, k,
             config.in_channels)
    t0 = time.perf_counter()
    result = train_registration(stacks, method_, settings_, config, checkpoint_dir, device)
    history = write_history(result.history, out_csv)
    plot_loss(history, out_png, f"{method_name}: training loss")
    checksum = save_model(out_model, result.model.cpu(), method_, k, {
        "method_name": method_name, "train": asdict(settings_), "codebook_sha256": codebook_sha,
        "pairs": len(stacks), "device": str(device), "seconds": time.perf_counter() - t0, "downsample": downsample,
        "resumed_from": result.resumed_from})
    log.info("%s: model %s written (sha256 %s), %.1fs", method_name, out_model, checksum[:12],
             time.perf_counter() - t0)
    return checksum


def register_stage(*, fixed_prepared: str, moving_prepared: str, affine: str, pair_id: str, method_name: str,
                   out_field: str, out_landmarks: str, out_overlay: str, out_timing: str,
                   model: str | None = None, method: dict | None = None, codebook: str | None = None,
                   fixed_seg: str | None = None, moving_seg: str | None = None, moving_landmarks: str = "",
                   missing_landmarks: str = "error", instance_steps: int = 0, instance_lr: float = 0.2,
                   instance_lambda_smooth: float | None = None, instance_levels: int = 1,
                   instance_fine_steps: int = 0, reflections: str = "none", downsample: int = 4) -> dict:
    """Register one pair with `model` (None: the affine step alone, the `affine` column).
    `instance_lambda_smooth`: the regulariser's weight during instance optimisation (None: the method's);
    `instance_levels`: coarse-to-fine grids of instance optimisation (1: the registration grid only);
    `instance_fine_steps`: further steps on a grid 2x finer than the registration grid (0: none);
    `reflections`: the network's field averaged over mirrored inputs (infer.reflection_averaged_field).
    A failure record among the pair's inputs (outcome.py) is passed on to every output."""
    if pass_on([fixed_prepared, moving_prepared, affine, fixed_seg, moving_seg],
               [out_field, out_landmarks, out_overlay, out_timing], method_name):
        return {}
    from .data import load_pair_stack
    from .infer import instance_optimise, predict_field
    from .train import MethodSettings, check_model_inputs, load_model
    device = pick_device()
    timing: dict = {"device": str(device)}
    t0 = time.perf_counter()
    loaded = None
    configured = MethodSettings(**method) if method else None
    if model:
        loaded = load_model(model, device)
        k, _ = _codebook_k(codebook if loaded.method.uses_maps else None)
        check_model_inputs(loaded, k, model, method_name, configured)
    uses_maps = loaded is not None and loaded.method.uses_maps
    if loaded is not None:
        trained = int(loaded.extra.get("downsample", downsample))
        if trained != downsample:
            log.warning("%s was trained on a grid %dx coarser than the working grid; registering at %dx as "
                        "configured", model, trained, downsample)
    working = load_pair_stack(fixed_prepared, moving_prepared, affine,
                              fixed_seg if uses_maps else None, moving_seg if uses_maps else None)
    stack = working.shrunk(downsample)
    # the finer grid of the last instance steps; none when the registration grid is the working grid
    refining = loaded is not None and instance_steps > 0
    fine = working.shrunk(downsample // 2) if refining and instance_fine_steps > 0 and downsample >= 2 else None
    timing["seconds_load"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    if loaded is None:
        field = np.zeros((2,) + tuple(stack.shape), np.float32)
    else:
        field = predict_field(loaded.model, stack, loaded.method.map_inputs, device, reflections)
    timing["seconds_predict"] = time.perf_counter() - t1
    refine = configured or (loaded.method if loaded is not None else None)
    if refine is not None and instance_lambda_smooth is not None:
        refine = dataclasses.replace(refine, lambda_smooth=float(instance_lambda_smooth))
    if refining:
        t2 = time.perf_counter()
        field, losses = instance_optimise(field, stack, refine, instance_steps, instance_lr, device,
                                          instance_levels, fine, instance_fine_steps)
        timing["seconds_instance"] = time.perf_counter() - t2
        if fine is not None:
            stack = fine
        coarse_steps = instance_steps * instance_levels    # the losses of different grids do not compare
        log.info("%s: instance optimisation %d steps x %d level(s) (lambda_smooth %.3g), loss %.4f -> %.4f%s",
                 pair_id, instance_steps, instance_levels, refine.lambda_smooth, losses[0],
                 losses[coarse_steps - 1], "" if fine is None else
                 f"; then {instance_fine_steps} on the {fine.shape[1]}x{fine.shape[0]} grid, loss "
                 f"{losses[coarse_steps]:.4f} -> {losses[-1]:.4f}")
    if loaded is not None:
        timing["deformable_check"] = deformable_check(stack, field)
        if not timing["deformable_check"]["kept"]:
            log.warning("%s (%s): the deformable field lowers the pair's own similarity (RMS local NCC %.4f -> "
                        "%.4f): not kept, the affine step alone is the result", pair_id, method_name,
                        timing["deformable_check"]["before"], timing["deformable_check"]["after"])
            field = np.zeros_like(field)
    coarse, field = field, stack.field_to_working(field)
    timing["seconds_register"] = time.perf_counter() - t1
    return write_registration(stack, field, coarse, pair_id, method_name, timing, t0, out_field, out_landmarks,
                              out_overlay, out_timing, moving_landmarks, missing_landmarks,
                              {"model_sha256": loaded.sha256 if loaded else "", "instance_steps": instance_steps,
                               "instance_lambda_smooth": refine.lambda_smooth if refine and instance_steps else "",
                               "instance_levels": instance_levels if instance_steps else "",
                               "instance_fine_steps": instance_fine_steps if fine is not None else "",
                               "reflections": reflections if loaded else ""})


def deformable_check(stack, field: np.ndarray) -> dict:
    """Landmark-free check of a deformable result: the RMS local NCC of the fixed and moving densities
    over the fixed tissue, after the affine step alone and with the field. A field that lowers it is
    not kept (the pair's own similarity says the deformation made it worse)."""
    import torch

    from .affine import local_ncc2_map
    from .warp import SpatialTransformer
    fixed = torch.from_numpy(np.ascontiguousarray(stack.fixed, np.float32))[None]
    moving = torch.from_numpy(np.ascontiguousarray(stack.moving, np.float32))[None]
    weight = torch.from_numpy(stack.fixed_mask.astype(np.float32))[None, None]
    with torch.no_grad():
        warped = SpatialTransformer(2)(moving, torch.from_numpy(np.ascontiguousarray(field, np.float32))[None])

        def rms(m):
            return float(torch.sqrt((local_ncc2_map(fixed, m, eps=1e-6) * weight).sum() / (weight.sum() + 1e-6) + 1e-12))
        before, after = rms(moving), rms(warped)
    return {"before": round(before, 5), "after": round(after, 5), "kept": bool(after >= before)}


def write_registration(stack, field: np.ndarray, coarse: np.ndarray, pair_id: str, method_name: str, timing: dict,
                       t0: float, out_field: str, out_landmarks: str, out_overlay: str, out_timing: str,
                       moving_landmarks: str, missing_landmarks: str, provenance: dict) -> dict:
    """What every method writes for a pair (srnet, `affine`, the baselines): the field on the fixed
    working grid, the warped moving landmarks, the overlay and the timing."""
    from .infer import inverse_consistency_px, map_moving_landmarks, write_overlay
    write_field(out_field, field, {
        "affine": np.asarray(stack.affine), "fixed_scale": stack.fixed_scale, "moving_scale": stack.moving_scale,
        "fixed_full": stack.fixed_full, "moving_full": stack.moving_full, "method": method_name,
        "pair_id": pair_id, **provenance})
    points = np.zeros((0, 2))
    if moving_landmarks and os.path.exists(moving_landmarks):
        points = read_landmarks(moving_landmarks)
    elif moving_landmarks and missing_landmarks == "error":
        raise InputError(moving_landmarks, "moving landmark file not found (set the dataset's "
                                           "missing_landmarks: unscored to register such pairs without scoring)")
    warped = map_moving_landmarks(stack, field, points) if len(points) else points
    write_landmarks(out_landmarks, warped)
    write_overlay(out_overlay, stack, coarse)
    timing["inversion_residual_px"] = inverse_consistency_px(stack, field, points)
    timing["seconds_total"] = time.perf_counter() - t0
    write_text_atomic(out_timing, json.dumps({"pair_id": pair_id, "method": method_name,
                                              "landmarks": int(len(points)), **timing}, indent=1))
    mag = np.hypot(field[0], field[1])
    log.info("%s (%s): field mean %.2f px, max %.2f px; %d landmarks mapped; register %.3fs on %s", pair_id,
             method_name, float(mag.mean()), float(mag.max()), len(points), timing["seconds_register"],
             timing["device"])
    return timing


def warp_slide_stage(moving_source: str, field_path: str, fixed_prepared: str, out_tif: str) -> None:
    from .infer import warp_slide
    from .transform import Transform
    if pass_on([fixed_prepared, field_path], [out_tif], "warp_slide"):
        return
    fixed = read_prepared(fixed_prepared)
    field, attrs = read_field(field_path, fixed.mask.shape)
    transform = Transform(np.asarray(attrs["affine"], dtype=np.float64), field, tuple(attrs["fixed_scale"]),
                          tuple(attrs["moving_scale"]))
    t0 = time.perf_counter()
    warp_slide(moving_source, transform, fixed.full_size, out_tif)
    log.info("warped %s onto the fixed grid (%dx%d) -> %s in %.1fs", moving_source, *fixed.full_size, out_tif,
             time.perf_counter() - t0)
