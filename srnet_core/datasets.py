"""ANHIR/BIRL cover tables -> one normalized table of pairs.

ANHIR's words are mapped to srnet's once, here: Source -> moving, Target -> fixed. Paths in a cover
table are relative to the dataset root; the tissue is the first folder of the path with ANHIR's
sample number dropped (`COAD_01/...` -> `COAD`, `lung-lesion_2/...` -> `lung-lesion`, BIRL's
`rat-kidney_/...` -> `rat-kidney`). Pair and image ids are derived from the paths, so they stay the
same when the table is reordered or extended.

A problem with one row (a path escaping the root, an empty image path) does not fail the table: it is
recorded in the row's `error` column, and that pair's jobs fail with it while other pairs go on.
A problem with the table itself (unreadable, a required column missing) raises InputError.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from .errors import InputError

MOVING_IMAGE, MOVING_LANDMARKS = "Source image", "Source landmarks"
FIXED_IMAGE, FIXED_LANDMARKS = "Target image", "Target landmarks"
REQUIRED_COLUMNS = (MOVING_IMAGE, MOVING_LANDMARKS, FIXED_IMAGE, FIXED_LANDMARKS)
SIZE_COLUMN, DIAGONAL_COLUMN, STATUS_COLUMN = "Image size [pixels]", "Image diagonal [pixels]", "status"

PAIR_COLUMNS = [
    "pair_id", "row", "tissue", "sample", "status",
    "fixed", "moving", "fixed_landmarks", "moving_landmarks",
    "fixed_id", "moving_id", "fixed_path", "moving_path", "fixed_landmarks_path",
    "moving_landmarks_path", "table_height", "table_width", "table_diagonal", "error",
]


def tissue_of(rel_path: str) -> str:
    """Tissue group: the first folder, minus a trailing `_<number>` sample suffix."""
    first = PurePosixPath(rel_path).parts[0] if rel_path else ""
    return re.sub(r"_\d*$", "", first) or first


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def image_id(rel_path: str) -> str:
    """File-name-safe id of an image: its relative path, folders joined by `--`, suffix dropped."""
    p = PurePosixPath(rel_path)
    return "--".join(_slug(part) for part in (*p.parent.parts, p.stem))


def pair_id(moving_rel: str, fixed_rel: str) -> str:
    """Readable and stable: `<sample>_<moving>-to-<fixed>_<hash of both paths>`."""
    sample = PurePosixPath(moving_rel).parts[0] if "/" in moving_rel else "pair"
    digest = hashlib.sha1(f"{moving_rel}|{fixed_rel}".encode()).hexdigest()[:6]
    return (f"{_slug(sample)}_{_slug(PurePosixPath(moving_rel).stem)}"
            f"-to-{_slug(PurePosixPath(fixed_rel).stem)}_{digest}")


def _parse_size(value) -> tuple[float, float]:
    """ANHIR writes `(height, width)` of the target image; missing or odd values give NaNs."""
    nums = re.findall(r"[-+]?\d+(?:\.\d+)?", str(value)) if isinstance(value, str) else []
    return (float(nums[0]), float(nums[1])) if len(nums) == 2 else (float("nan"), float("nan"))


def _inside_root(root: str, rel: str) -> bool:
    """Lexical check (symlinks into other disks are a normal way to lay out data, so no resolve())."""
    full = os.path.normpath(os.path.join(root, rel))
    root_n = os.path.normpath(root)
    return os.path.commonpath([root_n, full]) == root_n


def read_cover_table(table: str | os.PathLike, root: str | os.PathLike,
                     strip_prefix: str = "") -> pd.DataFrame:
    """Parse an ANHIR/BIRL cover table into the normalized pair table (columns PAIR_COLUMNS)."""
    table = Path(table)
    root = os.fspath(root)
    if not table.is_file():
        raise InputError(table, "cover table not found")
    try:
        raw = pd.read_csv(table, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(table, f"not a readable CSV cover table ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise InputError(table, f"cover table lacks required column(s) {missing}; "
                                f"an ANHIR/BIRL table has {list(REQUIRED_COLUMNS)}")
    if raw.empty:
        raise InputError(table, "cover table has no rows")

    def clean(value: str) -> str:
        value = value.strip()
        if strip_prefix and value.startswith(strip_prefix):
            value = value[len(strip_prefix):]
        return value

    index_col = raw.columns[0] if raw.columns[0] in ("", "Unnamed: 0") else None
    records = []
    for i, rec in raw.iterrows():
        moving, fixed = clean(rec[MOVING_IMAGE]), clean(rec[FIXED_IMAGE])
        moving_lm, fixed_lm = clean(rec[MOVING_LANDMARKS]), clean(rec[FIXED_LANDMARKS])
        errors = []
        for label, rel in (("moving image", moving), ("fixed image", fixed)):
            if not rel:
                errors.append(f"empty {label} path in table row {i}")
        for label, rel in (("moving image", moving), ("fixed image", fixed),
                           ("moving landmarks", moving_lm), ("fixed landmarks", fixed_lm)):
            if rel and not _inside_root(root, rel):
                errors.append(f"{label} path {rel!r} escapes the dataset root {root}")
        height, width = _parse_size(rec.get(SIZE_COLUMN, ""))
        try:
            diagonal = float(rec.get(DIAGONAL_COLUMN, "") or "nan")
        except ValueError:
            diagonal = float("nan")
        row_number = rec[index_col] if index_col is not None and rec[index_col] != "" else i
        records.append({
            "pair_id": pair_id(moving, fixed) if moving and fixed else f"row{i}",
            "row": int(row_number),
            "tissue": tissue_of(moving or fixed),
            "sample": PurePosixPath(moving or fixed).parts[0] if (moving or fixed) else "",
            "status": (rec.get(STATUS_COLUMN, "") or "training").strip(),
            "fixed": fixed, "moving": moving,
            "fixed_landmarks": fixed_lm, "moving_landmarks": moving_lm,
            "fixed_id": image_id(fixed) if fixed else "", "moving_id": image_id(moving) if moving else "",
            "fixed_path": os.path.join(root, fixed) if fixed else "",
            "moving_path": os.path.join(root, moving) if moving else "",
            "fixed_landmarks_path": os.path.join(root, fixed_lm) if fixed_lm else "",
            "moving_landmarks_path": os.path.join(root, moving_lm) if moving_lm else "",
            "table_height": height, "table_width": width, "table_diagonal": diagonal,
            "error": "; ".join(errors),
        })
    pairs = pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
    dupes = pairs["pair_id"].duplicated(keep="first")
    pairs.loc[dupes, "error"] = "duplicate of an earlier row (same moving and fixed image)"
    pairs.loc[dupes, "pair_id"] = [f"{p}_row{r}" for p, r in zip(pairs.loc[dupes, "pair_id"],
                                                                 pairs.loc[dupes, "row"])]
    return pairs


def select_tissues(pairs: pd.DataFrame, tissues: list[str] | None, table: str | os.PathLike) -> pd.DataFrame:
    """The pairs of the named tissues only (None: all). A name the table does not have is an error
    that lists the ones it has: a typo must not silently run an empty or partial dataset."""
    if tissues is None:
        return pairs
    present = sorted(set(pairs["tissue"]))
    unknown = [t for t in tissues if t not in present]
    if unknown:
        raise InputError(table, f"no pairs of tissue(s) {unknown}; the table's tissues are {present}")
    return pairs[pairs["tissue"].isin(tissues)].reset_index(drop=True)


def images_of(pairs: pd.DataFrame, root: str | os.PathLike) -> pd.DataFrame:
    """One row per distinct image (image_id, rel, path, error): what the prepare stage fans out over."""
    root = os.fspath(root)
    rows: dict[str, dict] = {}
    for rec in pairs.itertuples():
        for side in ("fixed", "moving"):
            iid, rel = getattr(rec, f"{side}_id"), getattr(rec, side)
            if not iid:
                continue
            if iid in rows:
                if rows[iid]["rel"] != rel:
                    raise InputError(rel, f"image id {iid!r} is shared with {rows[iid]['rel']!r}; rename one")
                continue
            error = "" if _inside_root(root, rel) else f"path {rel!r} escapes the dataset root {root}"
            rows[iid] = {"image_id": iid, "rel": rel, "path": getattr(rec, f"{side}_path"), "error": error}
    return pd.DataFrame(list(rows.values()), columns=["image_id", "rel", "path", "error"])


def read_pairs(normalized_csv: str | os.PathLike) -> pd.DataFrame:
    """Read back the normalized table written by the dataset stage."""
    frame = pd.read_csv(normalized_csv, dtype=str, keep_default_na=False)
    frame["row"] = frame["row"].astype(int)
    for col in ("table_height", "table_width", "table_diagonal"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame
