"""Writing failure records (see outcome.py): a stage's outputs as the recorded outcome of a pair
that failed, instead of a failed job."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import textwrap
from pathlib import Path
from typing import Iterable

from .atomic import atomic_path, write_text_atomic
from .errors import InputError
from .h5io import FORMAT_FAILED
from .outcome import failure_of

log = logging.getLogger(__name__)


def write_failure(outputs: Iterable[str | os.PathLike], reason: str, stage: str, **attrs) -> None:
    """Write every output path as a failure record (by suffix; see the module docstring)."""
    for path in outputs:
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".h5":
            import h5py
            with atomic_path(path) as tmp:
                with h5py.File(tmp, "w") as f:
                    f.attrs["format"] = FORMAT_FAILED
                    f.attrs["reason"] = reason
                    f.attrs["stage"] = stage
                    for key, value in attrs.items():
                        if value is not None:
                            f.attrs[key] = value
                    f.attrs["complete"] = 1
        elif suffix == ".json":
            write_text_atomic(path, json.dumps({"failed": reason, "stage": stage,
                                                    **{k: v for k, v in attrs.items() if v is not None}},
                                                   indent=1, default=str))
        elif suffix == ".csv":
            write_text_atomic(path, ",X,Y\n")
        elif suffix in (".png", ".tif", ".tiff"):
            _write_card(path, f"{stage} failed: {reason}")
        else:
            write_text_atomic(path, f"{stage} failed: {reason}\n")


def _write_card(path: Path, text: str) -> None:
    import pyvips
    wrapped = "\n".join(textwrap.wrap(text, 90)) or "failed"
    try:
        mask = pyvips.Image.text(wrapped.replace("&", "&amp;").replace("<", "&lt;"), dpi=90)
        card = (255 - mask).cast("uchar").embed(10, 10, mask.width + 20, mask.height + 20, extend="white")
    except pyvips.Error:                      # a libvips without text rendering: a plain grey card
        card = pyvips.Image.black(200, 40) + 200
    card = card.cast("uchar").bandjoin([card, card]).copy(interpretation="srgb")
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".png":
            card.pngsave(os.fspath(tmp))
        else:
            card.tiffsave(os.fspath(tmp))


def pass_on(inputs: Iterable[str | os.PathLike | None], outputs: Iterable[str | os.PathLike],
            stage: str) -> bool:
    """When an input is a failure record, write the outputs as records of the same failure and return
    True (the stage then has nothing to do); else False."""
    found = failure_of(*inputs)
    if found is None:
        return False
    log.info("%s: not run, this pair failed at %s", stage, found.get("stage", "an earlier stage"))
    extra = {k: v for k, v in found.items() if k not in ("reason", "stage")}
    write_failure(outputs, str(found["reason"]), str(found.get("stage", stage)), **extra)
    return True


@contextlib.contextmanager
def failure_recorded(outputs: Iterable[str | os.PathLike], stage: str, attrs=None):
    """Run a stage whose bad input is the pair's own: an InputError is logged as one line and becomes
    failure records at `outputs` (with `attrs()`, e.g. what is known of the image) instead of a failed
    job. Any other exception still fails the job."""
    try:
        yield
    except InputError as exc:
        log.error("bad input: %s (recorded as this %s's outcome; the pair is scored as failed)", exc,
                  "image" if stage == "prepare" else "pair")
        write_failure(outputs, str(exc), stage, **(attrs() if attrs else {}))
