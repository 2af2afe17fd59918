"""Rule summarize_toy_attributes: every subject's attribute match table in one."""

from brainldm.core.logs import setup_logging
from brainldm.core.tables import summarize_tables
from brainldm.toy.semantic import MATCH_COLUMNS

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    summarize_tables(
        list(snakemake.input.tables), list(snakemake.params.subjects), MATCH_COLUMNS, snakemake.output.table
    )
    log.info("attribute match summary of %d subjects", len(snakemake.input.tables))
