"""Rule map_encoding: one subject's voxel table, NIfTI volumes and per-ROI summary."""

from pathlib import Path

from brainldm.core.logs import setup_logging
from brainldm.encoding.fit import map_subject

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    inputs = snakemake.input
    atlases = {
        atlas: (volume, table)
        for atlas, volume, table in zip(snakemake.params.atlases, inputs.atlases, inputs.label_tables)
    }
    rows = map_subject(
        encoding_dir=Path(snakemake.output.voxels).parent,
        voxels_path=inputs.mask_voxels,
        atlases=atlases,
        encoding=snakemake.params.encoding,
        subject=int(snakemake.wildcards.subject),
        volumes_dir=Path(snakemake.output.volumes[0]).parent,
        table_path=snakemake.output.table,
    )
    log.info("wrote %d summary rows and %d volumes", len(rows), len(snakemake.output.volumes))
