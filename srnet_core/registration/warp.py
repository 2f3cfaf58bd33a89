"""Spatial transformer: backward warping by a dense displacement field (DESIGN.md section 3).

The field u lives on the fixed grid, in pixels, channel 0 = dx (last axis), 1 = dy, 2 = dz for 3D;
the warped moving image is moving(p + u(p)). Pixel centres sit at integer coordinates, matching
grid_sample with align_corners=False: index i has normalised coordinate (2 i + 1) / n - 1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SpatialTransformer(nn.Module):
    def __init__(self, spatial_dims: int = 2, mode: str = "bilinear", padding_mode: str = "border"):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.mode = mode
        self.padding_mode = padding_mode
        self._grid_key = None
        self._grid = None

    def _identity(self, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """(1, *spatial, D) pixel coordinates in (x, y[, z]) order, built lazily on the input's
        device and dtype and reused while they stay the same."""
        key = (shape, device, dtype)
        if key != self._grid_key:
            axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
            mesh = torch.meshgrid(*axes, indexing="ij")          # (z,) y, x
            self._grid = torch.stack(mesh[::-1], dim=-1)[None]  # x, y(, z)
            self._grid_key = key
        return self._grid

    def forward(self, image: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
        d = self.spatial_dims
        if image.ndim != d + 2 or field.ndim != d + 2:
            raise ValueError(f"expected (N, C, *{d} spatial) image and (N, {d}, ...) field, got "
                             f"{tuple(image.shape)} and {tuple(field.shape)}")
        if field.shape[1] != d or field.shape[2:] != image.shape[2:] or field.shape[0] != image.shape[0]:
            raise ValueError(f"field {tuple(field.shape)} does not fit image {tuple(image.shape)}")
        spatial = tuple(image.shape[2:])
        coords = self._identity(spatial, field.device, field.dtype) + torch.movedim(field, 1, -1)
        sizes = torch.tensor(spatial[::-1], device=field.device, dtype=field.dtype)   # (W, H[, D])
        grid = (2 * coords + 1) / sizes - 1
        return F.grid_sample(image.to(field.dtype), grid, mode=self.mode, padding_mode=self.padding_mode,
                             align_corners=False)
