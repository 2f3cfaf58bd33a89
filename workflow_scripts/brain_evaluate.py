import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.brain.stages import evaluate_stage

with logged(snakemake.log[0]):
    evaluate_stage(snakemake.input.slices, snakemake.input.get("registration") or None,
                   snakemake.wildcards.method, snakemake.output[0], split=snakemake.params.split)
