"""Rule download_coco_annotations: fetch COCO's annotations zip, keep only the caption files."""

import sys

from brainldm.core.logs import setup_logging
from brainldm.nsd import layout as nsd
from brainldm.nsd.download import DownloadError, download_coco_captions

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    coco_root = nsd.root_of(snakemake.output.train, nsd.COCO_CAPTION_FILES[0])
    try:
        written = download_coco_captions(snakemake.params.url, coco_root, progress=sys.stderr.isatty())
    except DownloadError as error:
        log.error("%s", error)
        raise
    log.info("done: %s", ", ".join(map(str, written)))
