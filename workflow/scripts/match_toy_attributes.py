"""Rule match_toy_attributes: how often reconstructions show the seen toy image's attributes."""

import json
from pathlib import Path

import numpy as np
import torch

from brainldm.core.atomic import write_text
from brainldm.core.logs import setup_logging
from brainldm.core.tables import format_rows
from brainldm.nsd.layout import read_stimuli, stimulus_image_size
from brainldm.reconstruction.outputs import read_manifests
from brainldm.reconstruction.sampler import ReconstructionSettings
from brainldm.toy.semantic import MATCH_COLUMNS, load_semantic_net, match_reconstructions

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    files = read_manifests([Path(shard) / "manifest.tsv" for shard in snakemake.input.shards])
    test_ids = np.load(snakemake.input.test_ids)
    attributes = json.loads(Path(snakemake.input.attributes).read_text())
    settings = ReconstructionSettings.from_config(snakemake.params.settings)
    rows = match_reconstructions(
        load_semantic_net(Path(snakemake.input.weights[0]).parent),
        [attributes[int(n)] for n in test_ids],
        read_stimuli(snakemake.input.stimuli, test_ids, image_size=stimulus_image_size(snakemake.config)),
        test_ids,
        files,
        settings.methods,
        {method: settings.samples_of(method) for method in settings.methods},
    )
    for row in rows:
        log.info(
            "%s %s: match %.3f (chance %.3f)", row["method"], row["attribute"], row["match"], row["chance"]
        )
    write_text(snakemake.output.table, format_rows(rows, MATCH_COLUMNS))
