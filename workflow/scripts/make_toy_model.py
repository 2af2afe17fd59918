"""Rule make_toy_model: a tiny Stable Diffusion (diffusers format) fitted to the toy stimuli."""

import numpy as np

from brainldm import nsd
from brainldm.logs import setup_logging
from brainldm.toy_model import build_toy_model

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    design = nsd.read_expdesign(snakemake.input.expdesign)
    stim_info = nsd.read_stim_info(snakemake.input.stim_info)
    all_ids = np.sort(stim_info["nsdId"]).astype(np.int64)
    # Fit the VAE on the images no subject is tested on (SD's VAE never saw the test images);
    # the record then holds its PixCorr on the held-out shared images.
    holdout = np.intersect1d(all_ids, design.shared_nsd_ids())
    captions = nsd.captions_for(stim_info, nsd.read_coco_captions(snakemake.input.captions), all_ids)
    images = nsd.read_stimuli(snakemake.input.stimuli, all_ids)
    record = build_toy_model(
        snakemake.output.model,
        images,
        captions,
        seed=params.seed,
        fit_steps=params.fit_steps,
        threads=snakemake.threads,
        holdout=np.isin(all_ids, holdout),
    )
    log.info("toy model written to %s: %s", snakemake.output.model, record)
