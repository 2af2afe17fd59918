"""Rule project_to_surface: one subject's encoding volumes on fsaverage (NSD's transforms)."""

import numpy as np

from brainldm.core.logs import setup_logging
from brainldm.maps.surface import project_volumes, transform_paths

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    subject = int(snakemake.wildcards.subject)
    with np.load(snakemake.input.voxels) as voxels:
        grid_shape = tuple(int(n) for n in voxels["shape"])
    project_volumes(
        dict(zip(params.names, snakemake.input.volumes)),
        dict(zip(params.names, snakemake.output.maps)),
        transform_paths(params.nsd_root, subject),
        grid_shape,
        interpolation=params.interpolation,
        label_maps=params.label_maps,
    )
