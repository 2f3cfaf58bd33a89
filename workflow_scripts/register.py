import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.errors import InputError
from srnet_core.logs import logged
from srnet_core.registration.stages import register_stage

with logged(snakemake.log[0]):
    i, p, out = snakemake.input, snakemake.params, snakemake.output
    if p.error:
        raise InputError(p.moving_landmarks or i.moving, p.error)
    register_stage(fixed_prepared=i.fixed, moving_prepared=i.moving, affine=i.affine,
                   pair_id=snakemake.wildcards.pair_id, method_name=snakemake.wildcards.method,
                   out_field=out.field, out_landmarks=out.landmarks, out_overlay=out.overlay, out_timing=out.timing,
                   model=i.get("model"), method=p.method, codebook=i.get("codebook"), fixed_seg=i.get("fixed_seg"),
                   moving_seg=i.get("moving_seg"), moving_landmarks=p.moving_landmarks,
                   missing_landmarks=p.missing_landmarks, downsample=p.downsample,
                   **(p.infer or {}))     # instance_steps, _lr, _lambda_smooth, _levels (None: affine)
