# Stage: affine pre-alignment (per pair), training (per method), registration (per pair x method),
# and on request the warped full-resolution moving slide.


rule affine:
    input:
        fixed=lambda wc: f"results/{wc.dataset}/prepared/{pair_record(wc)['fixed_id']}.h5",
        moving=lambda wc: f"results/{wc.dataset}/prepared/{pair_record(wc)['moving_id']}.h5",
    output:
        "results/{dataset}/affine/{pair_id}.json",
    params:
        settings=config["registration"]["affine"],
        code=script_code("affine.py"),
    log:
        "logs/affine/{dataset}/{pair_id}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../workflow_scripts/affine.py"


rule train_registration:
    input:
        unpack(training_inputs),
    output:
        model="results/{dataset}/models/{method}/model.pt",
        loss_csv="results/{dataset}/models/{method}/loss.csv",
        loss_png="results/{dataset}/models/{method}/loss.png",
    wildcard_constraints:
        method=alternation(trained_methods()),
    params:
        pairs=lambda wc: training_pairs(wc.dataset, wc.method),
        method=lambda wc: method_settings(wc.method),
        train=config["registration"]["train"],
        network=config["registration"]["network"],
        downsample=config["registration"]["downsample"],
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/models/{wc.method}/checkpoints",
        code=script_code("train_registration.py"),
    log:
        "logs/train_registration/{dataset}/{method}.log",
    benchmark:
        "benchmarks/train_registration/{dataset}/{method}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    script:
        "../workflow_scripts/train_registration.py"


rule register:
    input:
        unpack(register_inputs),
    output:
        field="results/{dataset}/registration/{method}/{pair_id}/field.h5",
        landmarks="results/{dataset}/registration/{method}/{pair_id}/warped_landmarks.csv",
        overlay=report(
            "results/{dataset}/registration/{method}/{pair_id}/overlay.png",
            caption="../report/overlay.rst",
            category="Registrations",
            subcategory="{method}",
            labels={"dataset": "{dataset}", "method": "{method}", "pair": "{pair_id}"},
        ),
        timing="results/{dataset}/registration/{method}/{pair_id}/timing.json",
    wildcard_constraints:
        method=alternation(["affine"] + list(config["registration"]["methods"])),
    params:
        method=lambda wc: method_settings(wc.method) if wc.method != "affine" else None,
        infer=lambda wc: None if wc.method == "affine" else {
            k: v for k, v in config["registration"]["infer"].items() if k != "warp_slide"
        },
        downsample=config["registration"]["downsample"],
        moving_landmarks=lambda wc: pair_record(wc)["moving_landmarks_path"],
        missing_landmarks=lambda wc: ds_config(wc.dataset)["missing_landmarks"],
        error=lambda wc: pair_record(wc)["error"],
        code=script_code("register.py"),
    log:
        "logs/register/{dataset}/{method}/{pair_id}.log",
    benchmark:
        "benchmarks/register/{dataset}/{method}/{pair_id}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=lambda wc: 0 if wc.method == "affine" else 1,
    script:
        "../workflow_scripts/register.py"


rule warp_slide:
    input:
        field="results/{dataset}/registration/{method}/{pair_id}/field.h5",
        fixed=lambda wc: f"results/{wc.dataset}/prepared/{pair_record(wc)['fixed_id']}.h5",
        moving=lambda wc: existing(pair_record(wc)["moving_path"]),
    output:
        "results/{dataset}/registration/{method}/{pair_id}/warped_moving.tif",
    params:
        moving=lambda wc: pair_record(wc)["moving_path"],
        code=script_code("warp_slide.py"),
    log:
        "logs/warp_slide/{dataset}/{method}/{pair_id}.log",
    benchmark:
        "benchmarks/warp_slide/{dataset}/{method}/{pair_id}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
    script:
        "../workflow_scripts/warp_slide.py"


# ants_syn, elastix: from srnet's affine pre-alignment; ants_syn_own, elastix_own: from their own
# initialisation, independent of srnet's affine step (no affine input: its failure is not theirs)
rule register_baseline:
    input:
        fixed=lambda wc: f"results/{wc.dataset}/prepared/{pair_record(wc)['fixed_id']}.h5",
        moving=lambda wc: f"results/{wc.dataset}/prepared/{pair_record(wc)['moving_id']}.h5",
        affine=lambda wc: [] if baseline_start(wc.method)[1] == "own" else f"results/{wc.dataset}/affine/{wc.pair_id}.json",
        landmarks=lambda wc: existing(pair_record(wc)["moving_landmarks_path"]),
    output:
        field="results/{dataset}/registration/{method}/{pair_id}/field.h5",
        landmarks="results/{dataset}/registration/{method}/{pair_id}/warped_landmarks.csv",
        overlay=report(
            "results/{dataset}/registration/{method}/{pair_id}/overlay.png",
            caption="../report/overlay.rst",
            category="Registrations",
            subcategory="{method}",
            labels={"dataset": "{dataset}", "method": "{method}", "pair": "{pair_id}"},
        ),
        timing="results/{dataset}/registration/{method}/{pair_id}/timing.json",
    wildcard_constraints:
        method=alternation(HISTOLOGY_BASELINES),
    params:
        settings=lambda wc: config["registration"]["baselines"][baseline_start(wc.method)[0]],
        moving_landmarks=lambda wc: pair_record(wc)["moving_landmarks_path"],
        missing_landmarks=lambda wc: ds_config(wc.dataset)["missing_landmarks"],
        error=lambda wc: pair_record(wc)["error"],
        code=script_code("register_baseline.py"),
    log:
        "logs/register/{dataset}/{method}/{pair_id}.log",
    benchmark:
        "benchmarks/register/{dataset}/{method}/{pair_id}.tsv"
    conda:
        "../envs/baselines.yaml"
    threads: config["registration"]["baselines"]["threads"]
    resources:
        mem_mb=4000,
    script:
        "../workflow_scripts/register_baseline.py"
