"""Rule plot_reconstructions: originals beside z, c and zc for a fixed set of test images."""

from pathlib import Path

import numpy as np

from brainldm.core.logs import setup_logging
from brainldm.nsd.layout import read_stimuli, stimulus_image_size
from brainldm.reconstruction.outputs import figure_rows, plot_reconstructions, read_manifests

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    files = read_manifests([Path(shard) / "manifest.tsv" for shard in snakemake.input.shards])
    test_ids = np.load(snakemake.input.test_ids)
    ids = test_ids[figure_rows(len(test_ids), snakemake.params.n_images)]
    plot_reconstructions(
        read_stimuli(snakemake.input.stimuli, ids, image_size=stimulus_image_size(snakemake.config)),
        ids,
        files,
        snakemake.params.methods,
        snakemake.output.figure,
        title=f"subject {int(snakemake.wildcards.subject)}: original and first sample of each method",
    )
    log.info("figure of %d test images: %s", len(ids), snakemake.output.figure)
