import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.brain.maps import pretrain_stage

with logged(snakemake.log[0]):
    out = snakemake.output
    pretrain_stage(snakemake.input.slices, out.model, out.loss_csv, **snakemake.params.network,
                   settings=dict(snakemake.params.settings))
