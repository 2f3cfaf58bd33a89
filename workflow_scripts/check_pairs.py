import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_text_atomic
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    failed = pd.read_csv(snakemake.input.failed, dtype=str, keep_default_na=False)
    total = len(pd.read_csv(snakemake.input.pairs, usecols=["pair_id"]))
    if len(failed):
        # the reasons were logged once where they were found; here the pairs, and where the reasons are
        named = [f"{r.pair_id} (at {r.stage})" for r in failed.itertuples()]
        shown = ", ".join(named[:20]) + (f" and {len(named) - 20} more" if len(named) > 20 else "")
        log.error("%d of %d pairs failed: %s. The tables hold them as missing results (initial error, "
                  "robustness 0); their reasons are in %s. Fix their input and run again.", len(failed), total,
                  shown, snakemake.input.failed)
        sys.exit(1)
    write_text_atomic(snakemake.output[0], f"all {total} pairs finished\n")
    log.info("all %d pairs finished", total)
