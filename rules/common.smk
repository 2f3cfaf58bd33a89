# Helpers and input functions shared by the rules. Nothing here reads pixels.
import os
import re

from srnet_core.codehash import source_hash
from srnet_core.config import validate_config
from srnet_core.names import BASELINES, HISTOLOGY_BASELINES, OWN_START_BASELINES, baseline_start
from srnet_core.datasets import read_cover_table, read_pairs
from srnet_core.demo import demo_files

validate_config(config)


def ds_config(dataset):
    return config["datasets"][dataset]


def names_with_source(source):
    return [n for n, d in config["datasets"].items() if d["source"] == source]


def alternation(values):
    """Regex matching exactly these strings (never matches when the list is empty)."""
    return "|".join(re.escape(v) for v in values) if values else "(?!x)x"


def cover_table(dataset):
    d = ds_config(dataset)
    return d["table"] if os.path.isabs(d["table"]) else os.path.join(d["root"], d["table"])


def existing(path):
    """Declare a path as input only when it exists. A missing user file then fails that one job with a
    clear message from srnet_core, instead of failing the whole DAG before anything runs."""
    return [path] if path and os.path.exists(path) else []


def raw_inputs(wildcards):
    """Everything the dataset stage needs on disk before it can list pairs."""
    d = ds_config(wildcards.dataset)
    if d["source"] == "demo":
        return [os.path.join(d["root"], f) for f in demo_files()]
    if d["source"] == "download":
        files = [os.path.join(d["root"], f["path"]) for f in d["files"]]
        marks = [os.path.join(d["root"], f["path"] + ".unpacked") for f in d["files"] if f["unpack"]]
        return files + marks
    return existing(cover_table(wildcards.dataset))


def screened_files(wildcards):
    """The images and landmark files of a local dataset that exist: the dataset stage opens them (header,
    landmarks), so its verdict is made again when one is repaired, replaced or appears."""
    import logging

    d = ds_config(wildcards.dataset)
    if d["source"] != "local":
        return []                     # demo and download files are already inputs (raw_inputs)
    quiet = logging.getLogger("srnet_core.datasets")
    quiet.disabled = True             # its warnings belong to the dataset job's log, not to every DAG build
    try:
        pairs = read_pairs_of_table(cover_table(wildcards.dataset), d["root"], d["strip_prefix"])
    except Exception:                 # a bad cover table: the dataset job reports it
        return []
    finally:
        quiet.disabled = False
    columns = ["fixed_path", "moving_path", "fixed_landmarks_path", "moving_landmarks_path"]
    paths = {p for c in columns for p, e in zip(pairs[c], pairs["error"]) if p and not e}
    return sorted(p for p in paths if os.path.exists(p))


def read_pairs_of_table(table, root, strip_prefix):
    key = ("cover", table, root, strip_prefix, os.stat(table).st_mtime_ns)
    if key not in _TABLES:
        _TABLES[key] = read_cover_table(table, root, strip_prefix=strip_prefix)
    return _TABLES[key]


def download_entry(dataset, path):
    d = ds_config(dataset)
    entry = next(f for f in d["files"] if f["path"] == path)
    return {"url": entry["url"] or d["url_base"] + path, "sha256": entry["sha256"]}


_TABLES = {}


def _cached_table(path, index):
    """Input functions run several times per job: read each normalized table once per version."""
    import pandas as pd

    key = (path, os.stat(path).st_mtime_ns)
    if key not in _TABLES:
        frame = read_pairs(path) if index == "pair_id" else pd.read_csv(path, dtype=str, keep_default_na=False)
        _TABLES[key] = frame.set_index(index, drop=False)
    return _TABLES[key]


def pairs_table(dataset):
    """The normalized pair table (after the `dataset` checkpoint has run), indexed by pair_id."""
    return _cached_table(checkpoints.dataset.get(dataset=dataset).output.pairs, "pair_id")


def images_table(dataset):
    return _cached_table(checkpoints.dataset.get(dataset=dataset).output.images, "image_id")


def usable_pairs(dataset):
    """The pairs the dataset stage found nothing wrong with: the others are never prepared, registered or
    trained on; evaluation scores them as failed."""
    pairs = pairs_table(dataset)
    return pairs[pairs["error"] == ""]


def image_record(wildcards):
    return images_table(wildcards.dataset).loc[wildcards.image_id]


def pair_record(wildcards):
    return pairs_table(wildcards.dataset).loc[wildcards.pair_id]


def warped_landmarks(wildcards):
    """Moving landmarks mapped into the fixed frame by the method; `initial` is the identity. A pair
    without a moving landmark file (none named, or named but absent) keeps the raw name, so that
    evaluation reports why it is unscored; it is still registered (see all_registrations)."""
    pair = pair_record(wildcards)
    raw = pair["moving_landmarks_path"]
    if wildcards.method == "initial" or pair["error"] or not raw or not os.path.exists(raw):
        return raw
    return f"results/{wildcards.dataset}/registration/{wildcards.method}/{wildcards.pair_id}/warped_landmarks.csv"


def evaluation_landmarks(wildcards):
    """The fixed landmarks and the warped moving ones: raw files only when they exist (a missing user
    file fails that job with a clear message), a registration output always (it is made by a job)."""
    pair = pair_record(wildcards)
    warped = warped_landmarks(wildcards)
    produced = warped != pair["moving_landmarks_path"]
    return existing(pair["fixed_landmarks_path"]) + ([warped] if produced else existing(warped))


def prepared_for_evaluation(side):
    def inputs(wildcards):
        pair = pair_record(wildcards)
        return [] if pair["error"] else [f"results/{wildcards.dataset}/prepared/{pair[f'{side}_id']}.h5"]

    return inputs


def fixed_header_size(wildcards):
    """(width, height) of the fixed image from its header (dataset stage); None when unreadable."""
    pair = pair_record(wildcards)
    if not pair["fixed_id"]:
        return None
    image = images_table(wildcards.dataset).loc[pair["fixed_id"]]
    return [int(float(image["width"])), int(float(image["height"]))] if image.get("width", "") else None


def registration_timing(wildcards):
    """What a pair's execution time is read from: the affine step's JSON and the method's register
    timing (none for `initial`, which does nothing; only the latter for the baselines from their own
    initialisation, which do not use srnet's affine step)."""
    if wildcards.method == "initial" or pair_record(wildcards)["error"]:
        return []
    register = f"results/{wildcards.dataset}/registration/{wildcards.method}/{wildcards.pair_id}/timing.json"
    if wildcards.method in OWN_START_BASELINES:
        return [register]
    return [f"results/{wildcards.dataset}/affine/{wildcards.pair_id}.json", register]


def submission_landmarks(wildcards):
    """The method's warped landmarks of every pair registered (those without a dataset-stage error)."""
    pairs = usable_pairs(wildcards.dataset)
    return [f"results/{wildcards.dataset}/registration/{wildcards.method}/{p}/warped_landmarks.csv"
            for p in pairs["pair_id"]]


def all_submissions():
    return expand("results/{dataset}/submission/{method}", dataset=config["run"],
                  method=config["evaluate"]["submission"])


# ----------------------------------------------------------------------------------------------------
# registration

def learned_methods():
    """Methods of registration.methods that the tables ask for."""
    return [m for m in config["evaluate"]["methods"] if m in config["registration"]["methods"]]


def trained_methods():
    """Learned methods trained here (no `checkpoint`: apply mode trains nothing)."""
    return [m for m in learned_methods() if not config["registration"]["methods"][m]["checkpoint"]]


def method_settings(method):
    """The loss and input settings of a method (what its training and registration depend on)."""
    return {k: v for k, v in config["registration"]["methods"][method].items() if k != "checkpoint"}


def uses_maps(method):
    s = config["registration"]["methods"][method]
    return bool(s["map_inputs"] or s["lambda_seg"])


def model_of(dataset, method):
    supplied = config["registration"]["methods"][method]["checkpoint"]
    return supplied or f"results/{dataset}/models/{method}/model.pt"


def training_pair_frame(dataset):
    pairs = pairs_table(dataset)
    usable = pairs[pairs["error"] == ""]
    chosen = usable[usable["status"] == "training"]
    return chosen if not chosen.empty else usable


def _pair_files(dataset, pair, maps):
    files = {
        "fixed": f"results/{dataset}/prepared/{pair['fixed_id']}.h5",
        "moving": f"results/{dataset}/prepared/{pair['moving_id']}.h5",
        "affine": f"results/{dataset}/affine/{pair['pair_id']}.json",
    }
    if maps:
        files["fixed_seg"] = f"results/{dataset}/segmentation/{pair['fixed_id']}.h5"
        files["moving_seg"] = f"results/{dataset}/segmentation/{pair['moving_id']}.h5"
    return files


def training_pairs(dataset, method):
    maps = uses_maps(method)
    return [_pair_files(dataset, row, maps) for _, row in training_pair_frame(dataset).iterrows()]


def training_inputs(wildcards):
    files = {"pairs": sorted({f for p in training_pairs(wildcards.dataset, wildcards.method) for f in p.values()})}
    if uses_maps(wildcards.method):
        files["codebook"] = f"results/{wildcards.dataset}/segmentation/codebook.h5"
    return files


def register_inputs(wildcards):
    pair = pair_record(wildcards)
    learned = wildcards.method != "affine"
    maps = learned and uses_maps(wildcards.method)
    files = _pair_files(wildcards.dataset, pair, maps)
    if learned:
        files["model"] = model_of(wildcards.dataset, wildcards.method)
        if maps:
            files["codebook"] = f"results/{wildcards.dataset}/segmentation/codebook.h5"
    files["landmarks"] = existing(pair["moving_landmarks_path"])
    return files


def all_registrations(wildcards):
    """Every pair registered by every method the tables ask for (scored or not), except those the dataset
    stage found broken."""
    methods = [m for m in config["evaluate"]["methods"] if m != "initial"]
    outputs = expand(
        "results/{dataset}/registration/{method}/{pair_id}/timing.json",
        dataset=wildcards.dataset,
        method=methods,
        pair_id=usable_pairs(wildcards.dataset)["pair_id"],
    )
    if config["registration"]["infer"]["warp_slide"]:
        outputs += [o.replace("timing.json", "warped_moving.tif") for o in outputs]
    return outputs


def all_evaluations(wildcards):
    pairs = pairs_table(wildcards.dataset)
    return expand(
        "results/{dataset}/evaluation/{method}/{pair_id}.json",
        dataset=wildcards.dataset,
        method=config["evaluate"]["methods"],
        pair_id=pairs["pair_id"],
    )


def training_image_ids(dataset):
    """Images of the dataset's training pairs (all pairs when none is marked training), minus those the
    dataset stage already found broken: what FGSN pretraining and the codebook learn from."""
    pairs = pairs_table(dataset)
    usable = pairs[pairs["error"] == ""]
    chosen = usable[usable["status"] == "training"]
    if chosen.empty:
        chosen = usable
    return sorted(set(chosen["fixed_id"]) | set(chosen["moving_id"]))


def prepared_of(dataset, ids):
    return [f"results/{dataset}/prepared/{i}.h5" for i in ids]


def features_of(dataset, ids):
    return [f"results/{dataset}/features/{i}.h5" for i in ids]


def segmentation_outputs(wildcards):
    """The segmentation map of every image of a usable pair (the default target builds them when
    segmentation is enabled)."""
    if not config["segmentation"]["enabled"]:
        return []
    pairs = usable_pairs(wildcards.dataset)
    used = set(pairs["fixed_id"]) | set(pairs["moving_id"])
    return [f"results/{wildcards.dataset}/segmentation/{i}.h5" for i in images_table(wildcards.dataset).index
            if i in used]


_CODE_HASHES = {}


def script_code(script):
    """Hash of a workflow script and of every srnet_core module it imports, directly or through
    others (srnet_core/codehash.py), passed through params: so that changing library code re-runs
    exactly the stages that run it (Snakemake tracks only the rule's own script)."""
    if script not in _CODE_HASHES:
        _CODE_HASHES[script] = source_hash(workflow.basedir, [f"workflow_scripts/{script}"])
    return _CODE_HASHES[script]


# ---- brain track (rules/brain.smk)

def brain_config(dataset):
    return config["brain"]["datasets"][dataset]


def brain_volumes(dataset):
    """The dataset's volumes: those listed, then those its `subjects` glob finds (sorted)."""
    from srnet_core.brain.slices import find_volumes

    d = brain_config(dataset)
    found = find_volumes(**d["subjects"]) if d.get("subjects") else []
    return [{"image": v["image"], "labels": v.get("labels")} for v in d["volumes"]] + found


def brain_volume_paths(dataset):
    return [p for v in brain_volumes(dataset) for p in (v["image"], v["labels"]) if p]


def brain_methods():
    return config["brain"]["methods"]


def brain_trained():
    return [m for m in config["brain"]["evaluate"]["methods"] if m != "before"]


def brain_uses_self_maps(method):
    return brain_methods()[method]["maps"] == "self"


def brain_registration(dataset, method):
    return f"results/{dataset}/brain/registration/{method}.h5"
