"""SR-Net's training loss (seed Eq. 1): L_sim + lambda1 L_smooth + lambda2 L_seg, each an nn.Module
with shape checks and a `spatial_dims` argument.

L_sim   = w_mse * MSE + w_ncc * (1 - local NCC)   (srnet: both; srnet_mse / srnet_cc ablations: one),
          on both images smoothed by a Gaussian of `sigma` grid px (0 = as they are; see SimilarityLoss)
L_smooth = diffusion regulariser, the squared spatial gradients of u (mean over pixels: the seed's sum
           divided by the pixel count, so lambda1 does not depend on the image size)
L_seg   = MSE(M_fixed, field o M_moving)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _check_pair(a: torch.Tensor, b: torch.Tensor, spatial_dims: int, name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != spatial_dims + 2:
        raise ValueError(f"{name}: expected (N, C, *{spatial_dims} spatial dims), got {tuple(a.shape)}")


def box_sum(x: torch.Tensor, window: int, spatial_dims: int) -> torch.Tensor:
    """Sum of `x` over the window of `window` pixels centred on every pixel (zero outside the image),
    per channel: what a grouped convolution with a ones kernel and `window // 2` zero padding gives
    (an even window keeps the input's size and reaches one pixel further back than forward).

    Along each axis the window sum is built from sums over 1, 2, 4, ... pixels, each the sum of two
    shifted copies of the one before (9 px: 1 + 8, five additions per pixel), in the input's dtype:
    direct sums of a few dozen values lose nothing in float32, where differences of long prefix sums
    (cumulative sums) had to run in float64. The gradient is a window sum too (the adjoint of a window
    sum is the mirrored window's sum: the same window when it is odd), so autograd records one node
    here. On CPU the grouped convolution's backward took ~90 % of an instance-optimisation step, the
    float64 cumulative sums ~40 %; a 1-channel (window,) convolution is slower still."""
    return _BoxSum.apply(x, window, spatial_dims)


def _window_sums(x: torch.Tensor, window: int, spatial_dims: int, before: int) -> torch.Tensor:
    """out[i] = sum of x[i + 1 - before ... i + window - before] along every spatial axis (zero outside)."""
    out = x
    for axis in range(x.ndim - spatial_dims, x.ndim):
        pad = [0, 0] * (x.ndim - 1 - axis) + [before - 1, window - before]   # F.pad lists the last axis first
        out = _line_sums(F.pad(out, pad), window, axis)
    return out


def _line_sums(y: torch.Tensor, window: int, axis: int) -> torch.Tensor:
    """Sums of `window` consecutive values along `axis`: the (length - window + 1) full windows of y."""
    n = y.shape[axis] - window + 1
    out, offset = None, 0
    power, length, bits = y, 1, window        # power[i] = y[i] + ... + y[i + length - 1]
    while True:
        if bits & 1:
            part = power.narrow(axis, offset, n)
            out = part if out is None else out + part
            offset += length
        bits >>= 1
        if not bits:
            return out
        m = power.shape[axis] - length
        power = power.narrow(axis, 0, m) + power.narrow(axis, length, m)
        length *= 2


class _BoxSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, window: int, spatial_dims: int) -> torch.Tensor:
        ctx.window, ctx.spatial_dims = window, spatial_dims
        return _window_sums(x, window, spatial_dims, window // 2 + 1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        mirrored = ctx.window - ctx.window // 2         # window - before + 1: the same when odd
        return _window_sums(grad, ctx.window, ctx.spatial_dims, mirrored), None, None


class LocalNCC(nn.Module):
    """Mean local normalised cross-correlation over windows of `window` pixels (VoxelMorph's form:
    cross^2 / (var_a var_b + eps)), in [0, 1]; flat patches give 0, never NaN. The loss is 1 - NCC.
    `eps` is relative to the window's pixel count, so flatness means the same at every window size."""

    def __init__(self, spatial_dims: int = 2, window: int = 9, eps: float = 1e-5):
        super().__init__()
        self.spatial_dims, self.window, self.eps = spatial_dims, window, eps

    def ncc(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _check_pair(a, b, self.spatial_dims, "LocalNCC")

        def box(x):
            return box_sum(x, self.window, self.spatial_dims)

        # statistics over the pixels each window really covers (fewer at the borders), so NCC is
        # exactly invariant to gain and offset everywhere
        n = box(torch.ones_like(a[:1]))
        # one call per image's statistics: the fixed image's (no gradient in registration) apart from
        # those that depend on the warped image
        c = a.shape[1]
        sa, saa = box(torch.cat([a, a * a], dim=1)).split(c, dim=1)
        sb, sbb, sab = box(torch.cat([b, b * b, a * b], dim=1)).split(c, dim=1)
        cross = sab - sa * sb / n
        var_a = (saa - sa * sa / n).clamp(min=0)
        var_b = (sbb - sb * sb / n).clamp(min=0)
        return (cross * cross / (var_a * var_b + self.eps * n * n)).mean()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.ncc(a, b)


class GaussianSmoothing(nn.Module):
    """Separable Gaussian blur of every channel (`sigma` px, kernel truncated at 3 sigma, edges
    replicated so that the border makes no edge); sigma 0 = identity.

    Each axis is a weighted sum of shifted views of the padded input (as box_sum does): on CPU ~10x
    faster, forward and backward, than a grouped convolution with the same kernel, which more than
    doubled an instance-optimisation step."""

    def __init__(self, spatial_dims: int = 2, sigma: float = 1.0):
        super().__init__()
        if sigma < 0:
            raise ValueError(f"GaussianSmoothing: sigma must be >= 0, got {sigma}")
        self.spatial_dims, self.sigma = spatial_dims, float(sigma)
        radius = int(math.ceil(3 * sigma))
        taps = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)] if sigma else [1.0]
        self.weights = [t / sum(taps) for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"GaussianSmoothing: expected (N, C, *{self.spatial_dims} spatial dims), "
                             f"got {tuple(x.shape)}")
        r = len(self.weights) // 2
        if r == 0:
            return x
        x = F.pad(x, [r] * (2 * self.spatial_dims), mode="replicate")
        for axis in range(2, x.ndim):
            n = x.shape[axis] - 2 * r
            out = x.narrow(axis, r, n) * self.weights[r]
            for k in range(r):                      # the kernel is symmetric: pair its taps
                out = out + (x.narrow(axis, k, n) + x.narrow(axis, 2 * r - k, n)) * self.weights[k]
            x = out
        return x


class SimilarityLoss(nn.Module):
    """w_mse * MSE + w_ncc * (1 - local NCC) between the fixed and the warped image, both first smoothed
    by a Gaussian of `sigma` px.

    Why smooth: bilinear resampling blurs the warped image by an amount that depends on the sub-pixel
    part of the displacement (most at half a pixel). Where the two images share structure but not their
    fine texture (two stains of neighbouring sections), that blur alone lowers MSE and raises NCC, so the
    loss prefers a shift of about half a grid pixel on every pair, in the same direction whichever image
    is fixed (the interpolation artefact known from mutual-information registration, Pluim et al.,
    2000). Blurring both images first leaves the resampling's extra blur too little fine detail to act
    on; sigma 1 px removes the drift on the test's pairs of shared structure with independent texture
    (tests/test_registration.py), 0.5 px does not."""

    def __init__(self, spatial_dims: int = 2, mse_weight: float = 1.0, ncc_weight: float = 1.0, window: int = 9,
                 sigma: float = 0.0):
        super().__init__()
        self.spatial_dims, self.mse_weight, self.ncc_weight = spatial_dims, mse_weight, ncc_weight
        self.ncc = LocalNCC(spatial_dims, window)
        self.smoothing = GaussianSmoothing(spatial_dims, sigma)

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        _check_pair(fixed, warped, self.spatial_dims, "SimilarityLoss")
        fixed, warped = self.smoothing(fixed), self.smoothing(warped)
        loss = fixed.new_zeros(())
        if self.mse_weight:
            loss = loss + self.mse_weight * F.mse_loss(warped, fixed)
        if self.ncc_weight:
            loss = loss + self.ncc_weight * self.ncc(fixed, warped)
        return loss


class DiffusionRegulariser(nn.Module):
    """Mean over pixels of sum_d |d u / d x_d|^2 (forward differences)."""

    def __init__(self, spatial_dims: int = 2):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, field: torch.Tensor) -> torch.Tensor:
        if field.ndim != self.spatial_dims + 2 or field.shape[1] != self.spatial_dims:
            raise ValueError(f"DiffusionRegulariser: expected (N, {self.spatial_dims}, ...), got {tuple(field.shape)}")
        total = field.new_zeros(())
        for axis in range(2, field.ndim):
            total = total + (torch.diff(field, dim=axis) ** 2).mean() * field.shape[1]
        return total


class SegmentationLoss(nn.Module):
    """MSE between the fixed image's segmentation map and the warped moving map (seed Eq. 2)."""

    def __init__(self, spatial_dims: int = 2):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, fixed_map: torch.Tensor, warped_map: torch.Tensor) -> torch.Tensor:
        _check_pair(fixed_map, warped_map, self.spatial_dims, "SegmentationLoss")
        return F.mse_loss(warped_map, fixed_map)


class SRNetLoss(nn.Module):
    """Total loss with the seed's lambda1 = 0.95 and lambda2 = 1.05; returns (total, parts).
    `sim_sigma` defaults to the seed's unblurred L_sim here; the histology methods
    (train.MethodSettings) blur by 1 px, the brain track's do not."""

    def __init__(self, spatial_dims: int = 2, lambda_smooth: float = 0.95, lambda_seg: float = 1.05,
                 mse_weight: float = 1.0, ncc_weight: float = 1.0, window: int = 9, sim_sigma: float = 0.0):
        super().__init__()
        self.similarity = SimilarityLoss(spatial_dims, mse_weight, ncc_weight, window, sim_sigma)
        self.smooth = DiffusionRegulariser(spatial_dims)
        self.seg = SegmentationLoss(spatial_dims)
        self.lambda_smooth, self.lambda_seg = lambda_smooth, lambda_seg

    def forward(self, fixed, warped, field, fixed_map=None, warped_map=None):
        parts = {"sim": self.similarity(fixed, warped), "smooth": self.smooth(field)}
        total = parts["sim"] + self.lambda_smooth * parts["smooth"]
        if self.lambda_seg and fixed_map is not None:
            parts["seg"] = self.seg(fixed_map, warped_map)
            total = total + self.lambda_seg * parts["seg"]
        return total, parts
