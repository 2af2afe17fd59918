# brainldm: Takagi & Nishimoto (CVPR 2023) on NSD as a Snakemake workflow.
#   snakemake --cores N                                 the paper (config/config.yaml)
#   snakemake --cores 2 --configfile config/toy.yaml    the embedded toy world, offline
#   snakemake --cores N --config subjects=[1]           one subject
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/fmri.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/decoding.smk"
include: "workflow/rules/reconstruction.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/encoding.smk"
include: "workflow/rules/maps.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
