import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_csv_atomic, write_text_atomic
from srnet_core.evaluation import median_rtre_table, table_markdown
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    pairs = pd.DataFrame([json.loads(Path(f).read_text()) for f in snakemake.input.summaries])
    table = median_rtre_table(pairs, snakemake.params.methods)
    dataset = snakemake.wildcards.dataset
    unscored = pairs[~pairs["scored"]]
    note = "".join(f"- not scored: {r.pair_id} ({r.method}): {r.reason}\n" for r in unscored.itertuples())
    write_csv_atomic(snakemake.output.csv, table, index=True, float_format="%.6g")
    write_csv_atomic(snakemake.output.pairs, pairs, float_format="%.6g")
    write_text_atomic(snakemake.output.md, table_markdown(table, f"Median rTRE per tissue: {dataset}")
                      + ("\n" + note if note else ""))
    log.info("\n%s", table.to_string())
