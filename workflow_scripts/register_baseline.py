import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.errors import InputError
from srnet_core.logs import logged
from srnet_core.record import pass_on
from srnet_core.registration.baselines import baseline_register_stage

with logged(snakemake.log[0]):
    i, p, out = snakemake.input, snakemake.params, snakemake.output
    if p.error:
        raise InputError(p.moving_landmarks or i.moving, p.error)
    if not pass_on([i.fixed, i.moving, i.affine], list(out), snakemake.wildcards.method):
        baseline_register_stage(fixed_prepared=i.fixed, moving_prepared=i.moving, affine=i.affine,
                                pair_id=snakemake.wildcards.pair_id, method_name=snakemake.wildcards.method,
                                settings=p.settings, out_field=out.field, out_landmarks=out.landmarks,
                                out_overlay=out.overlay, out_timing=out.timing, moving_landmarks=p.moving_landmarks,
                                missing_landmarks=p.missing_landmarks, threads=snakemake.threads)
