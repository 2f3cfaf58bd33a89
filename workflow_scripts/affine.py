import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.registration.stages import affine_stage

with logged(snakemake.log[0]):
    affine_stage(snakemake.input.fixed, snakemake.input.moving, snakemake.output[0], snakemake.wildcards.pair_id,
                 dict(snakemake.params.settings))
