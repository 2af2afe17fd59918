"""Rule merge_encoding_features: the shards into one array indexed by ascending nsdId."""

from pathlib import Path

import numpy as np

from brainldm.core.logs import setup_logging
from brainldm.features.store import merge_shards

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    out = merge_shards(
        "encoding",
        list(snakemake.input.features),
        Path(snakemake.output.features).parent,
        expected_nsd_ids=np.load(snakemake.input.z_ids),
    )
    log.info("merged %d shards into %s", len(snakemake.input.features), out)
