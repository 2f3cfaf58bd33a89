"""Nothing executes code from data files: a checkpoint crafted to run code when unpickled is refused
by every loader, naming the file, and its code never runs; no module loads data with pickle, eval or
an unsafe YAML loader."""

import ast
from pathlib import Path

import pytest
import torch

from srnet_core.errors import InputError
from srnet_core.registration.train import load_model
from srnet_core.segmentation.fgsn import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("loader", [load_model, load_checkpoint], ids=["registration model", "FGSN model"])
def test_code_carrying_checkpoint_is_refused_without_running(tmp_path, loader):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "srnet-regnet-1", "weights": _Payload(marker)}, evil)
    with pytest.raises(InputError) as err:
        loader(evil, "cpu")
    assert str(evil) in str(err.value)
    assert not marker.exists(), "unpickling ran code from the checkpoint"


def test_no_unsafe_deserialisation_in_the_code():
    problems = []
    for path in sorted(list((REPO / "srnet_core").rglob("*.py")) + list((REPO / "workflow_scripts").glob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "marshal", "shelve") for n in names):
                    problems.append(f"{path}: imports {names}")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("eval", "exec") and not isinstance(func, ast.Attribute):
                    problems.append(f"{path}:{node.lineno}: {name}()")
                if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    if not safe:
                        problems.append(f"{path}:{node.lineno}: torch.load without weights_only=True")
                if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "yaml":
                    loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
                    loader_name = getattr(loader, "attr", None) or getattr(loader, "id", "")
                    if not loader_name.endswith("SafeLoader"):      # SafeLoader or libyaml's CSafeLoader
                        problems.append(f"{path}:{node.lineno}: yaml.load without a safe loader (use safe_load)")
    assert not problems, "\n".join(problems)
