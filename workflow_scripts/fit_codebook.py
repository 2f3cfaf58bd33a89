import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.segmentation.stages import codebook_stage

with logged(snakemake.log[0]):
    out = snakemake.output
    codebook_stage(list(snakemake.input.features), list(snakemake.input.prepared), snakemake.wildcards.dataset,
                   out.codebook, out.gap_csv, out.gap_png, **snakemake.params.clustering)
