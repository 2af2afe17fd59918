"""Rule extract_features: one shard of z (VAE latents) or c (caption embeddings), resumable."""

import torch

from brainldm.core.logs import setup_logging
from brainldm.core.settings import job_settings
from brainldm.features.extract import FeatureSettings, captions_by_nsd_id, extract_feature_shard
from brainldm.features.sd_model import load_stable_diffusion
from brainldm.features.store import needed_nsd_ids, shard_nsd_ids
from brainldm.nsd import layout as nsd
from brainldm.nsd.layout import stimulus_image_size

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    feature, shard = snakemake.wildcards.feature, int(snakemake.wildcards.shard)
    torch.set_num_threads(snakemake.threads)
    settings = FeatureSettings.from_config(job_settings(snakemake.config, "features", params.settings))
    design = nsd.read_expdesign(snakemake.input.expdesign)
    nsd_ids = needed_nsd_ids(design, params.subjects, params.sessions, params.trials_per_session)
    ids = shard_nsd_ids(nsd_ids, shard, settings.n_shards)
    log.info("%s shard %d/%d: %d of %d images", feature, shard, settings.n_shards, len(ids), len(nsd_ids))
    model = params.model
    wanted = ["vae"] if feature == "z" else ["text_encoder", "tokenizer"]
    components = load_stable_diffusion(
        model["id"], model["revision"], model["device"], model["dtype"], components=wanted
    )
    log.info("model: %s", components.describe())
    if feature == "z":
        stimuli, image_size = snakemake.input.stimuli, stimulus_image_size(snakemake.config)
        extract_feature_shard(
            "z",
            components,
            ids,
            snakemake.output.features,
            settings,
            read_images=lambda batch: nsd.read_stimuli(stimuli, batch, image_size=image_size),
        )
    else:
        stim_info = nsd.read_stim_info(snakemake.input.stim_info)
        coco = nsd.read_coco_captions(snakemake.input.captions)  # parsed once per job
        captions = captions_by_nsd_id(stim_info, coco, ids)
        extract_feature_shard("c", components, ids, snakemake.output.features, settings, captions=captions)
