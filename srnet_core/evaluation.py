"""rTRE (ANHIR's relative target registration error) and the per-tissue tables.

TRE of landmark i is the Euclidean distance, in full-resolution pixels of the fixed image, between the
moving landmark mapped into the fixed frame and the fixed landmark; rTRE = TRE / sqrt(w^2 + h^2) with
(w, h) the fixed image's full-resolution size. Only the first min(n_fixed, n_moving) landmarks count.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .errors import InputError
from .landmarks import read_landmarks

STAT_COLUMNS = ["rtre_median", "rtre_mean", "rtre_max", "rtre_min", "rtre_std", "n_landmarks"]


def landmark_errors(fixed: np.ndarray, warped_moving: np.ndarray, fixed_size: tuple[int, int]
                    ) -> pd.DataFrame:
    """Per-landmark errors; fixed_size = (width, height) of the fixed image at full resolution."""
    n = min(len(fixed), len(warped_moving))
    f, w = np.asarray(fixed, dtype=np.float64)[:n], np.asarray(warped_moving, dtype=np.float64)[:n]
    diagonal = float(np.hypot(*fixed_size))
    tre = np.hypot(*(w - f).T)
    return pd.DataFrame({
        "landmark": np.arange(1, n + 1),
        "x_fixed": f[:, 0], "y_fixed": f[:, 1], "x_warped": w[:, 0], "y_warped": w[:, 1],
        "tre": tre, "rtre": tre / diagonal,
    })


def summarize(errors: pd.DataFrame) -> dict:
    rtre = errors["rtre"].to_numpy()
    return {"rtre_median": float(np.median(rtre)), "rtre_mean": float(rtre.mean()),
            "rtre_max": float(rtre.max()), "rtre_min": float(rtre.min()),
            "rtre_std": float(rtre.std()), "n_landmarks": int(len(rtre))}


def median_rtre_table(pairs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Seed Table 1 layout: rows `All` then each tissue, one column per method, each cell the median
    over pairs of the per-pair median rTRE. `pairs` has columns tissue, method, rtre_median."""
    scored = pairs.dropna(subset=["rtre_median"])
    by_tissue = scored.pivot_table(index="tissue", columns="method", values="rtre_median",
                                   aggfunc="median")
    overall = scored.groupby("method")["rtre_median"].median().to_frame("All").T
    table = pd.concat([overall, by_tissue.sort_index()])
    table = table.reindex(columns=[m for m in methods if m in table.columns])
    table.index.name = "tissue"
    table.columns.name = None
    counts = scored[scored["method"] == methods[0]].groupby("tissue").size()
    table.insert(0, "pairs", [int(counts.sum())] + [int(counts.get(t, 0)) for t in table.index[1:]])
    return table


def table_markdown(table: pd.DataFrame, title: str, float_format: str = "{:.5f}") -> str:
    header = "| " + " | ".join([table.index.name or ""] + [str(c) for c in table.columns]) + " |"
    rule = "|" + "---|" * (len(table.columns) + 1)
    lines = [f"# {title}", "", header, rule]
    for name, row in zip(table.index, table.itertuples(index=False)):
        cells = []
        for column, value in zip(table.columns, row):
            if pd.isna(value):
                cells.append("–")
            elif pd.api.types.is_integer_dtype(table[column]):
                cells.append(str(int(value)))
            else:
                cells.append(float_format.format(value))
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_pair(fixed_landmarks: str, warped_landmarks: str, fixed_size: tuple[int, int],
                  missing_landmarks: str = "error") -> tuple[pd.DataFrame, dict]:
    """Errors of one pair for one method: (per-landmark frame, summary). A pair whose landmark files
    are not named in the table is unscored; one whose files are named but absent fails (InputError)
    unless missing_landmarks == "unscored"."""
    empty = landmark_errors(np.zeros((0, 2)), np.zeros((0, 2)), fixed_size)
    for label, path in (("fixed", fixed_landmarks), ("moving", warped_landmarks)):
        if not path:
            return empty, {"scored": False, "reason": f"no {label} landmarks named in the cover table"}
        if not os.path.exists(path):
            if missing_landmarks == "unscored":
                return empty, {"scored": False, "reason": f"{label} landmark file missing: {path}"}
            raise InputError(path, f"{label} landmark file not found (set the dataset's "
                                   "missing_landmarks: unscored to register such pairs without scoring)")
    errors = landmark_errors(read_landmarks(fixed_landmarks), read_landmarks(warped_landmarks), fixed_size)
    return errors, {"scored": True, "reason": "", **summarize(errors)}
