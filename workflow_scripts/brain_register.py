import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.brain.stages import register_stage

with logged(snakemake.log[0]):
    register_stage(snakemake.input.slices, snakemake.input.get("maps") or None, snakemake.input.model,
                   snakemake.wildcards.method, snakemake.output[0], split=snakemake.params.split,
                   reflections=snakemake.params.reflections)
