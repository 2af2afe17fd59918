# Helpers shared by every stage: configuration, NSD and COCO paths, targets.
import sys
from pathlib import Path

# The library lives beside the rule scripts; rules and helpers import it from the workflow tree.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from brainldm import nsd as nsd_layout
from brainldm.config import ConfigError, is_toy, validate_config
from brainldm.toy_world import ToyParams, toy_nsd_keys

try:
    config.update(validate_config(config))
except ConfigError as error:
    raise WorkflowError(str(error)) from None

DATASET = config["dataset"]
SUBJECTS = [f"{subject:02d}" for subject in config["subjects"]]
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


def toy_params():
    return ToyParams.from_config(config["toy"])


def toy_world_files(exclude_anchors=False):
    """Every file the toy world rule writes (NSD keys and COCO captions).

    ``exclude_anchors`` leaves out the two files that rule make_toy_nsd names on their own (the
    expdesign and the train captions), from which its script finds the NSD and COCO roots.
    """
    files = [nsd_file(key) for key in toy_nsd_keys(toy_params())] + coco_caption_files()
    if exclude_anchors:
        anchors = {nsd_file(nsd_layout.expdesign_key()), coco_caption_files()[0]}
        files = [path for path in files if path not in anchors]
    return files


def all_targets():
    """Final outputs of the whole graph for the configured dataset and subjects."""
    targets = []
    if TOY:
        targets += toy_world_files()
    return targets
