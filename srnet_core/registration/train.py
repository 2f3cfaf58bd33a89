"""Training one registration method (SR-Net or an ablation) on a dataset's training pairs.

Patches of `patch` px are cut from the pairs at working resolution, centred on fixed-image tissue, and
augmented (the same right-angle rotation and flip for every channel of a sample, fixed and moving swapped
at random, a gamma change of each density). Adam with the seed's lr 1e-3 and beta1 0.93. Every
`checkpoint_every` iterations the model, optimiser, loss history and the step are saved atomically;
a restarted job with the same settings resumes there, and the batches it draws afterwards are the same
as an uninterrupted run's (each iteration has its own random stream), so a kill changes nothing.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..atomic import atomic_path, sha256_of, write_csv_atomic
from ..errors import InputError
from .data import PairStack
from .losses import SRNetLoss
from .network import RegNetConfig, build_network
from .warp import SpatialTransformer

log = logging.getLogger(__name__)
MODEL_FORMAT = "srnet-regnet-1"


@dataclass
class MethodSettings:
    """One column of the tables: the loss terms and whether segmentation maps enter the network."""
    lambda_smooth: float = 0.95
    lambda_seg: float = 1.05
    mse_weight: float = 1.0
    ncc_weight: float = 1.0
    window: int = 9
    map_inputs: bool = True
    sim_sigma: float = 1.0      # Gaussian blur (grid px) of both images in L_sim (losses.SimilarityLoss)

    @property
    def uses_maps(self) -> bool:
        return self.map_inputs or self.lambda_seg > 0

    def loss(self) -> SRNetLoss:
        return SRNetLoss(2, self.lambda_smooth, self.lambda_seg, self.mse_weight, self.ncc_weight, self.window,
                         self.sim_sigma)


@dataclass
class TrainSettings:
    iterations: int = 300
    batch_size: int = 4
    patch: int = 128
    lr: float = 1e-3
    beta1: float = 0.93
    checkpoint_every: int = 50
    seed: int = 0
    augment: bool = True


@dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)
    resumed_from: int = 0


def _crop(stack_channels: np.ndarray, mask: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    c, h, w = stack_channels.shape
    ys, xs = np.nonzero(mask)
    if len(ys):
        i = rng.integers(len(ys))
        cy, cx = int(ys[i]), int(xs[i])
    else:
        cy, cx = h // 2, w // 2
    y0 = int(np.clip(cy - patch // 2, 0, max(0, h - patch)))
    x0 = int(np.clip(cx - patch // 2, 0, max(0, w - patch)))
    out = np.zeros((c, patch, patch), np.float32)
    part = stack_channels[:, y0:y0 + patch, x0:x0 + patch]
    out[:, :part.shape[1], :part.shape[2]] = part
    return out


def sample_batch(stacks: list[PairStack], method: MethodSettings, settings: TrainSettings,
                 rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One batch: fixed, moving (N, 1, p, p) and, for map methods, fixed_map, moving_map (N, k, p, p)."""
    items = []
    for _ in range(settings.batch_size):
        stack = stacks[rng.integers(len(stacks))]
        channels = [stack.fixed, stack.moving]
        if method.uses_maps:
            channels += [stack.fixed_map, stack.moving_map]
        patch = _crop(np.concatenate(channels), stack.fixed_mask, settings.patch, rng)
        k = stack.k if method.uses_maps else 0
        f, m = patch[:1], patch[1:2]
        fm, mm = patch[2:2 + k], patch[2 + k:]
        if settings.augment:
            turns, flip = int(rng.integers(4)), bool(rng.integers(2))
            f, m, fm, mm = (np.rot90(a, turns, axes=(1, 2)) for a in (f, m, fm, mm))
            if flip:
                f, m, fm, mm = (a[:, :, ::-1] for a in (f, m, fm, mm))
            if rng.integers(2):
                f, m, fm, mm = m, f, mm, fm
            f = f ** rng.uniform(0.7, 1.4)
            m = m ** rng.uniform(0.7, 1.4)
        items.append([np.ascontiguousarray(a, dtype=np.float32) for a in (f, m, fm, mm)])
    names = ["fixed", "moving", "fixed_map", "moving_map"]
    batch = {n: torch.from_numpy(np.stack([it[i] for it in items])) for i, n in enumerate(names)}
    if not method.uses_maps:
        del batch["fixed_map"], batch["moving_map"]
    return batch


def forward_loss(model: torch.nn.Module, stn: SpatialTransformer, loss_fn: SRNetLoss, method: MethodSettings,
                 batch: dict[str, torch.Tensor]):
    parts = [batch["fixed"], batch["moving"]]
    if method.map_inputs:
        parts += [batch["fixed_map"], batch["moving_map"]]
    flow = model(torch.cat(parts, dim=1))
    warped = stn(batch["moving"], flow)
    warped_map = stn(batch["moving_map"], flow) if method.lambda_seg else None
    total, terms = loss_fn(batch["fixed"], warped, flow, batch.get("fixed_map"), warped_map)
    return total, terms, flow


def net_config_for(method: MethodSettings, k: int, encoder=None, decoder=None) -> RegNetConfig:
    config = RegNetConfig(spatial_dims=2, in_channels=2 + (2 * k if method.map_inputs else 0))
    if encoder:
        config.encoder = list(encoder)
    if decoder:
        config.decoder = list(decoder)
    return config


def train_registration(stacks: list[PairStack], method: MethodSettings, settings: TrainSettings,
                       net_config: RegNetConfig, workdir: str | os.PathLike,
                       device: torch.device | str = "cpu") -> TrainResult:
    """Train; `workdir/state.pt` holds the last checkpoint (a restart with the same fingerprint resumes)."""
    if not stacks:
        raise ValueError("no training pairs")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    model = build_network(net_config).to(device)
    stn = SpatialTransformer(2)
    loss_fn = method.loss()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(settings.beta1, 0.999))
    state_path = workdir / "state.pt"
    fingerprint = repr({"method": asdict(method), "settings": asdict(settings), "net": asdict(net_config),
                        "pairs": [(s.shape, float(s.fixed.sum()), float(s.moving.sum())) for s in stacks]})
    history: list[dict] = []
    start = 0
    if state_path.exists():
        try:
            state = torch.load(state_path, map_location=device, weights_only=True)
        except Exception as exc:                      # a checkpoint cut short is not a checkpoint
            log.warning("ignoring unreadable checkpoint %s (%s); starting over", state_path, exc)
            state = {}
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            start = int(state["iteration"])
            history = pd.DataFrame(state["history"].numpy(), columns=state["columns"]).to_dict("records")
            log.info("resuming training at iteration %d of %d from %s", start, settings.iterations, state_path)
        elif state:
            log.info("ignoring %s: made with other settings or data", state_path)
    model.train()
    started = time.perf_counter()
    every = max(1, settings.iterations // 20)
    for it in range(start, settings.iterations):
        rng = np.random.default_rng([settings.seed, it])
        batch = {k: v.to(device) for k, v in sample_batch(stacks, method, settings, rng).items()}
        total, terms, _ = forward_loss(model, stn, loss_fn, method, batch)
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        optimiser.step()
        row = {"iteration": it + 1, "total": float(total.item()),
               **{name: float(terms[name].item()) if name in terms else float("nan")
                  for name in ("sim", "smooth", "seg")}}
        history.append(row)
        if (it + 1) % every == 0 or it + 1 == settings.iterations:
            elapsed = time.perf_counter() - started
            log.info("training %d/%d: loss %.4f (sim %.4f, smooth %.5f, seg %.4f), %.2fs/iteration", it + 1,
                     settings.iterations, row["total"], row["sim"], row["smooth"], row["seg"],
                     elapsed / (it + 1 - start))
        if (it + 1) % settings.checkpoint_every == 0 and it + 1 < settings.iterations:
            save_state(state_path, model, optimiser, it + 1, history, fingerprint)
    model.eval()
    return TrainResult(model, history, start)


def save_state(path: Path, model, optimiser, iteration: int, history: list[dict], fingerprint: str) -> None:
    columns = list(history[0]) if history else ["iteration", "total", "sim", "smooth", "seg"]
    rows = torch.tensor([[h[c] for c in columns] for h in history], dtype=torch.float64).reshape(-1, len(columns))
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "iteration": iteration,
                    "history": rows, "columns": columns, "fingerprint": fingerprint}, tmp)


# ----------------------------------------------------------------------------------------------------
# model files: weights + everything needed to use them elsewhere

def save_model(path: str | os.PathLike, model: torch.nn.Module, method: MethodSettings, k: int,
               extra: dict | None = None) -> str:
    payload = {"format": MODEL_FORMAT, "config": asdict(model.config), "method": asdict(method), "k": int(k),
               "state_dict": model.state_dict(), "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return sha256_of(path)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    method: MethodSettings
    k: int
    sha256: str
    extra: dict


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load with weights_only=True (a checkpoint can never run code); refuses foreign or corrupt files."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise InputError(path, "model checkpoint not found") from None
    except Exception as exc:
        raise InputError(path, f"not a readable model checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise InputError(path, f"not an srnet registration model (format marker {MODEL_FORMAT} missing)")
    try:
        config = RegNetConfig(**payload["config"])
        # models saved before sim_sigma existed were trained on unsmoothed images
        method = MethodSettings(**{"sim_sigma": 0.0, **payload["method"]})
        model = build_network(config).to(device)
        model.load_state_dict(payload["state_dict"])
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        raise InputError(path, f"model checkpoint does not match this srnet version's network ({exc})") from None
    model.eval()
    return LoadedModel(model, method, int(payload["k"]), sha256_of(path), dict(payload.get("extra", {})))


def check_model_inputs(loaded: LoadedModel, k: int, path: str | os.PathLike, method_name: str,
                       configured: MethodSettings | None = None) -> None:
    """Refuse a model whose inputs do not fit this dataset (codebook size) or this method's settings."""
    if loaded.method.map_inputs and loaded.k != k:
        raise InputError(path, f"model takes {loaded.k}-cluster segmentation maps ({loaded.model.config.in_channels} "
                               f"input channels) but this dataset's codebook has k = {k}; re-train or use "
                               "a model made with the same codebook size")
    if configured is not None and configured.map_inputs != loaded.method.map_inputs:
        raise InputError(path, f"method {method_name!r} is configured with map_inputs={configured.map_inputs}, "
                               f"the model was trained with map_inputs={loaded.method.map_inputs}")


def plot_loss(history: pd.DataFrame, out_png: str | os.PathLike, title: str) -> None:
    from ..figures import new_figure, save_figure
    fig, ax = new_figure(figsize=(6, 3.5), dpi=120)
    smooth = max(1, len(history) // 50)
    for name in ("total", "sim", "smooth", "seg"):
        values = history[name]
        if values.notna().any():
            ax.plot(history["iteration"], values.rolling(smooth, min_periods=1).mean(), label=name, lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (running mean of {smooth})")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, out_png)


def write_history(history: list[dict], out_csv: str | os.PathLike) -> pd.DataFrame:
    frame = pd.DataFrame(history, columns=["iteration", "total", "sim", "smooth", "seg"])
    frame["iteration"] = frame["iteration"].astype(int)
    write_csv_atomic(out_csv, frame, float_format="%.6g")
    return frame
