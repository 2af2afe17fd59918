"""Rule summarize_encoding: every subject's per-ROI encoding table in one TSV."""

from brainldm.core.logs import setup_logging
from brainldm.encoding.fit import summarize_encoding

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    summarize_encoding(list(snakemake.input.tables), snakemake.output.table)
    log.info("summarised %d subjects into %s", len(snakemake.input.tables), snakemake.output.table)
