"""Rule reconstruct_images: one shard of one subject's test images, every method and sample."""

from pathlib import Path

import torch

from brainldm.core.logs import setup_logging
from brainldm.features.sd_model import load_stable_diffusion
from brainldm.reconstruction import ReconstructionSettings, reconstruct_shard

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    model = snakemake.params.model
    components = load_stable_diffusion(model["id"], model["revision"], model["device"], model["dtype"])
    # params.settings holds the keys that change images (the rerun trigger); the speed options
    # come from the config itself
    settings = ReconstructionSettings.from_config(snakemake.config["reconstruction"])
    manifest = reconstruct_shard(
        components,
        settings,
        decoding_dir=Path(snakemake.input.z).parent,
        out_dir=snakemake.output.shard,
        shard=int(snakemake.wildcards.shard),
        n_shards=snakemake.params.n_shards,
    )
    log.info("wrote %d images into %s", len(manifest), snakemake.output.shard)
