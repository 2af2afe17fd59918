# Paths, input functions and settings of workflow/rules/toy.smk (helpers: no rules here).
from brainldm.toy.world import ATTRIBUTES_KEY as TOY_ATTRIBUTES_KEY
from brainldm.toy.world import ToyParams, toy_nsd_keys

# Rule make_toy_model (features.smk) writes the toy Stable Diffusion here (config/toy.yaml's model.id).
TOY_MODEL_DIR = "resources/toy/model"
# The trained toy weights that ship with the workflow (brainldm.toy.training writes them);
# relative to the working directory, which --directory may put outside the workflow.
TOY_WEIGHTS_DIR = os.path.relpath(Path(workflow.basedir) / "workflow" / "toy_model")


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


def toy_weight_files():
    """The shipped toy weights folder's manifest and files (inputs of make_toy_model)."""
    from brainldm.toy.weights import MANIFEST, WEIGHT_FILES

    return [f"{TOY_WEIGHTS_DIR}/{MANIFEST}"] + [
        f"{TOY_WEIGHTS_DIR}/{name}" for name in WEIGHT_FILES.values()
    ]


def toy_attribute_targets():
    """On the toy world: the per-subject attribute match tables and their summary."""
    if not TOY:
        return []
    targets = summary_targets("attributes.tsv")
    targets += [f"{evaluation_dir(subject)}/attributes.tsv" for subject in RUN_SUBJECTS]
    return targets
