import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.brain.stages import train_stage

with logged(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    train_stage(snakemake.input.slices, snakemake.input.get("maps") or None, snakemake.wildcards.method,
                dict(p.method), dict(p.train), dict(p.network), out.model, out.loss_csv, out.loss_png,
                p.checkpoint_dir)
