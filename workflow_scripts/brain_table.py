import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.brain.stages import table_stage
from srnet_core.logs import logged

with logged(snakemake.log[0]):
    p, out = snakemake.params, snakemake.output
    registrations = dict(zip(p.trained, snakemake.input.registrations))
    table_stage(snakemake.input.slices, registrations, list(p.methods), p.reference, p.figure_label,
                f"{snakemake.wildcards.dataset}: registration of brain slices (Table 2)", p.split, dict(out.items()))
