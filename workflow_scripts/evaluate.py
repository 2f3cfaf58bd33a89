import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_csv_atomic, write_text_atomic
from srnet_core.errors import InputError
from srnet_core.evaluation import evaluate_pair, execution_seconds
from srnet_core.h5io import read_prepared_attrs
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    if p.pair["error"]:
        raise InputError(p.warped_landmarks, p.pair["error"])
    attrs = read_prepared_attrs(snakemake.input.fixed)
    fixed_size = (int(attrs["full_width"]), int(attrs["full_height"]))
    if abs(p.table_diagonal - math.hypot(*fixed_size)) > 0.01 * math.hypot(*fixed_size):
        log.warning("cover table says the fixed image's diagonal is %.1f px, the image has %.1f px; "
                    "rTRE uses the image", p.table_diagonal, math.hypot(*fixed_size))
    errors, summary = evaluate_pair(p.fixed_landmarks, p.warped_landmarks, fixed_size, p.missing_landmarks,
                                    p.moving_landmarks)
    summary = {"pair_id": snakemake.wildcards.pair_id, "method": snakemake.wildcards.method,
               **p.pair, "fixed_width": fixed_size[0], "fixed_height": fixed_size[1],
               "seconds": execution_seconds(list(snakemake.input.timing)), **summary}
    write_csv_atomic(snakemake.output.errors, errors)
    write_text_atomic(snakemake.output.summary, json.dumps(summary, indent=1, default=str))
    log.info("%s", summary)
