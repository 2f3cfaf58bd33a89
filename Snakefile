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


rule all:
    default_target: True
    input:
        expand("results/{dataset}/tables/median_rtre.csv", dataset=config["run"]),
        all_submissions(),
        expand("results/{dataset}/tables/table2.md", dataset=config["brain"]["run"]),
        expand("results/{dataset}/segmentation/done.txt", dataset=config["run"])
        if config["segmentation"]["enabled"]
        else [],


rule brain:
    """Table 2 of every brain dataset in the config: `snakemake --cores N brain`."""
    input:
        expand("results/{dataset}/tables/table2.md", dataset=list(config["brain"]["datasets"])),
