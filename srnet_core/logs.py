"""Logging for workflow jobs: everything to the rule's log file and stderr. Bad input (InputError) is
logged as one clear line (`<file>: <problem>`) and ends the job with exit status 1, its traceback kept
in the log file only; any other failure is logged with its traceback and propagates."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback

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
        # one line on the console; the traceback only in the job's log file; exit status 1 without
        # Python printing the traceback again
        log.error("bad input: %s", exc)
        for handler in handlers[1:]:
            handler.stream.write(traceback.format_exc())
            handler.flush()
        raise SystemExit(1) from None
    except Exception:
        log.exception("job failed")
        raise
