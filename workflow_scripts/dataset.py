import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))
from srnet_core.atomic import write_csv_atomic
from srnet_core.datasets import images_of, read_cover_table, screen, select_tissues
from srnet_core.logs import logged

with logged(snakemake.log[0]) as log:
    p = snakemake.params
    pairs = select_tissues(read_cover_table(p.table, p.root, strip_prefix=p.strip_prefix), p.tissues, p.table)
    pairs, images = screen(pairs, images_of(pairs, p.root), p.missing_landmarks)
    write_csv_atomic(snakemake.output.pairs, pairs)
    write_csv_atomic(snakemake.output.images, images)
    log.info("%s: %d pairs (%s), %d images, %d pairs with bad input (scored as failed)", p.table, len(pairs),
             pairs["tissue"].value_counts().to_dict(), len(images), int((pairs["error"] != "").sum()))
