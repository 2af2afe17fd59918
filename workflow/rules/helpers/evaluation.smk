# Paths, input functions and settings of workflow/rules/evaluation.smk (helpers: no rules here).
from brainldm.evaluation.evaluate import registry_extractor_names

if (
    TOY
):  # the toy world's own identification features (production code does not know them)
    from brainldm.toy.extractors import register_toy_extractors

    register_toy_extractors()

try:  # two-way:<extractor> metrics must name a registry extractor: stop before any job if not
    registry_extractor_names(config["evaluation"]["metrics"])
except ValueError as error:
    raise WorkflowError(str(error)) from None

# What identify_reconstructions' tables depend on (the metrics' keys change only the metrics).
IDENTIFICATION_KEYS = ("identification_features", "clip_model", "network_dtype")


def evaluation_dir(subject="{subject}"):
    return f"results/{DATASET}/subj{subject}/evaluation"


def evaluation_targets():
    targets = summary_targets(
        "identification.tsv", "metrics.tsv", "metrics_comparison.tsv"
    )
    for subject in RUN_SUBJECTS:
        targets += [
            f"{evaluation_dir(subject)}/{name}.tsv"
            for name in ("identification", "metrics")
        ]
    return targets
