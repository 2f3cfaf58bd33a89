import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.record import failure_recorded
from srnet_core.prepare import header_attrs, prepare_image

with logged(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    # a bad image (truncated pixel data, no tissue, ...) becomes this image's recorded outcome
    with failure_recorded([out.h5, out.preview], "prepare", attrs=lambda: header_attrs(p.path)):
        prepare_image(p.path, out.h5, preview=out.preview, max_side=p.max_side, mpp=p.mpp,
                      min_tissue_fraction=p.min_tissue_fraction, tile_size=p.tile_size,
                      tile_min_tissue=p.tile_min_tissue, threads=snakemake.threads, error=p.error)
