"""Rule extract_encoding_features: one shard of zc (per noise level) and pooled U-Net features."""

from pathlib import Path

import numpy as np
import torch

from brainldm.core.logs import setup_logging
from brainldm.features.ldm_parts import EncodingFeatureSettings, extract_encoding_shard
from brainldm.features.sd_model import load_stable_diffusion
from brainldm.features.store import shard_nsd_ids

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    shard = int(snakemake.wildcards.shard)
    torch.set_num_threads(snakemake.threads)
    settings = EncodingFeatureSettings.from_config(params.encoding, params.sampler)
    nsd_ids = np.load(snakemake.input.z_ids)
    ids = shard_nsd_ids(nsd_ids, shard, params.encoding["n_shards"])
    log.info(
        "encoding features shard %d/%d: %d of %d images; spaces %s",
        shard,
        params.encoding["n_shards"],
        len(ids),
        len(nsd_ids),
        settings.spaces(),
    )
    model = params.model
    components = load_stable_diffusion(
        model["id"],
        model["revision"],
        model["device"],
        model["dtype"],
        components=["text_encoder", "tokenizer", "unet", "scheduler"],
    )
    log.info("model: %s", components.describe())
    extract_encoding_shard(
        components,
        settings,
        Path(snakemake.input.z).parent,
        ids,
        snakemake.output.features,
        batch_size=snakemake.config["encoding"]["batch_size"],  # result-neutral: not a param
    )
