"""Rule plot_cortical_maps: one subject's map figures on fsaverage5 (flat and inflated views)."""

from brainldm.core.logs import setup_logging
from brainldm.maps.figures import draw_cortical_maps

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    draw_cortical_maps(
        dict(zip(params.names, snakemake.input.maps)),
        snakemake.input.block_names,
        params.encoding,
        dict(zip(params.figures, snakemake.output.figures)),
        subject=snakemake.wildcards.subject,
        dpi=params.dpi,
    )
