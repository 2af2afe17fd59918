"""Rule summarize_identification: every subject's identification table in one."""

from brainldm.core.logs import setup_logging
from brainldm.evaluation.identification import summarize_identification

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    summarize_identification(
        list(snakemake.input.tables), list(snakemake.params.subjects), snakemake.output.table
    )
    log.info("identification summary of %d subjects", len(snakemake.input.tables))
