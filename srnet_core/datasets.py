"""ANHIR/BIRL cover tables -> one normalized table of pairs.

ANHIR's words are mapped to srnet's once, here: Source -> moving, Target -> fixed. Paths in a cover
table are relative to the dataset root; the tissue is the first folder of the path with ANHIR's
sample number dropped (`COAD_01/...` -> `COAD`, `lung-lesion_2/...` -> `lung-lesion`, BIRL's
`rat-kidney_/...` -> `rat-kidney`). Pair and image ids are derived from the paths, so they stay the
same when the table is reordered or extended.

A problem with one row (a path escaping the root, an empty image path) does not fail the table: it is
recorded in the row's `error` column, and that pair is scored as failed while other pairs go on. A
row that repeats an earlier row's moving and fixed image is dropped with a warning naming the table
and both rows. A problem with the table itself (unreadable, a required column missing) raises
InputError.

`screen` then opens every image's header and reads every landmark file once, so that an unreadable,
missing or unsupported image and a bad landmark file are known before anything is registered or
trained (each reported once, in the pair's `error`), and warns once per landmark file whose points
lie outside their image.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path, PurePosixPath

import pandas as pd

from .errors import InputError

log = logging.getLogger(__name__)

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
            # a landmark path escaping the root is never opened (the row's error says why)
            "fixed_landmarks_path": os.path.join(root, fixed_lm) if fixed_lm and _inside_root(root, fixed_lm) else "",
            "moving_landmarks_path": os.path.join(root, moving_lm) if moving_lm and _inside_root(root, moving_lm)
            else "",
            "table_height": height, "table_width": width, "table_diagonal": diagonal,
            "error": "; ".join(errors),
        })
    pairs = pd.DataFrame.from_records(records, columns=PAIR_COLUMNS)
    dupes = pairs["pair_id"].duplicated(keep="first") & (pairs["moving"] != "") & (pairs["fixed"] != "")
    first_row = pairs.drop_duplicates("pair_id").set_index("pair_id")["row"]
    for rec in pairs[dupes].itertuples():
        log.warning("%s: row %d repeats row %d (moving %s, fixed %s); dropped", table, rec.row,
                    first_row[rec.pair_id], rec.moving, rec.fixed)
    return pairs[~dupes].reset_index(drop=True)


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


IMAGE_COLUMNS = ["image_id", "rel", "path", "error", "width", "height", "reader"]


def screen(pairs: pd.DataFrame, images: pd.DataFrame, missing_landmarks: str = "error"
           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cheap checks of every image and landmark file before anything is prepared: each image's header
    is opened (OpenSlide or libvips: size, format; no pixels decoded) and each landmark file is read
    once. Returns copies of (pairs, images): images gain `width`, `height`, `reader` (full-resolution
    size from the header, empty when unreadable) and an `error` when unreadable; a pair's `error`
    collects the problems of its images and landmark files, so that pair is scored as failed and never
    registered or trained on. Each bad file is logged once (ERROR, `<file>: <problem>`), and each
    landmark file with points outside its image once (WARNING). A named landmark file that is absent
    is an error under missing_landmarks "error" and leaves the pair unscored under "unscored"."""
    from .landmarks import read_landmarks
    from .slides import slide_info

    pairs, images = pairs.copy(), images.copy()
    for column in ("width", "height", "reader"):
        images[column] = ""
    users: dict[str, list[str]] = {}
    for rec in pairs.itertuples():
        for iid in (rec.fixed_id, rec.moving_id):
            if iid:
                users.setdefault(iid, []).append(rec.pair_id)
    image_errors: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, rec in images.iterrows():
        if rec["error"]:
            image_errors[rec["image_id"]] = f"{rec['path']}: {rec['error']}"
            continue
        try:
            info = slide_info(rec["path"])
        except InputError as exc:
            images.at[i, "error"] = exc.problem
            image_errors[rec["image_id"]] = str(exc)
            log.error("bad input: %s (%s)", exc, _fails(users.get(rec["image_id"], [])))
            continue
        images.at[i, "width"], images.at[i, "height"] = str(info.width), str(info.height)
        images.at[i, "reader"] = info.reader
        sizes[rec["image_id"]] = (info.width, info.height)

    landmark_users: dict[str, list[str]] = {}
    landmark_image: dict[str, tuple[str, str]] = {}
    for rec in pairs.itertuples():
        for side in ("fixed", "moving"):
            path = getattr(rec, f"{side}_landmarks_path")
            if path and not rec.error:      # a path escaping the root is not opened
                landmark_users.setdefault(path, []).append(rec.pair_id)
                landmark_image.setdefault(path, (getattr(rec, f"{side}_id"), getattr(rec, side)))
    landmark_errors: dict[str, str] = {}
    for path, used_by in landmark_users.items():
        if not os.path.exists(path):
            if missing_landmarks == "error":
                landmark_errors[path] = (f"{path}: landmark file not found (set the dataset's missing_landmarks: "
                                         "unscored to register such pairs without scoring)")
                log.error("bad input: %s (%s)", landmark_errors[path], _fails(used_by))
            continue
        try:
            points = read_landmarks(path)
        except InputError as exc:
            landmark_errors[path] = str(exc)
            log.error("bad input: %s (%s)", exc, _fails(used_by))
            continue
        image, rel = landmark_image[path]
        if image in sizes:
            _warn_outside(path, points, sizes[image], rel)

    for i, rec in pairs.iterrows():
        problems = [rec["error"]] if rec["error"] else []
        for iid in (rec["fixed_id"], rec["moving_id"]):
            if iid in image_errors and not rec["error"]:
                problems.append(image_errors[iid])
        for path in (rec["fixed_landmarks_path"], rec["moving_landmarks_path"]):
            if path in landmark_errors:
                problems.append(landmark_errors[path])
        if rec["error"]:
            log.error("bad input: pair %s (table row %d): %s", rec["pair_id"], rec["row"], rec["error"])
        pairs.at[i, "error"] = "; ".join(dict.fromkeys(problems))
    return pairs, images[IMAGE_COLUMNS]


def _fails(pair_ids: list[str]) -> str:
    if not pair_ids:
        return "no pair uses it"
    shown = ", ".join(pair_ids[:3]) + (f" and {len(pair_ids) - 3} more" if len(pair_ids) > 3 else "")
    return f"fails pair{'s' if len(pair_ids) > 1 else ''} {shown}"


def _warn_outside(path: str, points, size: tuple[int, int], image_rel: str) -> None:
    """Landmarks at pixel centres: the image spans [-0.5, w - 0.5] x [-0.5, h - 0.5]."""
    import numpy as np
    w, h = size
    x, y = points[:, 0], points[:, 1]
    outside = np.flatnonzero((x < -0.5) | (y < -0.5) | (x > w - 0.5) | (y > h - 0.5))
    if len(outside):
        first = int(outside[0])
        log.warning("%s: %d of %d landmarks lie outside their %dx%d px image %s (first: landmark %d at "
                    "(%.1f, %.1f)); they are scored as they are", path, len(outside), len(points), w, h,
                    image_rel, first + 1, x[first], y[first])
