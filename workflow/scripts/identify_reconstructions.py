"""Rule identify_reconstructions: paper and two-way identification of one subject's images."""

from pathlib import Path

import numpy as np
import torch

from brainldm.atomic import write_text
from brainldm.identification import IDENTIFICATION_COLUMNS, format_rows, identify_reconstructions
from brainldm.logs import setup_logging
from brainldm.nsd import read_stimuli
from brainldm.reconstruction import ReconstructionSettings, read_manifests

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    files = read_manifests([Path(shard) / "manifest.tsv" for shard in snakemake.input.shards])
    test_ids = np.load(snakemake.input.test_ids)
    settings = ReconstructionSettings.from_config(params.settings)
    rows = identify_reconstructions(
        read_stimuli(snakemake.input.stimuli, test_ids),
        test_ids,
        files,
        settings.methods,
        {method: settings.samples_of(method) for method in settings.methods},
        params.features,
        clip_model=params.clip_model,
        device=None if params.device == "auto" else params.device,
    )
    write_text(snakemake.output.table, format_rows(rows, IDENTIFICATION_COLUMNS))
