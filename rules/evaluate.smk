# Stage: errors of one pair for one method (rTRE against the fixed landmarks). A pair the dataset stage
# found broken has no prepared images or registration to wait for: it is scored as failed straight away.


rule evaluate:
    input:
        fixed=prepared_for_evaluation("fixed"),
        moving=prepared_for_evaluation("moving"),
        landmarks=evaluation_landmarks,
        timing=registration_timing,
    output:
        errors="results/{dataset}/evaluation/{method}/{pair_id}.csv",
        summary="results/{dataset}/evaluation/{method}/{pair_id}.json",
    params:
        pair=lambda wc: pair_record(wc)[["tissue", "status", "row", "error"]].to_dict(),
        fixed_landmarks=lambda wc: pair_record(wc)["fixed_landmarks_path"],
        table_diagonal=lambda wc: float(pair_record(wc)["table_diagonal"]),
        fixed_header_size=fixed_header_size,
        warped_landmarks=warped_landmarks,
        moving_landmarks=lambda wc: pair_record(wc)["moving_landmarks_path"],
        missing_landmarks=lambda wc: ds_config(wc.dataset)["missing_landmarks"],
        code=script_code("evaluate.py"),
    log:
        "logs/evaluate/{dataset}/{method}/{pair_id}.log",
    conda:
        "../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=500,
    script:
        "../workflow_scripts/evaluate.py"
