import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.evaluation import write_submission
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    frame = write_submission(snakemake.input.pairs, snakemake.input.dataset, snakemake.wildcards.method,
                              list(snakemake.input.landmarks),
                             snakemake.output[0])
    log.info("ANHIR submission for %s: %d pairs, %d with warped landmarks -> %s", snakemake.wildcards.method,
             len(frame), int((frame["Warped source landmarks"] != "").sum()), snakemake.output[0])
