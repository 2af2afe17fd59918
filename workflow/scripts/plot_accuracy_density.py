"""Rule plot_accuracy_density: 2-D density of one subject's voxel r, z against c."""

from brainldm.core.logs import setup_logging
from brainldm.maps.figures import draw_accuracy_density

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    draw_accuracy_density(
        snakemake.input.x,
        snakemake.input.y,
        snakemake.output.figure,
        x_model="z",
        y_model="c",
        subject=snakemake.wildcards.subject,
        dpi=snakemake.params.dpi,
    )
