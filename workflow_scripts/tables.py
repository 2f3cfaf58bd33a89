import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_csv_atomic, write_text_atomic
from srnet_core.evaluation import (anhir_scores, failed_markdown, failed_pairs, median_rtre_table, significance,
                                   significance_markdown, table_markdown)
from srnet_core.figures import rtre_boxplots
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    methods, dataset = snakemake.params.methods, snakemake.wildcards.dataset
    pairs = pd.DataFrame([json.loads(Path(f).read_text()) for f in snakemake.input.summaries])
    if "failed" not in pairs:
        pairs["failed"] = False
    pairs["failed"] = pairs["failed"].fillna(False).astype(bool)
    table = median_rtre_table(pairs, methods)
    scores = anhir_scores(pairs, methods)
    tests = significance(pairs, methods, snakemake.params.reference)
    failed = failed_pairs(pairs, pd.read_csv(snakemake.input.pairs, dtype=str, keep_default_na=False))
    unscored = pairs[~pairs["scored"] & ~pairs["failed"]]
    flagged = pairs[pairs["scored"] & (pairs.get("n_missing", 0) > 0) & ~pairs["failed"]]
    note = "".join(f"- not scored: {r.pair_id} ({r.method}): {r.reason}\n" for r in unscored.itertuples())
    note += "".join(f"- **flagged**: {r.pair_id} ({r.method}): {r.reason}\n" for r in flagged.itertuples())
    if "affine_close_call" in pairs:
        close = pairs[pairs["affine_close_call"].fillna(False).astype(bool)].drop_duplicates("pair_id")
        note += "".join(f"- **pre-alignment close call**: {r.pair_id}: {r.affine_reason} "
                        f"(results/{dataset}/affine/{r.pair_id}.json)\n" for r in close.itertuples())
    write_csv_atomic(snakemake.output.csv, table, index=True, float_format="%.6g")
    write_csv_atomic(snakemake.output.pairs, pairs, float_format="%.6g")
    write_csv_atomic(snakemake.output.failed, failed)
    write_csv_atomic(snakemake.output.scores_csv, scores, float_format="%.6g")
    write_text_atomic(snakemake.output.scores_json, json.dumps(scores.to_dict(orient="records"), indent=1))
    write_csv_atomic(snakemake.output.significance, tests, float_format="%.6g")
    rtre_boxplots(pairs, methods, snakemake.output.boxplot, f"{dataset}: per-pair median rTRE")
    write_text_atomic(snakemake.output.md, table_markdown(table, f"Median rTRE per tissue: {dataset}")
                      + ("\n" + significance_markdown(tests) if not tests.empty else "")
                      + ("\n" + note if note else "")
                      + ("\n" + failed_markdown(failed, pairs["pair_id"].nunique()) if not failed.empty else ""))
    log.info("\n%s\n%s\n%s", table.to_string(), scores.to_string(), tests.to_string())
    if not failed.empty:
        log.warning("%d of %d pairs failed, listed in %s and scored as missing results (initial error, "
                    "robustness 0)", len(failed), pairs["pair_id"].nunique(), snakemake.output.failed)
