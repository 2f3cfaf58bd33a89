"""One exception type for bad input, so every stage reports `<file>: <problem>` the same way."""

from __future__ import annotations

import os


class InputError(ValueError):
    """A user-supplied file (image, landmarks, table, download) cannot be used.

    The message always starts with the offending path, then says what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if self.path is None else f"{self.path}: {problem}")
