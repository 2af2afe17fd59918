"""Rule merge_features: shards of one feature into one array indexed by ascending nsdId."""

from pathlib import Path

from brainldm.core.logs import setup_logging
from brainldm.features.store import merge_shards, needed_nsd_ids
from brainldm.nsd import layout as nsd

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    design = nsd.read_expdesign(snakemake.input.expdesign)
    expected = needed_nsd_ids(design, params.subjects, params.sessions, params.trials_per_session)
    out = merge_shards(
        snakemake.wildcards.feature,
        list(snakemake.input.features),
        Path(snakemake.output.features).parent,
        expected_nsd_ids=expected,
        record={"subjects": list(params.subjects), "sessions": list(params.sessions)},
    )
    log.info("merged %d shards into %s", len(snakemake.input.features), out)
