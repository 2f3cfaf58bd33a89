"""A pair's failure as a recorded outcome instead of a failed job.

A bad input found by a per-image or per-pair stage after the dataset stage (a slide whose pixel data
is truncated, a blank slide, no tissue to pre-align) must not withhold the dataset's tables: under
Snakemake a failed job blocks every job downstream of it, the tables included. So such a stage writes
*failure records* at its declared output paths instead of failing:

- `.h5`: an HDF5 file of format `srnet-failed-1` holding only attributes (`reason`, `stage`, and what
  else is known, e.g. the image's full-resolution size from its header); every h5io reader refuses it
  with its reason, so nothing can mistake it for a result;
- `.json`: `{"failed": reason, "stage": ...}`;
- `.csv` (warped landmarks): the header alone, i.e. no warped points, which is how ANHIR scores a
  missing result (each point keeps its initial error and counts as not improved);
- `.png`, `.tif`: a small card stating the reason.

The stages after it pass the record on (`failure_of` finds it among their inputs; record.py's
`pass_on` writes their own outputs as records), the stages that learn from many images or pairs leave
the failed ones out (`usable`), evaluation scores the pair as missing, and the tables list it in
`failed_pairs.csv`; the check rule at the end then exits non-zero naming the failed pairs. A record is
replaced as soon as its input changes (a repaired slide has a newer modification time).

This module reads records (no image libraries: evaluation's env has none); record.py writes them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .errors import InputError
from .h5io import FORMAT_FAILED

log = logging.getLogger(__name__)


def read_failure(path: str | os.PathLike) -> dict | None:
    """The record's fields (reason, stage, ...) when `path` is a failure record, else None."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".h5":
            import h5py
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT_FAILED:
                    return None
                return {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()
                        if k not in ("format", "complete")}
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "failed" in data:
                return {"reason": data["failed"], **{k: v for k, v in data.items() if k != "failed"}}
    except (OSError, ValueError):
        return None
    return None


def failure_of(*paths: str | os.PathLike | None) -> dict | None:
    """The first failure record among `paths` (None and empty entries are skipped; a list, e.g. a
    Snakemake named input of several files or none, counts as its files), or None."""
    for path in paths:
        if isinstance(path, (list, tuple)):
            found = failure_of(*path)
            if found is not None:
                return found
        elif path and os.path.exists(path):
            found = read_failure(path)
            if found is not None:
                return found
    return None


def usable(items: list, stage: str, files=lambda item: [item], name=str) -> list:
    """The items none of whose files is a failure record; each one left out is logged with its
    reason. For the stages that learn from many images or pairs (pretraining, codebook, training)."""
    kept = []
    for item in items:
        found = failure_of(*files(item))
        if found is None:
            kept.append(item)
        else:
            log.warning("%s: leaving out %s (failed at %s)", stage, name(item), found.get("stage", "?"))
    if items and not kept:
        raise InputError(None, f"{stage}: every input failed an earlier stage; nothing to learn from")
    return kept
