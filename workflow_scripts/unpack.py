import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.download import unpack
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    names = unpack(snakemake.input[0], Path(snakemake.input[0]).parent)
    log.info("unpacked %d members of %s", len(names), snakemake.input[0])
