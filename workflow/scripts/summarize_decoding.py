"""Rule summarize_decoding: every (subject, feature) decoder summary in one table."""

from brainldm.core.logs import setup_logging
from brainldm.decoding import summarize_decoding

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    summarize_decoding(
        list(snakemake.input.summaries), list(snakemake.params.subjects), snakemake.output.table
    )
    log.info("decoding summary of %d decoders", len(snakemake.input.summaries))
