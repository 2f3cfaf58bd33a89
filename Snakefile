# srnet: SR-Net registration of histology slide pairs. See README.md for the stages and config keys.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# srnet_core is imported from this checkout, so `--use-conda` runs need nothing installed outside the envs.
sys.path.insert(0, workflow.basedir)


configfile: os.path.join(workflow.basedir, "config.yaml")


report: "report/workflow.rst"


# One path component each: results/{dataset}/registration/{method}/{pair_id}/... must never be read as a
# dataset named "demo/registration".
wildcard_constraints:
    dataset="[^/]+",
    method="[^/]+",
    pair_id="[^/]+",
    image_id="[^/]+",


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/prepare.smk"
include: "rules/features.smk"
include: "rules/cluster.smk"
include: "rules/register.smk"
include: "rules/evaluate.smk"
include: "rules/aggregate.smk"
include: "rules/brain.smk"


# On a cluster these run in the Snakemake process itself (the login node), not as batch jobs: each
# takes a second or two, so a job's submission, start and status polls would cost more than its work
# (ANHIR's evaluation alone is 481 pairs x 6 methods), and compute nodes often cannot reach the
# internet that `download` needs. `local-cores` in profiles/slurm bounds what they use there.
localrules:
    all,
    brain,
    demo_dataset,
    download,
    dataset,
    segmentation_done,
    evaluate,
    tables,
    check_pairs,
    submission,


rule all:
    default_target: True
    input:
        expand("results/{dataset}/tables/median_rtre.csv", dataset=config["run"]),
        expand("results/{dataset}/tables/check_pairs.txt", dataset=config["run"]),
        all_submissions(),
        expand("results/{dataset}/tables/table2.md", dataset=config["brain"]["run"]),
        expand("results/{dataset}/segmentation/done.txt", dataset=config["run"])
        if config["segmentation"]["enabled"]
        else [],


rule brain:
    """Table 2 of every brain dataset in the config: `snakemake --cores N brain`."""
    input:
        expand("results/{dataset}/tables/table2.md", dataset=list(config["brain"]["datasets"])),
