"""Rule view_surface: one subject's interactive surface page (nilearn view_surf, offline)."""

from brainldm.core.logs import setup_logging
from brainldm.maps.figures import write_viewer

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    write_viewer(
        dict(zip(params.names, snakemake.input.maps)),
        snakemake.output.page,
        viewer_map=params.viewer_map,
        subject=snakemake.wildcards.subject,
    )
