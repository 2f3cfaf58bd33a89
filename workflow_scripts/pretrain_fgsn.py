import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.logs import logged
from srnet_core.segmentation.feature_stages import pretrain_stage

with logged(snakemake.log[0]):
    pre, fgsn = dict(snakemake.params.pretrain), snakemake.params.fgsn
    pretrain_stage(list(snakemake.input.prepared), snakemake.output.model, snakemake.output.loss,
                   mode=pre.pop("mode"), glas_root=pre.pop("glas_root"), pseudo_classes=pre.pop("pseudo_classes"),
                   base_channels=fgsn["base_channels"], feature_channels=fgsn["feature_channels"],
                   feature_stride=snakemake.params.stride, settings=pre)
