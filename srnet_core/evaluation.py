"""rTRE (ANHIR's relative target registration error) and the per-tissue tables.

TRE of landmark i is the Euclidean distance, in full-resolution pixels of the fixed image, between the
moving landmark mapped into the fixed frame and the fixed landmark; rTRE = TRE / sqrt(w^2 + h^2) with
(w, h) the fixed image's full-resolution size. Only the first min(n_fixed, n_moving) landmarks count.

As ANHIR scores a submission: a warped landmark that is missing (the file is shorter than the moving
landmark file) or not finite gets the pair's initial error for that point, counts as not improved for
robustness (the share of landmarks whose error fell below their initial error), and the pair is
flagged (`n_missing`), never silently dropped. A pair that failed (bad input found by the dataset stage,
or a failure record from a later stage, see outcome.py) is scored the same way as a result with every
point missing: its initial error, robustness 0, flagged `failed` with its reason; it is unscored only
when its landmarks or the fixed image's size cannot be read.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from .errors import InputError
from .landmarks import read_landmarks

STAT_COLUMNS = ["rtre_median", "rtre_mean", "rtre_max", "rtre_min", "rtre_std", "robustness", "n_landmarks",
                "n_missing"]


def landmark_errors(fixed: np.ndarray, warped_moving: np.ndarray, fixed_size: tuple[int, int],
                    initial_moving: np.ndarray | None = None) -> pd.DataFrame:
    """Per-landmark errors; fixed_size = (width, height) of the fixed image at full resolution.
    `initial_moving`: the moving landmarks before registration. With it, n = min(n_fixed, n_moving)
    and points missing or non-finite in `warped_moving` take their initial error (flag `missing`);
    without it, n = min(n_fixed, n_warped) and every point must be finite."""
    f = np.asarray(fixed, dtype=np.float64).reshape(-1, 2)
    w = np.asarray(warped_moving, dtype=np.float64).reshape(-1, 2)
    if initial_moving is None:
        n = min(len(f), len(w))
        initial = np.full((n, 2), np.nan)
    else:
        initial = np.asarray(initial_moving, dtype=np.float64).reshape(-1, 2)
        n = min(len(f), len(initial))
        initial = initial[:n]
        w = np.vstack([w[:n], np.full((max(0, n - len(w)), 2), np.nan)])
    f, w = f[:n], w[:n]
    diagonal = float(np.hypot(*fixed_size))
    tre_initial = np.hypot(*(initial - f).T)
    missing = ~np.isfinite(w).all(axis=1)
    tre = np.where(missing, tre_initial, np.hypot(*(np.where(missing[:, None], 0.0, w) - f).T))
    return pd.DataFrame({
        "landmark": np.arange(1, n + 1),
        "x_fixed": f[:, 0], "y_fixed": f[:, 1], "x_warped": w[:, 0], "y_warped": w[:, 1],
        "tre": tre, "rtre": tre / diagonal, "rtre_initial": tre_initial / diagonal, "missing": missing,
    })


def summarize(errors: pd.DataFrame) -> dict:
    """ANHIR's per-pair statistics. Robustness counts a landmark as improved only when its error is
    strictly below its initial error and it was not missing (so `initial` itself scores 0)."""
    rtre = errors["rtre"].to_numpy()
    improved = (errors["rtre"] < errors["rtre_initial"]) & ~errors["missing"]
    return {"rtre_median": float(np.median(rtre)), "rtre_mean": float(rtre.mean()),
            "rtre_max": float(rtre.max()), "rtre_min": float(rtre.min()),
            "rtre_std": float(rtre.std()), "robustness": float(improved.mean()),
            "n_landmarks": int(len(rtre)), "n_missing": int(errors["missing"].sum())}


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
                  missing_landmarks: str = "error", moving_landmarks: str = "") -> tuple[pd.DataFrame, dict]:
    """Errors of one pair for one method: (per-landmark frame, summary). A pair whose landmark files
    are not named in the table is unscored; one whose files are named but absent fails (InputError)
    unless missing_landmarks == "unscored". `moving_landmarks` (the raw moving file) gives the initial
    errors for robustness and for warped points that are missing or NaN."""
    empty = landmark_errors(np.zeros((0, 2)), np.zeros((0, 2)), fixed_size)
    for label, path in (("fixed", fixed_landmarks), ("moving", warped_landmarks)):
        if not path:
            return empty, {"scored": False, "failed": False, "reason": f"no {label} landmarks named in the cover table"}
        if not os.path.exists(path):
            if missing_landmarks == "unscored":
                return empty, {"scored": False, "failed": False, "reason": f"{label} landmark file missing: {path}"}
            raise InputError(path, f"{label} landmark file not found (set the dataset's "
                                   "missing_landmarks: unscored to register such pairs without scoring)")
    initial = read_landmarks(moving_landmarks or warped_landmarks)
    warped = initial if not moving_landmarks or warped_landmarks == moving_landmarks else \
        _read_warped(warped_landmarks)
    errors = landmark_errors(read_landmarks(fixed_landmarks), warped, fixed_size, initial)
    summary = {"scored": True, "reason": "", "failed": False, "failed_stage": "", **summarize(errors)}
    if summary["n_missing"]:
        summary["reason"] = (f"{summary['n_missing']} of {summary['n_landmarks']} warped landmarks missing or "
                             f"not finite in {warped_landmarks}: scored with their initial error")
    return errors, summary


def evaluate_failed_pair(fixed_landmarks: str, moving_landmarks: str, fixed_size: tuple[int, int] | None,
                         table_diagonal: float, reason: str, stage: str) -> tuple[pd.DataFrame, dict]:
    """A pair without a result because it failed at `stage`: scored as ANHIR scores a missing result
    (each landmark keeps its initial error, robustness 0) when both landmark files read and the fixed
    image's size is known (`fixed_size` from its header, else the cover table's diagonal); else unscored.
    Either way flagged `failed` with `reason`."""
    failed = {"failed": True, "failed_stage": stage, "reason": reason}
    empty = landmark_errors(np.zeros((0, 2)), np.zeros((0, 2)), (1, 1))
    if fixed_size is not None:
        size = (float(fixed_size[0]), float(fixed_size[1]))
    elif table_diagonal and np.isfinite(table_diagonal):
        size = (float(table_diagonal), 0.0)       # only the diagonal enters rTRE
    else:
        return empty, {"scored": False, **failed, "unscored_because": "the fixed image's size is unknown"}
    for label, path in (("fixed", fixed_landmarks), ("moving", moving_landmarks)):
        if not path or not os.path.exists(path):
            return empty, {"scored": False, **failed, "unscored_because": f"no {label} landmark file"}
    try:
        fixed, initial = read_landmarks(fixed_landmarks), read_landmarks(moving_landmarks)
    except InputError as exc:
        return empty, {"scored": False, **failed, "unscored_because": str(exc)}
    errors = landmark_errors(fixed, np.zeros((0, 2)), size, initial)
    return errors, {"scored": True, **failed, **summarize(errors)}


def affine_choice(timing_files: list[str]) -> dict:
    """What the pre-alignment chose for the pair (from its affine JSON among the timing files) and
    whether it was a close call, for the tables' flags; empty for `initial`."""
    import json
    for path in timing_files:
        if os.path.basename(os.path.dirname(path)) == "affine":
            data = json.loads(open(path).read())
            return {"affine_chosen": data.get("chosen", ""), "affine_close_call": bool(data.get("close_call", False)),
                    "affine_reason": data.get("reason", "")}
    return {}


def execution_seconds(timing_files: list[str]) -> float:
    """A pair's execution time: the affine step's seconds plus the register job's total (model
    training, done once per dataset, is not charged to pairs); 0 for `initial` (no files)."""
    import json
    total = 0.0
    for path in timing_files:
        try:
            data = json.loads(open(path).read())
            total += float(data["seconds_total"] if "seconds_total" in data else data["seconds"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(path, f"not a readable timing file ({type(exc).__name__}: {exc})") from None
    return total


def _read_warped(path: str) -> np.ndarray:
    """A method's warped landmarks: NaN rows and an empty (header-only) file are allowed, they are
    scored as missing points."""
    with open(path, errors="replace") as f:
        if sum(1 for line in f if line.strip()) <= 1:
            return np.zeros((0, 2))
    return read_landmarks(path, allow_nan=True)


# ANHIR's aggregate scores: name -> (per-pair column, how pairs are combined)
ANHIR_SCORES = {
    "Average-Median-rTRE": ("rtre_median", "mean"),
    "Median-Median-rTRE": ("rtre_median", "median"),
    "Average-Average-rTRE": ("rtre_mean", "mean"),
    "Average-Max-rTRE": ("rtre_max", "mean"),
    "Average-Robustness": ("robustness", "mean"),
    "Average-Execution-time [s]": ("seconds", "mean"),
}


def anhir_scores(pairs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """ANHIR's aggregate scores per method and cover-table status (plus `all`): one row each, with the
    number of scored pairs, how many of them had missing warped landmarks and how many failed (scored
    as missing results: initial error, robustness 0, no execution time)."""
    scored = pairs[pairs["scored"].astype(bool)].copy()
    for column in ("seconds", "robustness", "n_missing"):
        if column not in scored:
            scored[column] = np.nan
    rows = []
    for method in methods:
        of_method = scored[scored["method"] == method]
        groups = [("all", of_method)] + [(str(s), g) for s, g in of_method.groupby("status", sort=True)]
        for status, group in groups:
            if group.empty:
                continue
            failed = group["failed"].fillna(False).astype(bool) if "failed" in group else pd.Series(False, group.index)
            row = {"method": method, "status": status, "pairs": int(len(group)),
                   "pairs_with_missing_landmarks": int(((group["n_missing"].fillna(0) > 0) & ~failed).sum()),
                   "pairs_failed": int(failed.sum())}
            for name, (column, how) in ANHIR_SCORES.items():
                values = pd.to_numeric(group[column], errors="coerce").dropna()
                row[name] = float(getattr(values, how)()) if len(values) else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


FAILED_COLUMNS = ["pair_id", "row", "tissue", "status", "moving", "fixed", "stage", "reason", "methods",
                  "scored"]


def failed_pairs(pairs: pd.DataFrame, dataset: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per pair that failed for at least one method: where (`stage`) and why (`reason`, the
    first method's), the methods it failed for, and whether it could still be scored (its initial
    error). `pairs`: the per-pair summaries; `dataset`: the normalized pair table (moving, fixed)."""
    if "failed" not in pairs or not pairs["failed"].fillna(False).astype(bool).any():
        return pd.DataFrame(columns=FAILED_COLUMNS)
    failed = pairs[pairs["failed"].fillna(False).astype(bool)]
    rows = []
    for pair_id, group in failed.groupby("pair_id", sort=False):
        first = group.iloc[0]
        rows.append({"pair_id": pair_id, "row": first.get("row", ""), "tissue": first.get("tissue", ""),
                     "status": first.get("status", ""), "stage": first.get("failed_stage", ""),
                     "reason": first.get("reason", ""), "methods": " ".join(group["method"]),
                     "scored": bool(group["scored"].astype(bool).all())})
    frame = pd.DataFrame(rows)
    if dataset is not None:
        frame = frame.merge(dataset[["pair_id", "moving", "fixed"]], on="pair_id", how="left")
    else:
        frame["moving"], frame["fixed"] = "", ""
    return frame[FAILED_COLUMNS].sort_values("row", kind="stable").reset_index(drop=True)


def failed_markdown(failed: pd.DataFrame, total: int) -> str:
    if failed.empty:
        return ""
    lines = [f"## Failed pairs: {len(failed)} of {total}", "",
             "Scored as ANHIR scores a missing result (each landmark keeps its initial error, robustness 0) "
             "in every table above; listed in `failed_pairs.csv`.", "",
             "| pair | tissue | failed at | methods | reason |", "|---|---|---|---|---|"]
    for r in failed.itertuples(index=False):
        reason = str(r.reason).replace("|", "\\|") + ("" if r.scored else " (not scored)")
        lines.append(f"| {r.pair_id} | {r.tissue} | {r.stage} | {r.methods} | {reason} |")
    return "\n".join(lines) + "\n"


def significance(pairs: pd.DataFrame, methods: list[str], reference: str = "srnet", value: str = "rtre_median",
                 higher_is_better: bool = False) -> pd.DataFrame:
    """Paired two-sided Wilcoxon signed-rank tests of a per-pair `value` (the median rTRE; the brain track:
    mean Dice), `reference` against each other method, over the pairs scored for both. p is NaN (with the
    reason) where the test cannot run: under 2 common pairs, or every difference zero."""
    from scipy.stats import wilcoxon
    scored = pairs[pairs["scored"].astype(bool)] if "scored" in pairs else pairs
    wide = scored.pivot_table(index="pair_id", columns="method", values=value, aggfunc="first")
    rows = []
    if reference not in wide:
        return pd.DataFrame(columns=["reference", "method", "pairs", "median_reference", "median_method",
                                     "reference_better", "statistic", "p_value", "note"])
    for method in methods:
        if method == reference or method not in wide:
            continue
        both = wide[[reference, method]].dropna()
        diff = (both[reference] - both[method]).to_numpy()
        row = {"reference": reference, "method": method, "pairs": int(len(both)),
               "median_reference": float(both[reference].median()) if len(both) else np.nan,
               "median_method": float(both[method].median()) if len(both) else np.nan,
               "reference_better": int(((diff > 0) if higher_is_better else (diff < 0)).sum()), "statistic": np.nan, "p_value": np.nan, "note": ""}
        if len(both) < 2:
            row["note"] = "fewer than 2 pairs scored by both"
        elif not np.any(diff != 0):
            row["note"] = "identical on every pair"
        else:
            result = wilcoxon(both[reference], both[method], alternative="two-sided")
            row["statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
        rows.append(row)
    return pd.DataFrame(rows)


def significance_markdown(table: pd.DataFrame, what: str = "per-pair median rTRE") -> str:
    if table.empty:
        return ""
    lines = [f"## Paired Wilcoxon signed-rank test of {what}", "",
             "| reference | against | pairs | reference better on | p-value |", "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        p = f"{r.p_value:.3g}" if pd.notna(r.p_value) else f"– ({r.note})"
        lines.append(f"| {r.reference} | {r.method} | {r.pairs} | {r.reference_better} | {p} |")
    return "\n".join(lines) + "\n"


def submission_frame(pairs: pd.DataFrame, landmark_names: dict[str, str]) -> pd.DataFrame:
    """ANHIR's `registration-results.csv` for one method: the cover table's columns (target = fixed,
    source = moving), `Warped source landmarks` (paths relative to the submission folder) and
    `Execution time [minutes]`. `pairs`: that method's per-pair summaries joined with the dataset table."""
    frame = pd.DataFrame({
        "Target image": pairs["fixed"], "Source image": pairs["moving"],
        "Target landmarks": pairs["fixed_landmarks"], "Source landmarks": pairs["moving_landmarks"],
        "Image diagonal [pixels]": pairs["table_diagonal"],
        "Image size [pixels]": [f"({int(h)}, {int(w)})" if pd.notna(h) and pd.notna(w) else ""
                                for h, w in zip(pairs["table_height"], pairs["table_width"])],
        "status": pairs["status"],
        "Warped source landmarks": [landmark_names.get(p, "") for p in pairs["pair_id"]],
        "Execution time [minutes]": pd.to_numeric(pairs["seconds"], errors="coerce") / 60.0,
    }, index=pd.Index(pairs["row"].astype(int), name=""))
    return frame.sort_index()


def computer_description() -> dict:
    """What ANHIR's computer-performances.json is for: the machine the times were measured on."""
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_GiB": memory_gb, "system": platform.platform(),
            "python": platform.python_version()}


def write_submission(pairs_csv: str, dataset_csv: str, method: str, landmark_files: list[str],
                     out_dir: str) -> pd.DataFrame:
    """ANHIR submission folder for `method`: registration-results.csv, computer-performances.json and
    warped-landmarks/<pair_id>.csv (paths in the CSV are relative to the folder, so it zips as is).
    Written to a temporary sibling folder and renamed: a killed job leaves no half folder."""
    import json
    import shutil
    import tempfile
    from pathlib import Path
    pairs = pd.read_csv(pairs_csv, keep_default_na=False, na_values=[""])
    pairs = pairs[pairs["method"] == method]
    if pairs.empty:
        raise InputError(pairs_csv, f"no evaluated pairs for method {method!r}; add it to evaluate.methods")
    cover = pd.read_csv(dataset_csv, keep_default_na=False, na_values=[""])
    columns = ["pair_id", "fixed", "moving", "fixed_landmarks", "moving_landmarks", "table_diagonal",
               "table_height", "table_width"]
    pairs = pairs.merge(cover[columns], on="pair_id", how="left", validate="one_to_one")
    by_pair = {Path(f).parent.name: f for f in landmark_files}
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "warped-landmarks").mkdir()
        names = {}
        for pair_id in pairs["pair_id"]:
            source = by_pair.get(pair_id)
            if source and os.path.getsize(source) and read_landmarks_count(source):
                names[pair_id] = f"warped-landmarks/{pair_id}.csv"
                shutil.copyfile(source, tmp / names[pair_id])
        frame = submission_frame(pairs, names)
        frame.to_csv(tmp / "registration-results.csv")
        seconds = pd.to_numeric(pairs["seconds"], errors="coerce")
        performance = {**computer_description(), "method": method, "pairs": int(len(pairs)),
                       "registration time per pair [s] (mean)": float(seconds.mean()),
                       "registration time per pair [s] (median)": float(seconds.median())}
        (tmp / "computer-performances.json").write_text(json.dumps(performance, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return frame


def read_landmarks_count(path: str) -> int:
    with open(path, errors="replace") as f:
        return max(0, sum(1 for line in f if line.strip()) - 1)
