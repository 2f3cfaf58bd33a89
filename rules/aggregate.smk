# Stage: per-tissue median rTRE tables over all pairs and methods.


rule tables:
    input:
        pairs="results/{dataset}/dataset.csv",
        summaries=all_evaluations,
        registrations=all_registrations,
    output:
        csv="results/{dataset}/tables/median_rtre.csv",
        md="results/{dataset}/tables/median_rtre.md",
        pairs="results/{dataset}/tables/pairs.csv",
    params:
        methods=config["evaluate"]["methods"],
        code=src_hash("evaluation"),
    log:
        "logs/tables/{dataset}.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=500,
    script:
        "../workflow_scripts/tables.py"
