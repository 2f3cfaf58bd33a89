import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.brain.baselines import baseline_register_stage
from srnet_core.logs import logged

with logged(snakemake.log[0]):
    baseline_register_stage(snakemake.input.slices, snakemake.wildcards.method, snakemake.params.settings,
                            snakemake.output[0], split=snakemake.params.split, threads=snakemake.threads)
