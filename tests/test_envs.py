"""Every rule runs in a conda env that holds what its code imports (directly or through srnet_core),
with versions pinned. Checked statically: CI has no conda, so the envs are never built here."""

import ast
import re
import sys
from pathlib import Path

import yaml

from srnet_core.codehash import source_closure

REPO = Path(__file__).resolve().parents[1]

# import name -> conda-forge package name
CONDA_NAME = {"skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "pyyaml", "torch": "pytorch",
              "openslide": "openslide-python", "matplotlib": "matplotlib-base", "PIL": "pillow",
              "ants": "antspyx", "itk": "itk-elastix"}
PROVIDED = {"snakemake", "srnet_core"}          # the running snakemake injects itself; srnet_core is the repo


def _rules():
    """(rule name, conda env path, script path) for every rule of the workflow."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^(?=rule |checkpoint )", smk.read_text())[1:]:
            name = re.match(r"(?:rule|checkpoint) (\w+):", block).group(1)
            conda = re.search(r'conda:\s*\n\s*"\.\./(envs/[\w.]+)"', block)
            script = re.search(r'script:\s*\n\s*"\.\./(workflow_scripts/[\w.]+)"', block)
            found.append((name, conda and conda.group(1), script and script.group(1)))
    return found


def _third_party(paths):
    modules = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in PROVIDED}


def _env_packages(path):
    env = yaml.safe_load((REPO / path).read_text())
    names, unpinned = set(), []
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            name = re.split(r"[=<>]", item)[0].strip()
            names.add(name)
            if name not in ("pip",) and not re.search(r"==?\d", item):
                unpinned.append(item)
    return names, unpinned


def test_every_rule_has_an_env_holding_what_its_code_imports():
    rules = _rules()
    assert len(rules) >= 15, rules
    problems = []
    for name, conda, script in rules:
        if conda is None:
            problems.append(f"rule {name}: no conda: env")
            continue
        names, _ = _env_packages(conda)
        if script is None:
            continue
        for module in sorted(_third_party(source_closure(REPO, [script]))):
            package = CONDA_NAME.get(module, module)
            if package not in names:
                problems.append(f"rule {name} ({script}) imports {module}: {conda} lacks {package}")
    assert not problems, "\n".join(problems)


def test_envs_pin_versions_and_torch_says_how_to_get_cuda():
    for env in sorted((REPO / "envs").glob("*.yaml")):
        _, unpinned = _env_packages(env.relative_to(REPO))
        assert not unpinned, f"{env.name}: unpinned {unpinned}"
    torch_env = (REPO / "envs/torch.yaml").read_text()
    assert "CUDA" in torch_env or "cuda" in torch_env
