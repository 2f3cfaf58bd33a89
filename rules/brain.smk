# The brain MRI track (the seed's Table 2): slices with simulated deformations -> self-supervised maps
# -> one model per method -> registration of the test slices -> Table 2 (Dice / HD95 / time per method).
# Everything lives under results/<dataset>/brain/ except the tables (results/<dataset>/tables/table2.*).


rule brain_slices:
    input:
        lambda wc: [p for p in brain_volume_paths(wc.dataset) if os.path.exists(p)],
    output:
        slices="results/{dataset}/brain/slices.h5",
        preview="results/{dataset}/brain/slices.png",
    params:
        volumes=lambda wc: brain_volumes(wc.dataset),
        settings=config["brain"]["slices"],
        code=script_code("brain_slices.py"),
    log:
        "logs/brain_slices/{dataset}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../workflow_scripts/brain_slices.py"


rule brain_pretrain_fgsn:
    input:
        slices="results/{dataset}/brain/slices.h5",
    output:
        model="results/{dataset}/brain/fgsn/model.pt",
        loss_csv="results/{dataset}/brain/fgsn/loss.csv",
    params:
        settings={k: config["brain"]["segmentation"][k] for k in ("iterations", "batch_size", "crop", "lr", "seed")},
        network={k: config["brain"]["segmentation"][k] for k in ("pseudo_classes", "base_channels", "feature_channels")},
        code=script_code("brain_pretrain_fgsn.py"),
    log:
        "logs/brain_pretrain_fgsn/{dataset}.log",
    benchmark:
        "benchmarks/brain_pretrain_fgsn/{dataset}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    script:
        "../workflow_scripts/brain_pretrain_fgsn.py"


rule brain_maps:
    input:
        slices="results/{dataset}/brain/slices.h5",
        model="results/{dataset}/brain/fgsn/model.pt",
    output:
        maps="results/{dataset}/brain/maps.h5",
        gap_csv="results/{dataset}/brain/gap_curve.csv",
        gap_png="results/{dataset}/brain/gap_curve.png",
    params:
        clustering={k: config["brain"]["segmentation"][k]
                    for k in ("k0", "shrink", "k_min", "references", "samples", "smooth_sigma", "temperature")},
        code=script_code("brain_maps.py"),
    log:
        "logs/brain_maps/{dataset}.log",
    benchmark:
        "benchmarks/brain_maps/{dataset}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    script:
        "../workflow_scripts/brain_maps.py"


rule brain_train:
    input:
        slices="results/{dataset}/brain/slices.h5",
        maps=lambda wc: f"results/{wc.dataset}/brain/maps.h5" if brain_uses_self_maps(wc.method) else [],
    output:
        model="results/{dataset}/brain/models/{method}/model.pt",
        loss_csv="results/{dataset}/brain/models/{method}/loss.csv",
        loss_png="results/{dataset}/brain/models/{method}/loss.png",
    wildcard_constraints:
        method=alternation(list(config["brain"]["methods"])),
    params:
        method=lambda wc: brain_methods()[wc.method],
        train=config["brain"]["train"],
        network=config["brain"]["network"],
        checkpoint_dir=lambda wc: f"results/{wc.dataset}/brain/models/{wc.method}/checkpoints",
        code=script_code("brain_train.py"),
    log:
        "logs/brain_train/{dataset}/{method}.log",
    benchmark:
        "benchmarks/brain_train/{dataset}/{method}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=6000,
        gpu=1,
    script:
        "../workflow_scripts/brain_train.py"


rule brain_register:
    input:
        slices="results/{dataset}/brain/slices.h5",
        maps=lambda wc: f"results/{wc.dataset}/brain/maps.h5" if brain_uses_self_maps(wc.method) else [],
        model="results/{dataset}/brain/models/{method}/model.pt",
    output:
        "results/{dataset}/brain/registration/{method}.h5",
    wildcard_constraints:
        method=alternation(list(config["brain"]["methods"])),
    params:
        split=config["brain"]["evaluate"]["split"],
        reflections=config["brain"]["evaluate"]["reflections"],
        code=script_code("brain_register.py"),
    log:
        "logs/brain_register/{dataset}/{method}.log",
    benchmark:
        "benchmarks/brain_register/{dataset}/{method}.tsv"
    conda:
        "../envs/torch.yaml"
    # two threads: on a 2-core machine no other job shares the cores while the time per pair is measured
    threads: 2
    resources:
        mem_mb=4000,
        gpu=1,
    script:
        "../workflow_scripts/brain_register.py"


rule brain_register_baseline:
    input:
        slices="results/{dataset}/brain/slices.h5",
    output:
        "results/{dataset}/brain/registration/{method}.h5",
    wildcard_constraints:
        method=alternation(BASELINES),
    params:
        settings=lambda wc: config["registration"]["baselines"][wc.method],
        split=config["brain"]["evaluate"]["split"],
        code=script_code("brain_register_baseline.py"),
    log:
        "logs/brain_register/{dataset}/{method}.log",
    benchmark:
        "benchmarks/brain_register/{dataset}/{method}.tsv"
    conda:
        "../envs/baselines.yaml"
    threads: config["registration"]["baselines"]["threads"]
    resources:
        mem_mb=4000,
    script:
        "../workflow_scripts/brain_register_baseline.py"


rule brain_table:
    input:
        slices="results/{dataset}/brain/slices.h5",
        registrations=lambda wc: [brain_registration(wc.dataset, m) for m in brain_trained()],
    output:
        csv=report("results/{dataset}/tables/table2.csv", caption="../report/table2.rst", category="Brain",
                   labels={"dataset": "{dataset}", "table": "Table 2 (CSV)"}),
        md="results/{dataset}/tables/table2.md",
        pairs="results/{dataset}/tables/table2_pairs.csv",
        labels="results/{dataset}/tables/table2_labels.csv",
        significance="results/{dataset}/tables/table2_significance.csv",
        figure=report("results/{dataset}/tables/table2_contours.png", caption="../report/table2_contours.rst",
                      category="Brain", labels={"dataset": "{dataset}", "figure": "contours (Fig. 3)"}),
    params:
        methods=config["brain"]["evaluate"]["methods"],
        trained=brain_trained(),
        reference=config["brain"]["evaluate"]["reference"],
        figure_label=config["brain"]["evaluate"]["figure_label"],
        split=config["brain"]["evaluate"]["split"],
        code=script_code("brain_table.py"),
    log:
        "logs/brain_table/{dataset}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../workflow_scripts/brain_table.py"

