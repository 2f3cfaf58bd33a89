# Stage: one k-means codebook per dataset (k by the gap statistic), then a segmentation map per image.


rule fit_codebook:
    input:
        features=lambda wc: features_of(wc.dataset, training_image_ids(wc.dataset)),
        prepared=lambda wc: prepared_of(wc.dataset, training_image_ids(wc.dataset)),
    output:
        codebook="results/{dataset}/segmentation/codebook.h5",
        gap_csv="results/{dataset}/segmentation/gap_curve.csv",
        gap_png=report(
            "results/{dataset}/segmentation/gap_curve.png",
            caption="../report/gap_curve.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "gap statistic"},
        ),
    params:
        clustering={k: v for k, v in config["segmentation"]["clustering"].items() if k != "temperature"},
        code=script_code("fit_codebook.py"),
    log:
        "logs/fit_codebook/{dataset}.log",
    benchmark:
        "benchmarks/fit_codebook/{dataset}.tsv"
    conda:
        "../envs/cluster.yaml"
    threads: 2
    # the segmentation chain gates every map-using method's training: before other ready jobs
    priority: 10
    resources:
        mem_mb=4000,
    script:
        "../workflow_scripts/fit_codebook.py"


rule segment:
    input:
        features="results/{dataset}/features/{image_id}.h5",
        prepared="results/{dataset}/prepared/{image_id}.h5",
        codebook="results/{dataset}/segmentation/codebook.h5",
    output:
        h5="results/{dataset}/segmentation/{image_id}.h5",
        overlay="results/{dataset}/segmentation/{image_id}.png",
    params:
        temperature=config["segmentation"]["clustering"]["temperature"],
        code=script_code("segment.py"),
    log:
        "logs/segment/{dataset}/{image_id}.log",
    conda:
        "../envs/cluster.yaml"
    threads: 1
    # the segmentation chain gates every map-using method's training: before other ready jobs
    priority: 10
    resources:
        mem_mb=3000,
    script:
        "../workflow_scripts/segment.py"


rule segmentation_done:
    input:
        segmentation_outputs,
    output:
        "results/{dataset}/segmentation/done.txt",
    log:
        "logs/segmentation_done/{dataset}.log",
    conda:
        "../envs/cluster.yaml"
    threads: 1
    resources:
        mem_mb=200,
    script:
        "../workflow_scripts/segmentation_done.py"
