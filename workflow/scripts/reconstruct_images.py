"""Rule reconstruct_images: one shard of one subject's test images, every method and sample."""

from pathlib import Path

import torch

from brainldm.core.logs import setup_logging
from brainldm.core.settings import job_settings
from brainldm.features.sd_model import load_stable_diffusion
from brainldm.reconstruction.sampler import ReconstructionSettings
from brainldm.reconstruction.shards import reconstruct_shard

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    model = snakemake.params.model
    components = load_stable_diffusion(model["id"], model["revision"], model["device"], model["dtype"])
    manifest = reconstruct_shard(
        components,
        ReconstructionSettings.from_config(
            job_settings(snakemake.config, "reconstruction", snakemake.params.settings)
        ),
        decoding_dir=Path(snakemake.input.z).parent,
        out_dir=snakemake.output.shard,
        shard=int(snakemake.wildcards.shard),
        n_shards=snakemake.params.n_shards,
    )
    log.info("wrote %d images into %s", len(manifest), snakemake.output.shard)
