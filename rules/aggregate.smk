# Stage: per-tissue median rTRE tables over all pairs and methods, ANHIR's aggregate scores, the
# significance of the reference method against the others, box plots, and ANHIR submission folders.
# Failed pairs are in every table as missing results and listed in failed_pairs.csv; check_pairs then
# fails the run, naming them, while any are left.


rule tables:
    input:
        pairs="results/{dataset}/dataset.csv",
        summaries=all_evaluations,
        registrations=all_registrations,
    output:
        csv=report(
            "results/{dataset}/tables/median_rtre.csv",
            caption="../report/median_rtre.rst",
            category="Tables",
            labels={"dataset": "{dataset}", "table": "median rTRE per tissue"},
        ),
        md="results/{dataset}/tables/median_rtre.md",
        pairs="results/{dataset}/tables/pairs.csv",
        failed=report(
            "results/{dataset}/tables/failed_pairs.csv",
            caption="../report/failed_pairs.rst",
            category="Tables",
            labels={"dataset": "{dataset}", "table": "failed pairs"},
        ),
        scores_csv=report(
            "results/{dataset}/tables/anhir_scores.csv",
            caption="../report/anhir_scores.rst",
            category="Tables",
            labels={"dataset": "{dataset}", "table": "ANHIR scores"},
        ),
        scores_json="results/{dataset}/tables/anhir_scores.json",
        significance=report(
            "results/{dataset}/tables/significance.csv",
            caption="../report/significance.rst",
            category="Tables",
            labels={"dataset": "{dataset}", "table": "Wilcoxon tests"},
        ),
        boxplot=report(
            "results/{dataset}/tables/rtre_boxplot.png",
            caption="../report/boxplot.rst",
            category="Figures",
            labels={"dataset": "{dataset}", "figure": "rTRE by method"},
        ),
    params:
        methods=config["evaluate"]["methods"],
        reference=config["evaluate"]["reference"],
        code=script_code("tables.py"),
    log:
        "logs/tables/{dataset}.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    script:
        "../workflow_scripts/tables.py"


rule check_pairs:
    """Last: exits non-zero, naming them, while pairs failed (so schedulers notice); writes its output
    only when every pair finished."""
    input:
        failed="results/{dataset}/tables/failed_pairs.csv",
        pairs="results/{dataset}/dataset.csv",
    output:
        "results/{dataset}/tables/check_pairs.txt",
    log:
        "logs/check_pairs/{dataset}.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=200,
    script:
        "../workflow_scripts/check_pairs.py"


rule submission:
    input:
        pairs="results/{dataset}/tables/pairs.csv",
        dataset="results/{dataset}/dataset.csv",
        landmarks=submission_landmarks,
    output:
        directory("results/{dataset}/submission/{method}"),
    params:
        code=script_code("submission.py"),
    log:
        "logs/submission/{dataset}/{method}.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=500,
    script:
        "../workflow_scripts/submission.py"
