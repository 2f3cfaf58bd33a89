"""The brain track's registration stages as functions the workflow scripts call (one per rule):
training a method, registering the evaluation slices, scoring them (Dice, HD95, time), Table 2.

A method (a Table 2 column) is a backbone, a segmentation-map source and the loss weights:
`maps: self` = the self-supervised maps of maps.py (SR-Net), `manual` = one-hot label images in the
segmentation loss only (the seed's "VoxelMorph" column: the same network trained with manual labels,
which it cannot see at test time), `none` = no segmentation loss (SR-Net w/o L_seg, DIRNet, FlowNet).
`before` is no registration at all. Training reuses the histology track's loop (registration/train.py:
augmentation, checkpoints, exact resume); every slice is one "pair stack" on its own grid.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..atomic import sha256_of, write_csv_atomic, write_text_atomic
from ..names import BASELINES
from ..errors import InputError
from ..h5io import h5_writer, open_checked
from .slices import read_slices

log = logging.getLogger(__name__)
FORMAT_REGISTRATION = "srnet-brain-registration-1"
MAP_SOURCES = ("self", "manual", "none")


@dataclass
class BrainMethod:
    backbone: str = "unet"            # unet (VoxelMorph), dirnet (B-spline), flownet (FlowNet-Simple)
    maps: str = "self"                # self | manual | none
    lambda_smooth: float = 0.95
    lambda_seg: float = 1.05
    mse_weight: float = 1.0
    ncc_weight: float = 1.0
    window: int = 9
    map_inputs: bool = True           # self maps also enter the network (as in the histology track)
    grid_spacing: int = 8             # DIRNet control-point spacing, pixels

    def check(self, name: str) -> None:
        if self.maps not in MAP_SOURCES:
            raise ValueError(f"brain method {name!r}: maps must be one of {', '.join(MAP_SOURCES)}, got {self.maps!r}")
        if self.maps == "none" and (self.lambda_seg or self.map_inputs):
            raise ValueError(f"brain method {name!r}: maps: none needs lambda_seg: 0 and map_inputs: false")
        if self.maps == "manual" and self.map_inputs:
            raise ValueError(f"brain method {name!r}: manual labels are a training signal only (the moving "
                             "image's labels are unknown when registering); set map_inputs: false")

    def settings(self):
        from ..registration.train import MethodSettings
        # sim_sigma 0: a brain pair is a slice and its own warped copy, one texture in both images, so
        # resampling blur gives the loss no drift to remove (losses.SimilarityLoss)
        return MethodSettings(self.lambda_smooth, self.lambda_seg, self.mse_weight, self.ncc_weight, self.window,
                              self.map_inputs, sim_sigma=0.0)


def label_values(slices) -> np.ndarray:
    """The label numbers the manual maps have a channel for: background and every label of a training slice."""
    train = slices.indices("train")
    return np.union1d([0], np.unique(slices.fixed_labels[train]))


def one_hot(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(H, W) label image -> (len(values), H, W) uint8; labels not in `values` get no channel."""
    index = np.searchsorted(values, labels)
    index = np.clip(index, 0, len(values) - 1)
    known = values[index] == labels
    out = np.zeros((len(values),) + labels.shape, np.uint8)
    rows, cols = np.nonzero(known)
    out[index[rows, cols], rows, cols] = 1
    return out


def _maps_for(method: BrainMethod, slices, maps_h5: str | None, slices_h5: str, values: np.ndarray | None):
    """(fixed maps, moving maps) arrays for every pair, or (None, None)."""
    if method.maps == "none":
        return None, None
    if method.maps == "self":
        if not maps_h5:
            raise ValueError("a `maps: self` method needs the brain_maps output")
        from .maps import read_maps
        fixed, moving, _ = read_maps(maps_h5, slices_h5)
        return fixed, moving
    if not slices.has_labels:
        raise InputError(slices_h5, "a `maps: manual` method needs label volumes, and these slices have none")
    return ([one_hot(lab, values) for lab in slices.fixed_labels],
            [one_hot(lab, values) for lab in slices.moving_labels])


def pair_stacks(slices, indices, fixed_maps=None, moving_maps=None) -> list:
    """The histology track's PairStack for each brain pair: fixed and moving slices on one grid, no affine."""
    from ..registration.data import PairStack
    from .maps import BRAIN_THRESHOLD
    h, w = slices.fixed.shape[1:]
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    stacks = []
    for i in indices:
        fm = None if fixed_maps is None else fixed_maps[i]
        mm = None if moving_maps is None else moving_maps[i]
        if fm is not None and fm.dtype == np.float16:
            fm, mm = fm.astype(np.float32), mm.astype(np.float32)
        stacks.append(PairStack(slices.fixed[i][None], slices.moving[i][None], fm, mm,
                                slices.fixed[i] > BRAIN_THRESHOLD, slices.moving[i][None], identity, (1.0, 1.0),
                                (1.0, 1.0), (w, h), (w, h), (h, w)))
    return stacks


def train_stage(slices_h5: str, maps_h5: str | None, method_name: str, method: dict, settings: dict,
                network: dict, out_model: str, out_csv: str, out_png: str, checkpoint_dir: str) -> str:
    from ..registration.network import RegNetConfig
    from ..registration.train import TrainSettings, plot_loss, save_model, train_registration, write_history
    from ..segmentation.fgsn import pick_device
    method_ = BrainMethod(**method)
    method_.check(method_name)
    settings_ = TrainSettings(**settings)
    slices = read_slices(slices_h5)
    values = label_values(slices) if method_.maps == "manual" else None
    fixed_maps, moving_maps = _maps_for(method_, slices, maps_h5, slices_h5, values)
    train = slices.indices("train")
    stacks = pair_stacks(slices, train, fixed_maps, moving_maps)
    k = 0 if fixed_maps is None else int(fixed_maps[0].shape[0])
    config = RegNetConfig(spatial_dims=2, in_channels=2 + (2 * k if method_.map_inputs else 0),
                          backbone=method_.backbone, grid_spacing=method_.grid_spacing)
    if network.get("encoder"):
        config.encoder = list(network["encoder"])
    if network.get("decoder"):
        config.decoder = list(network["decoder"])
    device = pick_device()
    log.info("training %s (%s backbone, maps %s, k=%d) on %d training slice pairs, %d iterations, on %s",
             method_name, method_.backbone, method_.maps, k, len(stacks), settings_.iterations, device)
    result = train_registration(stacks, method_.settings(), settings_, config, checkpoint_dir, device)
    history = write_history(result.history, out_csv)
    plot_loss(history, out_png, f"{method_name} (brain slices)")
    extra = {"brain_method": json.dumps(asdict(method_)), "slices_sha256": sha256_of(slices_h5),
             "label_values": json.dumps([int(v) for v in values]) if values is not None else "[]",
             "maps_sha256": sha256_of(maps_h5) if method_.maps == "self" and maps_h5 else ""}
    checksum = save_model(out_model, result.model.cpu(), method_.settings(), k, extra=extra)
    state = Path(checkpoint_dir) / "state.pt"
    if state.exists():
        state.unlink()
    return checksum


def _device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def register_stage(slices_h5: str, maps_h5: str | None, model_path: str, method_name: str, out_h5: str,
                   split: str = "test", reflections: str = "none") -> dict:
    """Register every pair of `split` with a trained model; time per pair = network input assembly,
    the forward pass (one per mirrored copy with `reflections`, see
    registration.infer.reflection_averaged_field) and warping the moving image and labels (the model
    load and one warm-up pass excluded), measured per pair on the device named in the file."""
    from ..registration.infer import reflection_averaged_field
    from ..registration.train import load_model
    from ..registration.warp import SpatialTransformer
    from ..segmentation.fgsn import pick_device
    device = pick_device()
    loaded = load_model(model_path, device)
    extra = loaded.extra
    if "brain_method" not in extra:
        raise InputError(model_path, "not a brain-track model (trained on histology pairs?)")
    method = BrainMethod(**json.loads(extra["brain_method"]))
    slices = read_slices(slices_h5)
    if extra.get("slices_sha256") and extra["slices_sha256"] != sha256_of(slices_h5):
        log.warning("%s was trained on other slices than %s (applying it anyway)", model_path, slices_h5)
    values = np.asarray(json.loads(extra.get("label_values", "[]")), dtype=np.int64)
    fixed_maps, moving_maps = (_maps_for(method, slices, maps_h5, slices_h5, values) if method.map_inputs
                               else (None, None))
    if method.map_inputs and fixed_maps[0].shape[0] != loaded.k:
        raise InputError(model_path, f"model takes {loaded.k}-cluster maps, the brain maps have "
                                     f"{fixed_maps[0].shape[0]}; re-train or use maps from the same codebook")
    indices = slices.indices(split)
    if not len(indices):
        raise ValueError(f"no {split} pairs in {slices_h5}")
    stn, stn_nearest = SpatialTransformer(2), SpatialTransformer(2, mode="nearest", padding_mode="zeros")
    model = loaded.model

    def run(i):
        parts = [slices.fixed[i][None], slices.moving[i][None]]
        if method.map_inputs:
            parts += [np.asarray(fixed_maps[i], np.float32), np.asarray(moving_maps[i], np.float32)]
        x = torch.from_numpy(np.concatenate(parts))[None].to(device)
        moving = torch.from_numpy(slices.moving[i])[None, None].to(device)
        labels = torch.from_numpy(slices.moving_labels[i].astype(np.float32))[None, None].to(device)
        with torch.inference_mode():
            flow = reflection_averaged_field(model, x, reflections)
            warped = stn(moving, flow)
            warped_labels = stn_nearest(labels, flow)
        out = flow[0].cpu().numpy(), warped[0, 0].cpu().numpy(), warped_labels[0, 0].cpu().numpy()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    run(indices[0])                                   # warm-up: allocations, kernel selection
    attrs = {"method": method_name, "split": split, "device": _device_name(device), "reflections": reflections,
             "model_sha256": loaded.sha256, "slices_sha256": sha256_of(slices_h5)}
    return register_all(slices, indices, run, out_h5, attrs)


def register_all(slices, indices: np.ndarray, run, out_h5: str, attrs: dict) -> dict:
    """Calls run(i) -> (field, warped, warped labels) for every pair index, times each call, and
    writes the registration file (one format for the learned methods and the baselines)."""
    n, (h, w) = len(indices), slices.fixed.shape[1:]
    seconds = np.zeros(n)
    with h5_writer(out_h5, FORMAT_REGISTRATION, attrs) as f:
        fields = f.create_dataset("field", (n, 2, h, w), dtype="float32", compression="gzip")
        warped_ds = f.create_dataset("warped", (n, h, w), dtype="float32", compression="gzip")
        labels_ds = f.create_dataset("warped_labels", (n, h, w), dtype="int32", compression="gzip")
        for j, i in enumerate(indices):
            t0 = time.perf_counter()
            flow, warped, warped_labels = run(i)
            seconds[j] = time.perf_counter() - t0
            fields[j], warped_ds[j], labels_ds[j] = flow, warped, np.rint(warped_labels).astype(np.int32)
            if (j + 1) % 10 == 0 or j + 1 == n:
                log.info("%s: %d/%d pairs, %.4fs per pair so far (median)", attrs["method"], j + 1, n,
                         float(np.median(seconds[:j + 1])))
        f.create_dataset("index", data=indices.astype(np.int32))
        f.create_dataset("seconds", data=seconds)
    log.info("%s: %d %s pairs, %.4fs per pair (median) on %s", attrs["method"], n, attrs["split"],
             float(np.median(seconds)), attrs["device"])
    return {"pairs": n, "seconds_median": float(np.median(seconds)), "device": attrs["device"]}


def read_registration(path: str) -> dict:
    with open_checked(path, FORMAT_REGISTRATION) as f:
        return {**{k: f[k][()] for k in ("field", "warped", "warped_labels", "index", "seconds")},
                "attrs": dict(f.attrs)}


def score_method(slices, slices_h5: str, registration_h5: str | None, method_name: str,
                 split: str = "test") -> pd.DataFrame:
    """Per pair and label: Dice and HD95 (mm, the slice spacing honoured); `before` (no registration
    file) scores the moving labels as they are."""
    from .metrics import label_metrics
    if not slices.has_labels:
        raise InputError(slices_h5, "no label volumes were given, so Dice and HD95 cannot be computed")
    if registration_h5:
        reg = read_registration(registration_h5)
        if reg["attrs"].get("slices_sha256") != sha256_of(slices_h5):
            raise InputError(registration_h5, f"registered other slices than {slices_h5}; re-run brain_register")
        if reg["attrs"].get("split") != split:
            raise InputError(registration_h5, f"holds the {reg['attrs'].get('split')} pairs, not the {split} pairs")
        indices, warped, seconds = reg["index"], reg["warped_labels"], reg["seconds"]
        device = str(reg["attrs"]["device"])
    else:
        indices = slices.indices(split)
        warped, seconds, device = slices.moving_labels[indices], np.zeros(len(indices)), ""
    frames = []
    for j, i in enumerate(indices):
        frame = label_metrics(slices.fixed_labels[i], warped[j], slices.spacing)
        frame.insert(0, "pair_id", slices.pair_id(int(i)))
        frame.insert(1, "method", method_name)
        frame["seconds"] = float(seconds[j])
        frame["device"] = device
        frames.append(frame)
    result = pd.concat(frames, ignore_index=True)
    per_pair = result.groupby("pair_id")["dice"].mean()
    log.info("%s: %d %s pairs, mean Dice %.1f%% (median pair %.1f%%)", method_name, len(indices), split,
             100 * per_pair.mean(), 100 * per_pair.median())
    return result


# ----------------------------------------------------------------------------------------------------
# Table 2

def pair_summary(per_label: pd.DataFrame) -> pd.DataFrame:
    """One row per method and pair: mean Dice (%) over the pair's labels, mean HD95 (mm), seconds."""
    grouped = per_label.groupby(["method", "pair_id"], sort=False)
    return grouped.agg(dice_percent=("dice", lambda d: 100 * d.mean()), hd95_mm=("hd95_mm", "mean"),
                       labels=("label", "size"), hd95_missing=("hd95_mm", lambda d: int(d.isna().sum())),
                       seconds=("seconds", "first"), device=("device", "first")).reset_index()


def table2(pairs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    rows = []
    for method in methods:
        sub = pairs[pairs["method"] == method]
        if sub.empty:
            continue
        rows.append({"method": method, "pairs": len(sub), "dice_percent": sub["dice_percent"].mean(),
                     "dice_percent_std": sub["dice_percent"].std(ddof=0), "hd95_mm": sub["hd95_mm"].mean(),
                     "hd95_mm_std": sub["hd95_mm"].std(ddof=0),
                     "seconds": sub["seconds"].mean() if method != "before" else np.nan,
                     "device": sub["device"].iloc[0]})
    return pd.DataFrame(rows)


def table2_markdown(table: pd.DataFrame, title: str, split: str) -> str:
    methods = list(table["method"])
    t = table.set_index("method")
    head = "| | " + " | ".join(methods) + " |"
    lines = [f"# {title}", "", f"Mean ± standard deviation over {int(t['pairs'].iloc[0])} {split} slice pairs.", "",
             head, "|---" * (len(methods) + 1) + "|"]
    lines.append("| DM (%) | " + " | ".join(f"{t.at[m, 'dice_percent']:.1f} ± {t.at[m, 'dice_percent_std']:.1f}"
                                          for m in methods) + " |")
    lines.append("| HD95 (mm) | " + " | ".join(f"{t.at[m, 'hd95_mm']:.2f} ± {t.at[m, 'hd95_mm_std']:.2f}"
                                             for m in methods) + " |")
    lines.append("| Time (s) | " + " | ".join("–" if pd.isna(t.at[m, "seconds"]) else f"{t.at[m, 'seconds']:.4f}"
                                            for m in methods) + " |")
    notes = []
    for baseline, what in ((False, "forward passes (brain.evaluate.reflections) and warping, model load "
                                   "excluded"),
                           (True, "the tool's registration, its transform turned into a field, and warping; "
                                  "library load excluded")):
        timed = [m for m in methods if (m in BASELINES) == baseline and isinstance(t.at[m, "device"], str)
                 and t.at[m, "device"]]
        for device in sorted({t.at[m, "device"] for m in timed}):
            notes.append(f"{', '.join(m for m in timed if t.at[m, 'device'] == device)} on {device} ({what})")
    if notes:
        lines += ["", "Time per pair: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def table_stage(slices_h5: str, registration_h5s: dict[str, str], methods: list[str], reference: str,
                figure_label: int | None, title: str, split: str, out: dict[str, str]) -> pd.DataFrame:
    """Scores every method (cheap next to registering, so one job) and writes Table 2, the per-pair and
    per-label scores, the Wilcoxon tests and the contour figure."""
    from ..evaluation import significance, significance_markdown
    from .metrics import contour_figure, largest_label
    slices = read_slices(slices_h5)
    per_label = pd.concat([score_method(slices, slices_h5, registration_h5s.get(m), m, split) for m in methods],
                          ignore_index=True)
    write_csv_atomic(out["labels"], per_label, index=False, float_format="%.6g")
    pairs = pair_summary(per_label)
    table = table2(pairs, methods)
    write_csv_atomic(out["pairs"], pairs, index=False, float_format="%.6g")
    write_csv_atomic(out["csv"], table, index=False, float_format="%.6g")
    tests = significance(pairs, methods, reference, value="dice_percent", higher_is_better=True)
    write_csv_atomic(out["significance"], tests, index=False, float_format="%.6g")
    write_text_atomic(out["md"], table2_markdown(table, title, split) + "\n"
                      + significance_markdown(tests, "per-pair mean Dice"))
    # Fig. 3: one structure of the first evaluated pair, fixed contour against each method's
    first = int(slices.indices(split)[0])
    label = int(figure_label) if figure_label is not None else largest_label(slices.fixed_labels[first])
    panels = {"before": slices.moving_labels[first]}
    for method, path in registration_h5s.items():
        with open_checked(path, FORMAT_REGISTRATION) as f:
            j = int(np.flatnonzero(f["index"][()] == first)[0])
            panels[method] = f["warped_labels"][j]
    contour_figure(slices.fixed[first], slices.fixed_labels[first], panels, label, out["figure"],
                   title=f"{slices.pair_id(first)}: label {label}, fixed (red) vs warped moving (blue)",
                   spacing=slices.spacing)
    return table

