# What every stage needs: the validated configuration, crash recovery, the run's subjects and
# sessions, NSD and COCO paths, wildcard constraints, the model's device, and the targets of
# rule all. Each stage's own paths and input functions live in its .smk file.
import os
import sys
from pathlib import Path

# The library lives beside the rule scripts; rules and helpers import it from the workflow tree.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from brainldm.core import names
from brainldm.core.config import (
    ConfigError,
    check_local_copies,
    is_toy,
    validate_config,
)
from brainldm.core.settings import ENCODING_NAME_KEYS, result_config, result_settings
from brainldm.core.recovery import clear_stale_lock, record_lock_owner
from brainldm.nsd import download as nsd_download
from brainldm.nsd import layout as nsd_layout

try:
    config.update(validate_config(config))
    check_local_copies(
        config, nsd_download.needed_keys(config), list(nsd_layout.COCO_CAPTION_FILES)
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None

# Crash recovery: a run killed with SIGKILL leaves Snakemake's lock behind; the onstart hook
# records which process holds it, and the next run removes it here (before Snakemake checks
# the lock) once that process is gone, so the same command resumes.
if workflow.is_main_process:
    _recovery_note = clear_stale_lock()
    if _recovery_note:
        print(_recovery_note, file=sys.stderr)

DATASET = config["dataset"]
SUBJECTS = [f"{subject:02d}" for subject in config["subjects"]]
# Subjects whose own jobs this run makes (config key run_subjects); SUBJECTS stays the analysed
# set, which the features and the summary tables follow.
RUN_SUBJECTS = [
    f"{subject:02d}" for subject in config["run_subjects"] or config["subjects"]
]
SESSIONS = list(range(config["sessions"]["first"], config["sessions"]["last"] + 1))
TOY = is_toy(config)
NSD_ROOT = config["nsd"]["root"] or "resources/nsd"
COCO_ROOT = config["coco"]["root"] or "resources/coco"


wildcard_constraints:
    subject=r"\d\d",
    session=r"\d\d",


def nsd_file(key):
    """Path of NSD ``key`` under the configured root (a local copy, the toy, or downloads)."""
    return f"{NSD_ROOT}/{key}"


def coco_file(name):
    """Path of a COCO annotation file (e.g. ``annotations/captions_train2017.json``)."""
    return f"{COCO_ROOT}/{name}"


def coco_caption_files():
    return [coco_file(name) for name in nsd_layout.COCO_CAPTION_FILES]


def trials_per_session():
    """Trials in each betas file: 750 in NSD, the toy's own number in the toy world."""
    return toy_params().trials_per_session if TOY else nsd_layout.TRIALS_PER_SESSION


def model_gpus():
    """gpu=1 for the jobs that run Stable Diffusion or the evaluation networks, unless
    model.device is cpu (``auto`` asks for a GPU: on a cluster the job lands on one; locally,
    resources are not enforced beyond the profile's limit of one GPU job)."""
    return 0 if config["model"]["device"] == "cpu" else 1


def model_threads():
    """CPU threads of those jobs: 1 on CPU (tiny models run fastest on one thread, and shards
    run side by side), 4 beside a GPU (image reading, resizing and writing)."""
    return 1 if config["model"]["device"] == "cpu" else 4


def summary_targets(*names):
    """The summary tables ``names`` over all analysed subjects, unless run_subjects selects only
    some of them: such a run leaves every summary as it is (the next full run updates it).
    """
    if RUN_SUBJECTS != SUBJECTS:
        return []
    return [f"results/{DATASET}/summary/{name}" for name in names]


def all_targets():
    """Final outputs of the whole graph for the configured dataset and subjects (each stage's
    targets function is in its .smk file)."""
    targets = []
    if TOY:
        targets += toy_world_files() + toy_attribute_targets()
    targets += download_targets()
    targets += fmri_targets()
    targets += decoding_targets() + reconstruction_targets() + evaluation_targets()
    targets += encoding_targets()
    if MAPS:
        targets += maps_targets()
    targets += report_targets()
    return targets


# Each stage's paths, input functions and settings, in pipeline order.
include: "helpers/toy.smk"
include: "helpers/download.smk"
include: "helpers/fmri.smk"
include: "helpers/features.smk"
include: "helpers/decoding.smk"
include: "helpers/reconstruction.smk"
include: "helpers/evaluation.smk"
include: "helpers/encoding.smk"
include: "helpers/maps.smk"
include: "helpers/report.smk"
