"""Rule prepare_fmri: one subject's betas to ROI matrices of the paper's split (streamed)."""

from pathlib import Path

from brainldm.core.logs import setup_logging
from brainldm.fmri.prepare import prepare_subject

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    prepare_subject(
        Path(snakemake.output.qc).parent,
        subject=int(snakemake.wildcards.subject),
        sessions=params.sessions,
        betas_paths=list(snakemake.input.betas),
        expdesign_path=snakemake.input.expdesign,
        atlas_paths=dict(zip(params.atlases, snakemake.input.atlases)),
        label_table_paths=dict(zip(params.labelled_atlases, snakemake.input.label_tables)),
        brainmask_path=snakemake.input.brainmask,
        rois=params.rois,
        value_scaling=params.value_scaling,
        trials_per_session=params.trials_per_session,
        workers=snakemake.threads,
    )
