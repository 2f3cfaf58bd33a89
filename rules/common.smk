# Helpers and input functions shared by the rules. Nothing here reads pixels.
import hashlib
import os
import re

from srnet_core.config import validate_config
from srnet_core.datasets import read_pairs
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


def image_record(wildcards):
    return images_table(wildcards.dataset).loc[wildcards.image_id]


def pair_record(wildcards):
    return pairs_table(wildcards.dataset).loc[wildcards.pair_id]


def warped_landmarks(wildcards):
    """Moving landmarks mapped into the fixed frame by the method; `initial` is the identity."""
    pair = pair_record(wildcards)
    if wildcards.method == "initial":
        return pair["moving_landmarks_path"]
    return f"results/{wildcards.dataset}/registration/{wildcards.method}/{wildcards.pair_id}/warped_landmarks.csv"


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
    """Every image's segmentation map (the default target builds them when segmentation is enabled)."""
    if not config["segmentation"]["enabled"]:
        return []
    images = images_table(wildcards.dataset)
    return [f"results/{wildcards.dataset}/segmentation/{i}.h5" for i in images.index]


_SRC_HASHES = {}


def src_hash(*modules):
    """Hash of the srnet_core modules a stage runs, passed through params: so that changing the
    library's code re-runs the stages that use it (Snakemake tracks only the rule's own script)."""
    key = tuple(sorted(modules))
    if key not in _SRC_HASHES:
        digest = hashlib.sha256()
        for module in key:
            with open(os.path.join(workflow.basedir, "srnet_core", module + ".py"), "rb") as f:
                digest.update(f.read())
        _SRC_HASHES[key] = digest.hexdigest()[:16]
    return _SRC_HASHES[key]
