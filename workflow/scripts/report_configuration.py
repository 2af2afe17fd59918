"""Rule report_configuration: the run's configuration and its departures from the paper."""

import yaml

from brainldm.core.logs import setup_logging
from brainldm.report import write_config_page

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    params = snakemake.params
    with open(params.schema) as handle:
        schema = yaml.safe_load(handle)
    rows = write_config_page(snakemake.output.page, params.config, schema, dataset=params.dataset)
    log.info("configuration page: %d values differ from the paper's defaults", len(rows))
