import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.brain.maps import maps_stage

with logged(snakemake.log[0]):
    out = snakemake.output
    maps_stage(snakemake.input.slices, snakemake.input.model, out.maps, out.gap_csv, out.gap_png,
               **snakemake.params.clustering)
