"""Rule fit_decoder: one subject's ridge decoder of one feature (z or c)."""

from pathlib import Path

from brainldm.core.logs import setup_logging
from brainldm.core.settings import job_settings
from brainldm.decoding import decode_feature
from brainldm.linear.ops import blas_threads

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    settings = job_settings(snakemake.config, "decoding", snakemake.params.settings)
    # BLAS may use only the threads the job reserved: jobs side by side must not oversubscribe.
    with blas_threads(snakemake.threads):
        decode_feature(
            fmri_dir=Path(snakemake.input.train_trials).parent,
            features_dir=Path(snakemake.input.features).parent,
            feature=snakemake.wildcards.feature,
            rois=list(snakemake.params.rois),
            out_dir=Path(snakemake.output.summary).parent,
            alphas=settings["alphas"],
            n_folds=settings["n_folds"],
            center_targets=settings["center_targets"],
            backend=settings["backend"],
            n_targets_batch=settings["n_targets_batch"],
            solver=settings["solver"],
            shuffle_control=settings["shuffle_control"],
            seed=int(snakemake.wildcards.subject),
        )
