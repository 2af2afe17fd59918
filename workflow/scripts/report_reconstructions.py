"""Rule report_reconstructions: a subject's reconstruction figure, copied for the report."""

import shutil

from brainldm.core.atomic import atomic_path
from brainldm.core.logs import setup_logging

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    with atomic_path(snakemake.output.figure) as tmp:
        shutil.copyfile(snakemake.input.figure, tmp)
    log.info("copied %s", snakemake.input.figure)
