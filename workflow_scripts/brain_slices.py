import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.brain.slices import SliceSettings, make_slices, preview, read_volume, write_slices

with logged(snakemake.log[0]):
    volumes = [read_volume(v["image"], v.get("labels")) for v in snakemake.params.volumes]
    slices = make_slices(volumes, SliceSettings(**snakemake.params.settings))
    write_slices(snakemake.output.slices, slices)
    preview(slices, snakemake.output.preview)
