"""Rules fit_encoding_model and fit_encoding_models: one subject's encoding models (params.models),
one job per model or one for all of them (encoding.jobs)."""

from pathlib import Path

from brainldm.core.logs import setup_logging
from brainldm.core.settings import job_settings
from brainldm.encoding.fit import EncodingSettings, encode_models
from brainldm.linear.ops import blas_threads

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    # BLAS may use only the threads the job reserved: jobs side by side must not oversubscribe.
    with blas_threads(snakemake.threads):
        encode_models(
            fmri_dir=Path(snakemake.input.train_trials).parent,
            features_dir=Path(snakemake.params.features_dir),
            encoding_features_dir=Path(snakemake.params.encoding_features_dir),
            models=snakemake.params.models,
            out_paths=list(snakemake.output),  # the rules' only outputs: one npz per model
            settings=EncodingSettings.from_config(
                job_settings(snakemake.config, "encoding", snakemake.params.encoding)
            ),
        )
