"""Rule fit_encoding_model: one subject's encoding model (single space or banded joint)."""

from pathlib import Path

from brainldm.encoding import EncodingSettings, encode_model
from brainldm.logs import setup_logging

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    encode_model(
        fmri_dir=Path(snakemake.input.train_trials).parent,
        features_dir=Path(snakemake.input.features[0]).parent,
        encoding_features_dir=Path(snakemake.params.encoding_features_dir),
        model=snakemake.wildcards.model,
        out_path=snakemake.output.scores,
        settings=EncodingSettings.from_config(snakemake.params.encoding),
    )
