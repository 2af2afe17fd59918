"""Rule make_toy_model: the toy Stable Diffusion (diffusers format) from the shipped trained weights."""

from pathlib import Path

from brainldm.core.logs import setup_logging
from brainldm.toy.model import assemble_toy_model

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    weights_dir = Path(snakemake.input.weights[0]).parent
    record = assemble_toy_model(snakemake.output.model, weights_dir)
    log.info(
        "toy model assembled in %s from %s (trained by: %s)",
        snakemake.output.model,
        weights_dir,
        record["weights"]["command"],
    )
