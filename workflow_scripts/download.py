import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.download import fetch
from srnet_core.logs import logged

with logged(snakemake.log[0]):
    entry = snakemake.params.entry
    fetch(entry["url"], snakemake.output[0], entry["sha256"],
          timeout=snakemake.params.timeout, retries=snakemake.params.retries)
