import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
import torch

from srnet_core.logs import logged
from srnet_core.segmentation.feature_stages import extract_stage

with logged(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    f = snakemake.params.features
    extract_stage(snakemake.input.prepared, snakemake.input.model, snakemake.output[0],
                  snakemake.wildcards.image_id, tile=f["tile"], margin=f["margin"],
                  feature_stride=f["stride"], smooth_sigma=f["smooth_sigma"])
