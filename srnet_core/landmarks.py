"""Landmark files: ANHIR/ImageJ CSV (`,X,Y` with a 1-based index column) and BIRL `.pts`.

Coordinates are (x, y) in full-resolution pixels of the image they belong to (see coords.py).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_path
from .errors import InputError


def read_landmarks(path: str | os.PathLike, allow_nan: bool = False) -> np.ndarray:
    """Read an ANHIR CSV or BIRL .pts file into an (N, 2) float64 array of (x, y)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "landmark file not found")
    if path.suffix.lower() == ".pts":
        points = _read_pts(path)
    else:
        points = _read_csv(path)
    if len(points) == 0:
        raise InputError(path, "landmark file holds no points")
    if not allow_nan and not np.isfinite(points).all():
        bad = int(np.flatnonzero(~np.isfinite(points).all(axis=1))[0])
        raise InputError(path, f"landmark {bad + 1} has a missing or non-finite coordinate")
    return points


def _read_csv(path: Path) -> np.ndarray:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable landmark CSV ({exc})") from None
    columns = {str(c).strip().upper(): c for c in frame.columns}
    missing = [c for c in ("X", "Y") if c not in columns]
    if missing:
        raise InputError(
            path, f"landmark CSV lacks column(s) {', '.join(missing)} (found: {list(frame.columns)}); "
            "expected the ANHIR layout ',X,Y'")
    out = np.empty((len(frame), 2), dtype=np.float64)
    for j, name in enumerate(("X", "Y")):
        raw = frame[columns[name]].str.strip()
        values = pd.to_numeric(raw.replace({"": "nan"}), errors="coerce")
        bad = values.isna() & ~raw.str.lower().isin(["", "nan"])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(path, f"non-numeric {name} value {raw.iloc[row]!r} in data row {row + 1}")
        out[:, j] = values.to_numpy(dtype=np.float64)
    return out


def _read_pts(path: Path) -> np.ndarray:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(lines) < 2 or lines[0].lower() != "point":
        raise InputError(path, "not a BIRL .pts file (expected 'point', the count, then 'x y' rows)")
    try:
        count = int(lines[1])
        rows = [[float(v) for v in ln.split()] for ln in lines[2:]]
    except ValueError as exc:
        raise InputError(path, f"non-numeric value in .pts file ({exc})") from None
    if len(rows) != count or any(len(r) != 2 for r in rows):
        raise InputError(path, f".pts file announces {count} points but holds {len(rows)} valid rows")
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def landmarks_csv_text(points: np.ndarray) -> str:
    """ANHIR CSV text: header `,X,Y`, 1-based index (what ANHIR, ImageJ and BIRL read)."""
    buf = io.StringIO()
    frame = pd.DataFrame(np.asarray(points, dtype=np.float64), columns=["X", "Y"])
    frame.index = np.arange(1, len(frame) + 1)
    frame.to_csv(buf, float_format="%.6f")
    return buf.getvalue()


def write_landmarks(path: str | os.PathLike, points: np.ndarray) -> None:
    """Write (N, 2) points atomically; `.pts` suffix gives BIRL format, anything else ANHIR CSV."""
    path = Path(path)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if path.suffix.lower() == ".pts":
        text = "point\n%d\n" % len(points) + "".join(f"{x:.6f} {y:.6f}\n" for x, y in points)
    else:
        text = landmarks_csv_text(points)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
