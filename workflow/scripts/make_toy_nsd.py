"""Rule make_toy_nsd: write the toy world (NSD layout, formats and planted truth)."""

from brainldm.core.logs import setup_logging
from brainldm.nsd import layout as nsd
from brainldm.toy.world import ToyParams, write_toy_world

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = ToyParams.from_config(snakemake.params.toy)
    nsd_root = nsd.root_of(snakemake.output.expdesign, nsd.expdesign_key())
    coco_root = nsd.root_of(snakemake.output.captions, nsd.COCO_CAPTION_FILES[0])
    log.info("writing the toy world %s to %s and %s", params, nsd_root, coco_root)
    write_toy_world(nsd_root, coco_root, params)
    log.info("done: %d files", len(snakemake.output))
