"""VoxelMorph-style registration UNet: strided 3x3 convolutions with LeakyReLU(0.2) down, upsampling
with skip connections up, a 3x3 convolution to the displacement field. One code path for 2D and 3D.

Inputs are concatenated along channels: fixed image, moving image, and (for SR-Net) their
segmentation maps. Any size: padded to a multiple of 2^levels and cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class RegNetConfig:
    spatial_dims: int = 2
    in_channels: int = 2                       # 2 x image channels (+ 2 x map channels for SR-Net)
    encoder: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    decoder: list[int] = field(default_factory=lambda: [32, 32, 32, 32, 16, 16])
    # the last convolution's output is multiplied by this: Adam moves every weight by about lr per
    # step, so without it a displacement of several pixels takes thousands of steps to reach
    flow_scale: float = 10.0
    # "unet" (VoxelMorph, this file), "dirnet" (B-spline control points) or "flownet" (FlowNet-Simple),
    # both in backbones.py; grid_spacing = DIRNet's control-point spacing in pixels (a power of 2)
    backbone: str = "unet"
    grid_spacing: int = 8


BACKBONES = ("unet", "dirnet", "flownet")


def build_network(config: RegNetConfig) -> nn.Module:
    """The registration network a config names; every backbone maps (N, in_channels, *spatial) to a
    displacement field (N, spatial_dims, *spatial) in pixels, any spatial size."""
    if config.backbone == "unet":
        return RegistrationUNet(config)
    if config.backbone == "dirnet":
        from .backbones import DIRNet
        return DIRNet(config)
    if config.backbone == "flownet":
        from .backbones import FlowNetSimple
        return FlowNetSimple(config)
    raise ValueError(f"unknown backbone {config.backbone!r}; expected one of {', '.join(BACKBONES)}")


class RegistrationUNet(nn.Module):
    def __init__(self, config: RegNetConfig):
        super().__init__()
        self.config = config
        d = config.spatial_dims
        if d not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {d}")
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        self._mode = "bilinear" if d == 2 else "trilinear"

        def block(cin, cout, stride=1):
            # in place: the activation needs no copy of a full-resolution feature map (its gradient
            # is recovered from the output, since the slope 0.2 keeps the sign)
            return nn.Sequential(conv(cin, cout, 3, stride=stride, padding=1), nn.LeakyReLU(0.2, inplace=True))

        enc = config.encoder
        self.levels = len(enc)
        self.down = nn.ModuleList()
        cin = config.in_channels
        for cout in enc:
            self.down.append(block(cin, cout, stride=2))
            cin = cout
        skips = [config.in_channels] + enc[:-1]        # resolution of each level after upsampling
        self.up = nn.ModuleList()
        dec = config.decoder
        for i in range(self.levels):
            self.up.append(block(cin + skips[-1 - i], dec[i]))
            cin = dec[i]
        self.extra = nn.ModuleList()
        for cout in dec[self.levels:]:
            self.extra.append(block(cin, cout))
            cin = cout
        self.flow = conv(cin, d, 3, padding=1)
        nn.init.normal_(self.flow.weight, std=1e-5)     # start near the identity transform
        nn.init.zeros_(self.flow.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.config.spatial_dims
        if x.ndim != d + 2 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected (N, {self.config.in_channels}, *{d} spatial), got {tuple(x.shape)}")
        spatial = x.shape[2:]
        multiple = 2 ** self.levels
        pad = []
        for n in reversed(spatial):
            pad += [0, (-n) % multiple]
        x = F.pad(x, pad, mode="replicate") if any(pad) else x
        if not self.training:
            # channels-last (NHWC) lets oneDNN run the convolutions without reordering each feature
            # map: 1.34 -> 0.76 s for a 1,024 px grid on 2 CPU cores (docs/BENCHMARKS.md), same
            # numbers to float rounding. Inference only: training was not measured in this layout.
            fmt = torch.channels_last if d == 2 else torch.channels_last_3d
            if not self.flow.weight.is_contiguous(memory_format=fmt):
                # outside inference mode: the converted weights must stay usable for training later
                with torch.inference_mode(False), torch.no_grad():
                    self.to(memory_format=fmt)
            # a fresh copy, not .contiguous(): a (1, C, H, W) array that is already NHWC in memory can
            # carry a batch stride of C, and torch.cat then falls back to NCHW at full resolution
            x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt).copy_(x)
        skips = [x]
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        skips.pop()
        for layer in self.up:
            x = F.interpolate(x, scale_factor=2, mode=self._mode, align_corners=False)
            x = layer(torch.cat([x, skips.pop()], dim=1))
        for layer in self.extra:
            x = layer(x)
        flow = self.flow(x) * self.config.flow_scale
        crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
        return flow[crop].contiguous()
