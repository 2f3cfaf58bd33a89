"""Hash of the library code a stage runs, for Snakemake's `params:` (Snakemake tracks a rule's own
script, not the modules that script imports). A stage names its entry modules; the hash covers them
and every srnet_core module they import, directly or through others, found by reading the import
statements (ast), so a change anywhere a stage's code reaches re-runs that stage, and a change
elsewhere does not."""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "srnet_core"


def _module_file(root: Path, dotted: str) -> Path | None:
    """srnet_core.a.b -> root/srnet_core/a/b.py (or its package __init__.py); None outside the package."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(root: Path, path: Path) -> set[Path]:
    stat = path.stat()
    return _imports_of_version(root, path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _imports_of_version(root: Path, path: Path, mtime_ns: int, size: int) -> frozenset[Path]:
    """Parsed once per file version: every rule's params hash its script's closure at each Snakemake
    start (twice per cluster job), and the scripts share most modules."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]   # `from . import x`: x may be a module
        for name in names:
            target = _module_file(root, name)
            if target is not None:
                found.add(target)
                parent = name.rsplit(".", 1)[0]
                while "." in parent:                                      # packages' __init__ run too
                    init = _module_file(root, parent)
                    if init is not None:
                        found.add(init)
                    parent = parent.rsplit(".", 1)[0]
    return frozenset(found)


def source_closure(root: str | Path, modules: list[str] | tuple[str, ...]) -> list[Path]:
    """The files of `modules` ("registration/affine" style, relative to srnet_core, or a path ending
    in .py relative to `root`, such as a workflow script) and of every srnet_core module they import
    transitively, sorted."""
    root = Path(root)
    pending = []
    for module in modules:
        if module.endswith(".py"):
            pending.append(root / module)
            continue
        path = _module_file(root, PACKAGE + "." + module.replace("/", "."))
        if path is None:
            raise FileNotFoundError(f"{root / PACKAGE / module}.py: no such srnet_core module")
        pending.append(path)
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        pending.extend(_imports(root, path) - seen)
    return sorted(seen)


def source_hash(root: str | Path, modules: list[str] | tuple[str, ...]) -> str:
    root = Path(root)
    digest = hashlib.sha256()
    for path in source_closure(root, modules):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
