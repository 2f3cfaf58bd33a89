import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.demo import make_demo_dataset
from srnet_core.logs import logged

with logged(snakemake.log[0]):
    make_demo_dataset(Path(snakemake.output[0]).parent, seed=snakemake.params.seed)
