"""Rule download_nsd_file: fetch one NSD key from nsd.base_url (resumable, verified)."""

import sys

from brainldm.core.logs import setup_logging
from brainldm.nsd.download import DownloadError, download_nsd_key

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    try:
        result = download_nsd_key(
            snakemake.params.base_url,
            snakemake.wildcards.key,
            snakemake.output[0],
            accept_terms=snakemake.params.accept_terms,
            progress=sys.stderr.isatty(),
        )
    except DownloadError as error:
        log.error("%s", error)
        raise
    log.info(
        "done: %d bytes, verified by %s, %d attempt(s), resumed from byte %d",
        result.size,
        result.verified,
        result.attempts,
        result.resumed_from,
    )
