import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_text_atomic
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    write_text_atomic(snakemake.output[0], "".join(f"{p}\n" for p in snakemake.input))
    log.info("%d segmentation maps", len(snakemake.input))
