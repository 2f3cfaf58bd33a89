"""Validate the workflow config against config.schema.yaml, filling in every default."""

from __future__ import annotations

import copy
import os
from importlib import resources

import yaml
from jsonschema import Draft202012Validator, validators

from .names import BASELINES, HISTOLOGY_BASELINES

SCHEMA_FILE = "config.schema.yaml"
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ConfigError(ValueError):
    pass


def load_schema() -> dict:
    # libyaml's safe loader when present: the schema is read at every Snakemake start (twice per
    # cluster job), and the pure-Python loader takes ~0.2 s of it
    return yaml.load(resources.files("srnet_core").joinpath(SCHEMA_FILE).read_text(), Loader=_SafeLoader)


def _with_defaults(cls):
    check_properties = cls.VALIDATORS["properties"]

    def properties(validator, props, instance, schema):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, props, instance, schema)

    return validators.extend(cls, {"properties": properties})


_Validator = _with_defaults(Draft202012Validator)


def validate_config(config: dict) -> dict:
    """Fill defaults in place and check; raises ConfigError with every problem listed."""
    schema = load_schema()
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    problems = [f"config.{'.'.join(str(p) for p in e.path) or '(top)'}: {e.message}" for e in errors]
    for name, ds in (config.get("datasets") or {}).items():
        if not isinstance(ds, dict):
            continue
        if ds.get("source") == "local" and not ds.get("root"):
            problems.append(f"config.datasets.{name}: a local dataset needs `root`")
        if ds.get("source") == "download" and not ds.get("files"):
            problems.append(f"config.datasets.{name}: a download dataset needs `files`")
        if ds.get("source") in ("demo", "download"):
            generated = os.path.join("data", name)
            if ds.get("root") not in (None, generated):
                problems.append(f"config.datasets.{name}: `root` is only for local datasets; "
                                f"{ds['source']} datasets live in {generated}")
            ds["root"] = generated
    learned = (config.get("registration") or {}).get("methods") or {}
    segmentation = (config.get("segmentation") or {}).get("enabled", True)
    for name in (config.get("evaluate") or {}).get("methods") or []:
        if name in ("initial", "affine") + HISTOLOGY_BASELINES:
            if name in learned:
                problems.append(f"config.registration.methods.{name}: {name!r} is a built-in method's name; "
                                "rename the learned method")
            continue
        if name not in learned:
            problems.append(f"config.evaluate.methods: {name!r} is neither initial, affine, a baseline "
                            f"({', '.join(HISTOLOGY_BASELINES)}) nor a method under registration.methods "
                            f"({', '.join(sorted(learned)) or 'none'})")
        elif not segmentation and (learned[name].get("map_inputs", True) or learned[name].get("lambda_seg", 1.05)):
            problems.append(f"config.registration.methods.{name}: uses segmentation maps, but "
                            "segmentation.enabled is false (set lambda_seg: 0 and map_inputs: false, or enable it)")
    evaluate = config.get("evaluate") or {}
    evaluated = evaluate.get("methods") or []
    if evaluate.get("submission") is None:
        reference = evaluate.get("reference", "srnet")
        evaluate["submission"] = [reference] if reference in evaluated and reference != "initial" else []
    for name in evaluate.get("submission") or []:
        if name not in evaluated or name == "initial":
            problems.append(f"config.evaluate.submission: {name!r} is not an evaluated registration method "
                            f"({', '.join(m for m in evaluated if m != 'initial') or 'none'})")
    for name in config.get("run", []):
        if name not in (config.get("datasets") or {}):
            problems.append(f"config.run: dataset {name!r} is not defined under `datasets`")
    problems += _brain_problems(config)
    if problems:
        raise ConfigError("invalid srnet configuration:\n  " + "\n  ".join(problems))
    return config


def _brain_problems(config: dict) -> list[str]:
    brain = config.get("brain") or {}
    problems = []
    datasets = brain.get("datasets") or {}
    for name in brain.get("run") or []:
        if name not in datasets:
            problems.append(f"config.brain.run: brain dataset {name!r} is not defined under brain.datasets")
    for name, ds in datasets.items():
        if isinstance(ds, dict) and not ds.get("volumes") and not ds.get("subjects"):
            problems.append(f"config.brain.datasets.{name}: needs `volumes` or `subjects`")
        if name in (config.get("datasets") or {}):
            problems.append(f"config.brain.datasets.{name}: the name is also a histology dataset's; results "
                            "would share results/{name}/")
    methods = brain.get("methods") or {}
    for name, m in methods.items():
        maps, lambda_seg, inputs = m.get("maps", "self"), m.get("lambda_seg", 1.05), m.get("map_inputs", True)
        if maps == "none" and (lambda_seg or inputs):
            problems.append(f"config.brain.methods.{name}: maps: none needs lambda_seg: 0 and map_inputs: false")
        if maps == "manual" and inputs:
            problems.append(f"config.brain.methods.{name}: manual labels train the loss only (the moving "
                            "labels are unknown when registering); set map_inputs: false")
        spacing = m.get("grid_spacing", 8)
        if m.get("backbone") == "dirnet" and spacing & (spacing - 1):
            problems.append(f"config.brain.methods.{name}: grid_spacing must be a power of 2, got {spacing}")
    evaluate = brain.get("evaluate") or {}
    for name in ("before",) + BASELINES:
        if name in methods:
            problems.append(f"config.brain.methods.{name}: {name!r} is a built-in column's name; rename the method")
    for name in evaluate.get("methods") or []:
        if name != "before" and name not in methods and name not in BASELINES:
            problems.append(f"config.brain.evaluate.methods: {name!r} is neither `before`, a baseline "
                            f"({', '.join(BASELINES)}) nor a method under brain.methods "
                            f"({', '.join(sorted(methods)) or 'none'})")
    return problems
