"""Rule report_table: one summary TSV as an HTML table for the report."""

from brainldm.core.logs import setup_logging
from brainldm.report import write_table_page

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    rows = write_table_page(
        snakemake.input.table, snakemake.output.page, title=f"summary: {snakemake.wildcards.table}"
    )
    log.info("%s: %d rows", snakemake.input.table, rows)
