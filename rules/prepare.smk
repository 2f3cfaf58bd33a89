# Stage 2: one working-resolution image, tissue mask and exact scale factors per image. A bad image
# (truncated pixel data, no tissue) gives failure records (srnet_core/outcome.py) instead of a failed job.
# The image table is reached through the checkpoint (image_record), not as an input file: a change to
# another image's row (repaired, added) must not re-prepare this one; its own path and error are params.


rule prepare:
    input:
        image=lambda wc: existing(image_record(wc)["path"]),
    output:
        h5="results/{dataset}/prepared/{image_id}.h5",
        preview="results/{dataset}/prepared/{image_id}.png",
    params:
        path=lambda wc: image_record(wc)["path"],
        error=lambda wc: image_record(wc)["error"],
        max_side=config["prepare"]["max_side"],
        mpp=config["prepare"]["mpp"],
        min_tissue_fraction=config["prepare"]["min_tissue_fraction"],
        tile_size=config["prepare"]["tile_size"],
        tile_min_tissue=config["prepare"]["tile_min_tissue"],
        code=script_code("prepare.py"),
    log:
        "logs/prepare/{dataset}/{image_id}.log",
    benchmark:
        "benchmarks/prepare/{dataset}/{image_id}.tsv"
    conda:
        "../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=1500,
    script:
        "../workflow_scripts/prepare.py"
