import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_csv_atomic, write_text_atomic
from srnet_core.evaluation import affine_choice, evaluate_failed_pair, evaluate_pair, execution_seconds
from srnet_core.h5io import read_prepared_attrs
from srnet_core.logs import logged
from srnet_core.outcome import failure_of


def one(files):
    """A named input that is one file or none."""
    return files if isinstance(files, str) else (files[0] if len(files) else "")


with logged(snakemake.log[0]) as log:
    p, i = snakemake.params, snakemake.input
    fixed, moving, timing = one(i.fixed), one(i.moving), list(i.timing)
    if p.pair["error"]:
        failure = {"reason": p.pair["error"], "stage": "dataset"}
    else:
        failure = failure_of(fixed, moving, *timing)
    if failure:
        errors, summary = evaluate_failed_pair(p.fixed_landmarks, p.moving_landmarks, p.fixed_header_size,
                                               p.table_diagonal, str(failure["reason"]), str(failure["stage"]))
        fixed_size = tuple(p.fixed_header_size) if p.fixed_header_size else (math.nan, math.nan)
        seconds = math.nan
        # the reason was reported where it was found (and is in the summary): not repeated on the console
        log.info("%s (%s): failed at %s; %s", snakemake.wildcards.pair_id, snakemake.wildcards.method,
                 failure["stage"], "scored with the initial error, robustness 0" if summary["scored"] else
                 "not scored: its landmarks or the fixed image's size cannot be read")
    else:
        attrs = read_prepared_attrs(fixed)
        fixed_size = (int(attrs["full_width"]), int(attrs["full_height"]))
        if abs(p.table_diagonal - math.hypot(*fixed_size)) > 0.01 * math.hypot(*fixed_size):
            log.warning("cover table says the fixed image's diagonal is %.1f px, the image has %.1f px; "
                        "rTRE uses the image", p.table_diagonal, math.hypot(*fixed_size))
        errors, summary = evaluate_pair(p.fixed_landmarks, p.warped_landmarks, fixed_size, p.missing_landmarks,
                                        p.moving_landmarks)
        seconds = execution_seconds(timing)
        summary.update(affine_choice(timing))
    summary = {"pair_id": snakemake.wildcards.pair_id, "method": snakemake.wildcards.method,
               **p.pair, "fixed_width": fixed_size[0],
               "fixed_height": fixed_size[1], "seconds": seconds, **summary}
    write_csv_atomic(snakemake.output.errors, errors)
    write_text_atomic(snakemake.output.summary, json.dumps(summary, indent=1, default=str))
    if not failure:
        log.info("%s", summary)
