"""Logging for workflow jobs: everything to the rule's log file and stderr, and a failure logged as
one clear line (`<file>: <problem>`) before it propagates to Snakemake."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from .errors import InputError


@contextlib.contextmanager
def logged(log_file: str | os.PathLike | None, level: int = logging.INFO):
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.fspath(log_file)) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pyvips").setLevel(logging.WARNING)   # libvips chats at INFO per thread pool
    log = logging.getLogger("srnet")
    try:
        yield log
    except InputError as exc:
        log.error("bad input: %s", exc)
        raise
    except Exception:
        log.exception("job failed")
        raise
