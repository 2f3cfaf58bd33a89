import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.registration.stages import warp_slide_stage

with logged(snakemake.log[0]):
    warp_slide_stage(snakemake.params.moving, snakemake.input.field, snakemake.input.fixed, snakemake.output[0])
