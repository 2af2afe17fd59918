"""Rule summarize_fmri_qc: the per-subject fMRI QC tables in one summary table."""

from brainldm.core.logs import setup_logging
from brainldm.fmri.prepare import summarize_qc

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    rows = summarize_qc(list(snakemake.input.qc), snakemake.output.summary)
    log.info("fMRI QC summary: %d rows from %d subjects", len(rows), len(snakemake.input.qc))
