import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.segmentation.stages import segment_stage

with logged(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    segment_stage(i.features, i.prepared, i.codebook, snakemake.wildcards.dataset, snakemake.wildcards.image_id,
                  o.h5, o.overlay, temperature=snakemake.params.temperature)
