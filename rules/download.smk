# Stage 1: get the raw data (generate the demo, download files) and normalize the cover table.


rule demo_dataset:
    output:
        [f"data/{{dataset}}/{f}" for f in demo_files()],
    wildcard_constraints:
        dataset=alternation(names_with_source("demo")),
    params:
        seed=lambda wc: ds_config(wc.dataset)["seed"],
        code=script_code("demo_dataset.py"),
    log:
        "logs/demo_dataset/{dataset}.log",
    benchmark:
        "benchmarks/demo_dataset/{dataset}.tsv"
    conda:
        "../envs/demo.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../workflow_scripts/demo_dataset.py"


rule download:
    output:
        "data/{dataset}/{file}",
    wildcard_constraints:
        dataset=alternation(names_with_source("download")),
        file=alternation(
            sorted({f["path"] for n in names_with_source("download") for f in ds_config(n)["files"]})
        ),
    params:
        entry=lambda wc: download_entry(wc.dataset, wc.file),
        timeout=config["download"]["timeout_s"],
        retries=config["download"]["retries"],
    log:
        "logs/download/{dataset}/{file}.log",
    conda:
        "../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=500,
    script:
        "../workflow_scripts/download.py"


rule unpack:
    input:
        "data/{dataset}/{file}",
    output:
        touch("data/{dataset}/{file}.unpacked"),
    wildcard_constraints:
        dataset=alternation(names_with_source("download")),
    log:
        "logs/unpack/{dataset}/{file}.log",
    conda:
        "../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=500,
    script:
        "../workflow_scripts/unpack.py"


checkpoint dataset:
    input:
        raw_inputs,
        screened_files,
    output:
        pairs="results/{dataset}/dataset.csv",
        images="results/{dataset}/images.csv",
    params:
        table=lambda wc: cover_table(wc.dataset),
        root=lambda wc: ds_config(wc.dataset)["root"],
        strip_prefix=lambda wc: ds_config(wc.dataset)["strip_prefix"],
        tissues=lambda wc: ds_config(wc.dataset)["tissues"],
        missing_landmarks=lambda wc: ds_config(wc.dataset)["missing_landmarks"],
        code=script_code("dataset.py"),
    log:
        "logs/dataset/{dataset}.log",
    conda:
        "../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../workflow_scripts/dataset.py"
