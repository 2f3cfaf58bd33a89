"""Alternative registration backbones: DIRNet (B-spline control points) and FlowNet-Simple.

Both map (N, in_channels, *spatial) to a displacement field (N, spatial_dims, *spatial) in pixels of
the input grid (channel 0 = dx along the last axis, 1 = dy, 2 = dz), the convention of
`network.RegistrationUNet` and `warp.SpatialTransformer` (warped moving = moving(p + u(p))). One code
path serves 2D and 3D; any input size is padded (replicate, at the end of each axis) to the multiple
the network needs and the field is cropped back. The last flow convolutions start at normal(std=1e-5)
weights and zero bias, so training starts near the identity, and their output is multiplied by
`config.flow_scale` (see RegNetConfig).

DIRNet -- B. D. de Vos, F. F. Berendsen, M. A. Viergever, M. Staring, I. Isgum, "End-to-end
unsupervised deformable image registration with a convolutional neural network", DLMIA 2017
(arXiv:1704.06065). A plain CNN (3x3 convolutions with LeakyReLU(0.2); each of the first
log2(grid_spacing) stages ends with 2x average pooling, as in the paper; stages beyond that keep the
resolution) reduces the image pair to one cell per `grid_spacing` pixels and predicts, for each control
point, spatial_dims displacement coefficients; cubic B-spline interpolation turns them into the dense
field, so the field is smooth by construction and has far fewer degrees of freedom than a dense one.

  Control-point placement: coarse cell j covers pixels [j s, (j + 1) s) of the padded image
  (s = grid_spacing) and its control point sits at the cell centre, pixel j s + (s - 1) / 2 (the
  align_corners=False convention of the rest of the package). The cubic B-spline has support
  (-2 s, 2 s), so the pixels near the borders also feel control points outside the image: two extra
  control points are added beyond each edge (K = G + 4 per axis for G cells). The network predicts
  them from the coarse feature map replicate-padded by 3 cells, through a 3x3 convolution without
  padding. The interpolation u(x) = sum_k c_k prod_axes B3((x_a - x_{k,a}) / s) is exact and separable:
  per axis, a grouped transposed convolution with stride s whose kernel is the cubic B-spline sampled
  at the 4 s pixel offsets (a non-persistent buffer), then a crop (`BSplineUpsample`). Coefficients are
  in pixels: the B-splines sum to one, so a constant grid gives that constant displacement.

FlowNet-Simple -- A. Dosovitskiy, P. Fischer, E. Ilg, P. Haeusser, C. Hazirbas, V. Golkov,
P. van der Smagt, D. Cremers, T. Brox, "FlowNet: Learning optical flow with convolutional networks",
ICCV 2015. The pair, stacked on channels, goes through stride-2 convolutions with large kernels first
(7, 5, 5, then 3); from the third stage on each strided convolution is followed by a 3x3 stride-1 one
(FlowNet's conv3_1, conv4_1, ...). The refinement goes back up with 4x4 stride-2 transposed
convolutions ("upconvs"); at each level it concatenates the upconv output, the encoder feature of that
level and the coarser flow prediction upsampled to it, and predicts a flow there (3x3 convolution).
As in FlowNet-S the last prediction is at 1/4 of the input resolution and is upsampled (bilinear /
trilinear, align_corners=False) to the input size.

  Channel mapping: config.encoder[i] = width of encoder stage i (resolution 1 / 2^(i+1)); at least 3
  stages. config.decoder[:L-2] = widths of the L - 2 upconvs (from level L-1 down to level 2, i.e.
  1/4 resolution); further decoder entries are 3x3 convolutions at the 1/4 level before the final
  prediction (the role of the UNet's extra decoder convolutions).
  Units: every level's prediction is in pixels of the *input* grid (the raw conv output times
  flow_scale), so upsampling a prediction only interpolates it and never rescales its values; the
  coarser prediction is fed to the next level divided by flow_scale (the raw output, O(1)).
  `forward(x, return_pyramid=True)` also returns the per-level predictions for a multi-scale loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .network import RegNetConfig


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


def _check_input(x: torch.Tensor, config: RegNetConfig) -> None:
    d = config.spatial_dims
    if x.ndim != d + 2 or x.shape[1] != config.in_channels:
        raise ValueError(f"expected (N, {config.in_channels}, *{d} spatial), got {tuple(x.shape)}")


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the end of every spatial axis up to a multiple of `multiple`."""
    pad = []
    for n in reversed(x.shape[2:]):
        pad += [0, (-n) % multiple]
    return F.pad(x, pad, mode="replicate") if any(pad) else x


def _crop(x: torch.Tensor, spatial) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]


def _flow_conv(conv, cin: int, d: int, **kwargs) -> nn.Module:
    layer = conv(cin, d, 3, **kwargs)
    nn.init.normal_(layer.weight, std=1e-5)            # start near the identity transform
    nn.init.zeros_(layer.bias)
    return layer


def cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    """The centred cubic B-spline B3(t): 2/3 - t^2 + |t|^3 / 2 on |t| < 1, (2 - |t|)^3 / 6 on
    1 <= |t| < 2, zero beyond."""
    a = t.abs()
    inner = 2.0 / 3.0 - a ** 2 + a ** 3 / 2
    outer = (2 - a).clamp(min=0) ** 3 / 6
    return torch.where(a < 1, inner, outer)


def _check_spacing(spacing) -> int:
    if isinstance(spacing, bool) or not isinstance(spacing, int) or spacing < 2 or spacing & (spacing - 1):
        raise ValueError(f"grid_spacing must be a power of 2 >= 2, got {spacing!r}")
    return spacing


class BSplineUpsample(nn.Module):
    """Dense field from a grid of cubic B-spline coefficients: (N, C, *K) -> (N, C, *size).

    Along each axis, coefficient k sits at pixel (k - 2) * s + (s - 1) / 2 (`control_points`), i.e. at
    the centres of the K - 4 cells of s pixels that tile the image plus two control points beyond each
    edge, which is what the B-spline's support of 4 s needs for every pixel of the (K - 4) s pixels to
    see all of its control points. out(p) = sum_k c_k prod_a B3((p_a - x_{k,a}) / s), exactly, for
    p in [0, size) with size <= (K - 4) s per axis (default: (K - 4) s)."""

    def __init__(self, spatial_dims: int, spacing: int):
        super().__init__()
        _check_dims(spatial_dims)
        self.spatial_dims = spatial_dims
        self.spacing = _check_spacing(spacing)
        s = spacing
        # conv_transpose puts coefficient k at output index k s + (2 s - 1/2); the kernel covers the
        # open support (-2 s, 2 s) around it: offsets j - (2 s - 1/2), j = 0 .. 4 s - 1, all non-zero
        # (a float32 buffer that follows the module's device and dtype; float64 input recomputes it
        # in float64, so the interpolation is exact to double precision there)
        self.register_buffer("kernel", self._kernel(s, torch.float64).float(), persistent=False)
        # pixel p is output index p + 3.5 s: control point k sits at index k s + 2 s - 1/2 and at
        # pixel (k - 2) s + (s - 1) / 2, a difference of 3.5 s (an integer, s being even)
        self.offset = 7 * s // 2

    @staticmethod
    def _kernel(spacing: int, dtype, device=None) -> torch.Tensor:
        offsets = torch.arange(4 * spacing, dtype=torch.float64, device=device) + 0.5 - 2 * spacing
        return cubic_bspline(offsets / spacing).to(dtype)

    @staticmethod
    def control_points(n_coefficients: int, spacing: int) -> torch.Tensor:
        """Pixel positions of `n_coefficients` control points along one axis."""
        return (torch.arange(n_coefficients, dtype=torch.float64) - 2) * spacing + (spacing - 1) / 2

    def forward(self, coeffs: torch.Tensor, size=None) -> torch.Tensor:
        d, s = self.spatial_dims, self.spacing
        if coeffs.ndim != d + 2:
            raise ValueError(f"expected (N, C, *{d} control-point axes), got {tuple(coeffs.shape)}")
        grid = tuple(coeffs.shape[2:])
        if size is None:
            size = tuple((k - 4) * s for k in grid)
        size = tuple(int(n) for n in size)
        if len(size) != d or any(n < 1 or n > (k - 4) * s for n, k in zip(size, grid)):
            raise ValueError(f"{grid} control points (2 beyond each edge) at spacing {s} cover at most "
                             f"{tuple((k - 4) * s for k in grid)} pixels, asked for {size}")
        conv_t = F.conv_transpose2d if d == 2 else F.conv_transpose3d
        c = coeffs.shape[1]
        if coeffs.dtype == torch.float64:
            kernel = self._kernel(s, torch.float64, coeffs.device)
        else:
            kernel = self.kernel.to(device=coeffs.device, dtype=coeffs.dtype)
        out = coeffs
        for axis in range(d):
            shape, stride = [1] * d, [1] * d
            shape[axis], stride[axis] = 4 * s, s
            weight = kernel.view(1, 1, *shape).repeat(c, 1, *([1] * d))
            out = conv_t(out, weight, stride=tuple(stride), groups=c)
            out = out.narrow(2 + axis, self.offset, size[axis])
        return out


class DIRNet(nn.Module):
    """de Vos et al. 2017: CNN -> B-spline control-point displacements -> dense field (module docs)."""

    def __init__(self, config: RegNetConfig):
        super().__init__()
        self.config = config
        d = config.spatial_dims
        _check_dims(d)
        s = _check_spacing(config.grid_spacing)
        self.n_down = int(math.log2(s))
        if len(config.encoder) < self.n_down:
            raise ValueError(f"grid_spacing {s} needs {self.n_down} downsampling stages, but the encoder "
                             f"has only {len(config.encoder)} entries")
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        pool = nn.AvgPool2d if d == 2 else nn.AvgPool3d
        self.stages = nn.ModuleList()
        cin = config.in_channels
        for i, cout in enumerate(config.encoder):
            layers = [conv(cin, cout, 3, padding=1), nn.LeakyReLU(0.2)]
            if i < self.n_down:
                layers.append(pool(2))
            self.stages.append(nn.Sequential(*layers))
            cin = cout
        # coarse features replicate-padded by 3 cells, 3x3 conv without padding -> G + 4 control points
        self.head = _flow_conv(conv, cin, d)
        self.bspline = BSplineUpsample(d, s)

    def coefficients(self, x: torch.Tensor) -> torch.Tensor:
        """(N, spatial_dims, *(ceil(n / s) + 4)) control-point displacements in pixels (after
        flow_scale), laid out as in BSplineUpsample."""
        _check_input(x, self.config)
        h = _pad_to_multiple(x, self.config.grid_spacing)
        for stage in self.stages:
            h = stage(h)
        h = F.pad(h, [3] * (2 * self.config.spatial_dims), mode="replicate")
        return self.head(h) * self.config.flow_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coeffs = self.coefficients(x)
        return self.bspline(coeffs, size=tuple(x.shape[2:]))   # padding is at the end: crop from 0


class FlowNetSimple(nn.Module):
    """Dosovitskiy et al. 2015, FlowNet-S: strided large-kernel encoder, upconv refinement with
    per-level flow predictions, final prediction at 1/4 resolution upsampled (module docs)."""

    KERNELS = (7, 5, 5)

    def __init__(self, config: RegNetConfig):
        super().__init__()
        self.config = config
        d = config.spatial_dims
        _check_dims(d)
        enc, dec = list(config.encoder), list(config.decoder)
        self.levels = len(enc)
        if self.levels < 3:
            raise ValueError(f"FlowNetSimple needs at least 3 encoder stages, got {len(enc)}")
        n_up = self.levels - 2
        if len(dec) < n_up:
            raise ValueError(f"FlowNetSimple with {len(enc)} encoder stages needs at least {n_up} decoder "
                             f"entries (upconv widths), got {len(dec)}")
        conv = nn.Conv2d if d == 2 else nn.Conv3d
        upconv = nn.ConvTranspose2d if d == 2 else nn.ConvTranspose3d
        self._mode = "bilinear" if d == 2 else "trilinear"

        self.encoder = nn.ModuleList()
        cin = config.in_channels
        for i, cout in enumerate(enc):
            k = self.KERNELS[i] if i < len(self.KERNELS) else 3
            layers = [conv(cin, cout, k, stride=2, padding=k // 2), nn.LeakyReLU(0.2)]
            if i >= 2:                                   # conv3_1, conv4_1, ...
                layers += [conv(cout, cout, 3, padding=1), nn.LeakyReLU(0.2)]
            self.encoder.append(nn.Sequential(*layers))
            cin = cout

        self.predict = nn.ModuleList([_flow_conv(conv, cin, d, padding=1)])   # coarsest level L
        self.upconvs = nn.ModuleList()
        for i in range(n_up):
            level = self.levels - 1 - i                  # 1-based: resolution 1 / 2^level
            self.upconvs.append(nn.Sequential(upconv(cin, dec[i], 4, stride=2, padding=1), nn.LeakyReLU(0.2)))
            cin = dec[i] + enc[level - 1] + d
            if i < n_up - 1:
                self.predict.append(_flow_conv(conv, cin, d, padding=1))
        self.extra = nn.ModuleList()
        for cout in dec[n_up:]:
            self.extra.append(nn.Sequential(conv(cin, cout, 3, padding=1), nn.LeakyReLU(0.2)))
            cin = cout
        self.predict.append(_flow_conv(conv, cin, d, padding=1))              # level 2: 1/4 resolution

    def forward(self, x: torch.Tensor, return_pyramid: bool = False):
        """Field (N, d, *spatial) in input pixels; with return_pyramid also the per-level predictions,
        coarsest first, each (N, d, *ceil(spatial / 2^level)) and also in input-grid pixels."""
        _check_input(x, self.config)
        spatial = tuple(x.shape[2:])
        h = _pad_to_multiple(x, 2 ** self.levels)
        padded = tuple(h.shape[2:])
        feats = []
        for stage in self.encoder:
            h = stage(h)
            feats.append(h)
        raw = self.predict[0](h)
        raws = [raw]
        n_up = len(self.upconvs)
        for i, up in enumerate(self.upconvs):
            level = self.levels - 1 - i
            coarse = F.interpolate(raw, scale_factor=2, mode=self._mode, align_corners=False)
            h = torch.cat([up(h), feats[level - 1], coarse], dim=1)
            if i == n_up - 1:
                for layer in self.extra:
                    h = layer(h)
            raw = self.predict[i + 1](h)
            raws.append(raw)
        scale = self.config.flow_scale
        flow = F.interpolate(raw * scale, size=padded, mode=self._mode, align_corners=False)
        flow = _crop(flow, spatial)
        if not return_pyramid:
            return flow
        pyramid = []
        for i, r in enumerate(raws):
            f = 2 ** (self.levels - i)
            pyramid.append(_crop(r * scale, tuple(-(-n // f) for n in spatial)))
        return flow, pyramid
