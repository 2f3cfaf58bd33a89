import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.prepare import prepare_image

with logged(snakemake.log[0]):
    p = snakemake.params
    prepare_image(p.path, snakemake.output.h5, preview=snakemake.output.preview, max_side=p.max_side, mpp=p.mpp,
                  min_tissue_fraction=p.min_tissue_fraction, tile_size=p.tile_size,
                  tile_min_tissue=p.tile_min_tissue, threads=snakemake.threads, error=p.error)
