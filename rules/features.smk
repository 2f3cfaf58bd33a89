# Stage: FGSN pretraining (per dataset) and multi-scale features (per image).


rule pretrain_fgsn:
    input:
        prepared=lambda wc: prepared_of(wc.dataset, training_image_ids(wc.dataset)),
    output:
        model="results/{dataset}/models/fgsn/model.pt",
        loss="results/{dataset}/models/fgsn/loss.csv",
    params:
        pretrain=config["segmentation"]["pretrain"],
        fgsn=config["segmentation"]["fgsn"],
        stride=config["segmentation"]["features"]["stride"],
        code=script_code("pretrain_fgsn.py"),
    log:
        "logs/pretrain_fgsn/{dataset}.log",
    benchmark:
        "benchmarks/pretrain_fgsn/{dataset}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    # the segmentation chain gates every map-using method's training: before other ready jobs
    priority: 10
    resources:
        mem_mb=4000,
        gpu=1,
    script:
        "../workflow_scripts/pretrain_fgsn.py"


rule extract_features:
    input:
        prepared="results/{dataset}/prepared/{image_id}.h5",
        model="results/{dataset}/models/fgsn/model.pt",
    output:
        "results/{dataset}/features/{image_id}.h5",
    params:
        features=config["segmentation"]["features"],
        code=script_code("extract_features.py"),
    log:
        "logs/extract_features/{dataset}/{image_id}.log",
    benchmark:
        "benchmarks/extract_features/{dataset}/{image_id}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    # the segmentation chain gates every map-using method's training: before other ready jobs
    priority: 10
    resources:
        gpu=1,
        mem_mb=4000,
    script:
        "../workflow_scripts/extract_features.py"
