"""Rule evaluate_reconstructions: the field's metrics of one subject's reconstructions."""

import torch

from brainldm.core.atomic import write_text
from brainldm.core.dataset import is_toy
from brainldm.core.logs import setup_logging
from brainldm.core.settings import job_settings
from brainldm.core.tables import format_rows
from brainldm.evaluation.batches import job_options
from brainldm.evaluation.evaluate import METRIC_COLUMNS, evaluate_reconstructions
from brainldm.evaluation.identification import read_subject_reconstructions
from brainldm.nsd.layout import stimulus_image_size
from brainldm.toy.extractors import register_toy_extractors

if "snakemake" in globals():
    log = setup_logging(snakemake.log[0])
    if is_toy(snakemake.config):
        register_toy_extractors()
    torch.set_num_threads(snakemake.threads)
    params = snakemake.params
    evaluation = job_settings(snakemake.config, "evaluation", params.evaluation)
    rows = evaluate_reconstructions(
        *read_subject_reconstructions(
            snakemake.input.shards,
            snakemake.input.test_ids,
            snakemake.input.stimuli,
            params.settings,
            image_size=stimulus_image_size(snakemake.config),
        ),
        evaluation["metrics"],
        protocol=evaluation["protocol"],
        samples=evaluation["samples"],
        **job_options(evaluation, params.device, snakemake.threads),
        swav_hub_dir=evaluation["swav_hub_dir"],
    )
    write_text(snakemake.output.table, format_rows(rows, METRIC_COLUMNS))
