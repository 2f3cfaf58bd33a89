"""The code hash a rule passes through params: covers what the stage runs, and only that."""

import shutil
from pathlib import Path

from srnet_core.codehash import source_closure, source_hash

REPO = Path(__file__).resolve().parents[1]


def _copy(tmp_path):
    shutil.copytree(REPO / "srnet_core", tmp_path / "srnet_core", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "workflow_scripts", tmp_path / "workflow_scripts")
    return tmp_path


def _names(paths, root):
    return {str(p.relative_to(root)) for p in paths}


def test_closure_follows_imports_through_other_modules():
    register = _names(source_closure(REPO, ["workflow_scripts/register.py"]), REPO)
    # register.py -> registration.stages -> (lazily) infer -> transform -> coords
    for module in ("registration/stages.py", "registration/infer.py", "registration/transform.py",
                   "coords.py", "registration/network.py", "h5io.py", "logs.py"):
        assert f"srnet_core/{module}" in register, module
    tables = _names(source_closure(REPO, ["workflow_scripts/tables.py"]), REPO)
    assert "srnet_core/figures.py" in tables and "srnet_core/evaluation.py" in tables
    assert not any("registration" in t or "segmentation" in t for t in tables)


def test_hash_changes_with_used_code_only(tmp_path):
    root = _copy(tmp_path)
    before = {s: source_hash(root, [f"workflow_scripts/{s}"]) for s in ("register.py", "tables.py", "prepare.py")}
    with open(root / "srnet_core/coords.py", "a") as f:       # reached by register only, through two imports
        f.write("\n# a changed line\n")
    after = {s: source_hash(root, [f"workflow_scripts/{s}"]) for s in before}
    assert after["register.py"] != before["register.py"]
    assert after["tables.py"] == before["tables.py"] and after["prepare.py"] == before["prepare.py"]
    with open(root / "srnet_core/figures.py", "a") as f:
        f.write("\n# another\n")
    assert source_hash(root, ["workflow_scripts/tables.py"]) != before["tables.py"]
