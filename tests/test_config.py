from pathlib import Path

import pytest
import yaml

from srnet_core.config import ConfigError, load_schema, validate_config

REPO = Path(__file__).resolve().parents[1]


def _walk(schema, path="config"):
    """Yield (path, subschema) for every declared key."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _walk(sub, f"{path}.{name}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _walk(extra, f"{path}.<name>")
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, f"{path}[]")


def test_every_key_has_description_and_default():
    for path, sub in _walk(load_schema()):
        assert sub.get("description"), f"{path} lacks a description"
        required = path.endswith(("files[].path", "files[].sha256", "volumes[].image", "subjects.root",
                                     "subjects.image"))
        assert required or "default" in sub, f"{path} lacks a default"


def test_shipped_config_is_valid_and_defaults_fill():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(config)
    assert config["run"] == ["demo"]
    assert config["datasets"]["demo"]["root"] == "data/demo"
    assert config["datasets"]["birl_samples"]["files"][0]["unpack"] is False
    empty = validate_config({})
    assert empty["prepare"]["max_side"] == 1024 and empty["evaluate"]["methods"][:3] == ["initial", "affine", "srnet"]


def test_errors_are_listed_together():
    with pytest.raises(ConfigError) as err:
        validate_config({"run": ["anhir"], "prepare": {"max_side": 2.5}, "typo": 1,
                         "datasets": {"x": {"source": "local"}}})
    text = str(err.value)
    for expected in ("'typo' was unexpected", "config.prepare.max_side", "dataset 'anhir' is not defined",
                     "config.datasets.x: a local dataset needs `root`"):
        assert expected in text


def test_library_defaults_match_the_schema():
    """Calling srnet_core without a config gives what the workflow's defaults give."""
    import inspect

    from srnet_core.segmentation.pretrain import PretrainSettings
    from srnet_core.segmentation.feature_stages import extract_stage, pretrain_stage
    from srnet_core.segmentation.stages import codebook_stage
    seg = validate_config({})["segmentation"]

    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}

    cb = defaults(codebook_stage)
    assert {k: cb[k] for k in ("k0", "shrink", "k_min", "references", "samples", "seed")} == \
        {k: v for k, v in seg["clustering"].items() if k != "temperature"}
    ex = defaults(extract_stage)
    assert (ex["tile"], ex["margin"], ex["feature_stride"], ex["smooth_sigma"]) == \
        tuple(seg["features"][k] for k in ("tile", "margin", "stride", "smooth_sigma"))
    pt = defaults(pretrain_stage)
    assert (pt["mode"], pt["pseudo_classes"], pt["base_channels"], pt["feature_channels"], pt["feature_stride"]) == (
        seg["pretrain"]["mode"], seg["pretrain"]["pseudo_classes"], seg["fgsn"]["base_channels"],
        seg["fgsn"]["feature_channels"], seg["features"]["stride"])
    settings = PretrainSettings()
    for key in ("iterations", "batch_size", "crop", "lr", "seed"):
        assert getattr(settings, key) == seg["pretrain"][key], key


def test_submission_defaults_to_the_reference_and_must_be_evaluated():
    assert validate_config({})["evaluate"]["submission"] == ["srnet"]
    assert validate_config({"evaluate": {"methods": ["initial"]}})["evaluate"]["submission"] == []
    assert validate_config({"evaluate": {"methods": ["initial", "affine"], "reference": "affine"}}
                           )["evaluate"]["submission"] == ["affine"]
    with pytest.raises(ConfigError, match="evaluate.submission: 'srnet_cc' is not an evaluated"):
        validate_config({"evaluate": {"methods": ["initial", "srnet"], "submission": ["srnet_cc"]}})
    with pytest.raises(ConfigError, match="evaluate.submission: 'initial'"):
        validate_config({"evaluate": {"submission": ["initial"]}})


def test_brain_section_defaults_and_checks():
    from dataclasses import asdict

    from srnet_core.brain.slices import SliceSettings
    from srnet_core.brain.stages import BrainMethod
    brain = validate_config({})["brain"]
    assert asdict(SliceSettings()) == brain["slices"]
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())
    validate_config(shipped)
    methods = shipped["brain"]["methods"]
    assert methods["srnet"] == asdict(BrainMethod())                 # defaults filled per method
    assert methods["voxelmorph_seg"]["maps"] == "manual" and methods["dirnet"]["backbone"] == "dirnet"
    for method in methods.values():
        BrainMethod(**method).check("shipped")
    with pytest.raises(ConfigError) as err:
        validate_config({"datasets": {"mni": {"source": "demo"}}, "run": ["mni"],
                         "brain": {"run": ["oasis"], "datasets": {"mni": {"volumes": [{"image": "t1.nii.gz"}]}, "empty": {}},
                                   "methods": {"a": {"maps": "none"}, "b": {"maps": "manual"},
                                               "c": {"backbone": "dirnet", "grid_spacing": 12},
                                               "elastix": {}},
                                   "evaluate": {"methods": ["before", "a", "zz", "ants_syn"]}}})
    text = str(err.value)
    for expected in ("brain dataset 'oasis' is not defined", "brain.datasets.mni: the name is also a histology",
                     "brain.methods.a: maps: none needs lambda_seg: 0", "brain.methods.b: manual labels",
                     "brain.methods.c: grid_spacing must be a power of 2", "'zz' is neither `before`",
                     "brain.methods.elastix: 'elastix' is a built-in column",
                     "brain.datasets.empty: needs `volumes` or `subjects`"):
        assert expected in text, text
    assert "'ants_syn' is neither" not in text                        # a baseline is a Table 2 column
