"""Rule summarize_metrics: every subject's metrics in one table, and beside the published rows."""

from brainldm.core.logs import setup_logging
from brainldm.evaluation.evaluate import summarize_metrics

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    summarize_metrics(
        list(snakemake.input.tables),
        list(snakemake.params.subjects),
        snakemake.output.table,
        snakemake.output.comparison,
    )
    log.info("metric summary of %d subjects", len(snakemake.input.tables))
