# Helpers shared by every stage: configuration, NSD and COCO paths, targets.
import os
import sys
from pathlib import Path

# The library lives beside the rule scripts; rules and helpers import it from the workflow tree.
sys.path.insert(0, str(Path(workflow.basedir) / "workflow" / "scripts"))

from brainldm.nsd import download as nsd_download
from brainldm.maps import figures as map_specs
from brainldm.nsd import layout as nsd_layout
from brainldm.fmri.prepare import output_names as fmri_output_names
from brainldm.core.config import (
    ConfigError,
    check_local_copies,
    is_toy,
    validate_config,
)
from brainldm.core.recovery import clear_stale_lock, record_lock_owner
from brainldm.toy.world import (
    ATTRIBUTES_KEY as TOY_ATTRIBUTES_KEY,
    ToyParams,
    toy_nsd_keys,
)

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
# Downloads (workflow/rules/download.smk) land here when nsd.root / coco.root are null.
NSD_DOWNLOAD_DIR = "resources/nsd"
COCO_DOWNLOAD_DIR = "resources/coco"
# Keys that download_nsd_file may fetch (NSD's three top-level folders, nothing else).
NSD_KEY_PATTERN = r"nsddata(?:_betas|_stimuli)?/[^\s*?]+"


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


# --------------------------------------------------------------------------- downloads


def download_targets():
    """Files the download rules fetch for this config.

    Every NSD key the configured subjects, sessions, beta format and ROIs need (plus design,
    stim info and the stimulus brick) under ``resources/nsd`` when ``nsd.root`` is null, and the
    two COCO caption files under ``resources/coco`` when ``coco.root`` is null.
    """
    files = []
    if config["nsd"]["root"] is None:
        files += [
            f"{NSD_DOWNLOAD_DIR}/{key}" for key in nsd_download.needed_keys(config)
        ]
    if config["coco"]["root"] is None:
        files += [
            f"{COCO_DOWNLOAD_DIR}/{name}" for name in nsd_layout.COCO_CAPTION_FILES
        ]
    return files


def missing_nsd_downloads():
    """Needed NSD keys not yet in ``resources/nsd`` (empty when ``nsd.root`` is set)."""
    if config["nsd"]["root"] is not None:
        return []
    return [
        key
        for key in nsd_download.needed_keys(config)
        if not Path(NSD_DOWNLOAD_DIR, key).exists()
    ]


def announce_downloads():
    """At parse time (main process only, no network): what is missing, roughly how big.

    Shown by dry runs too, with a note when the terms gate would stop a real run.
    """
    if not workflow.is_main_process:
        return
    keys = missing_nsd_downloads()
    if not keys:
        return
    plan = nsd_download.plan_downloads(
        config["nsd"]["base_url"], keys, online=False, show=False
    )
    print(f"NSD {plan.summary()}", file=sys.stderr)
    if not config["nsd"]["accept_terms"]:
        print(
            "NSD terms: nsd.accept_terms is false, so a real run stops before any job; a dry run "
            f"(-n) only plans. Terms and data access form: {nsd_download.NSD_TERMS_URL}",
            file=sys.stderr,
        )


def scheduled_nsd_downloads():
    """NSD keys that rule download_nsd_file fetches in this run (the jobs Snakemake will run)."""
    return sorted(
        dict(job.wildcards)["key"]
        for job in workflow.dag.needrun_jobs()
        if job.rule.name == "download_nsd_file"
    )


def check_downloads_before_run():
    """The onstart hook: terms gate, then the plan from HEAD requests, before any job runs.

    Snakemake runs onstart after building the DAG and before scheduling, and never in a dry run
    (``-n``) nor inside spawned jobs, so a dry run plans with no network and no terms, while a
    real run that would download NSD files stops here unless ``nsd.accept_terms`` is true.
    Raises WorkflowError also when a needed key is not on the server, or when the exact sizes
    (HEAD) exceed the free disk space.
    """
    import shutil

    from snakemake.logging import logger

    from brainldm.core.atomic import write_text

    keys = scheduled_nsd_downloads()
    if not keys:
        return
    if not config["nsd"]["accept_terms"]:
        raise WorkflowError(nsd_download.terms_message(len(keys)))
    plan = nsd_download.plan_downloads(
        config["nsd"]["base_url"], keys, online=True, show=False
    )
    logger.info(plan.summary())
    write_text("logs/download/nsd_plan.tsv", plan.to_tsv())
    if plan.missing:
        lines = "\n".join(f"  {entry.key}: {entry.note}" for entry in plan.missing)
        raise WorkflowError(
            f"{len(plan.missing)} needed NSD files are not on {config['nsd']['base_url']}:\n{lines}"
        )
    folder = Path(NSD_DOWNLOAD_DIR)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if plan.total_bytes > free:
        message = (
            f"the planned NSD downloads need {nsd_download.format_bytes(plan.total_bytes)} but "
            f"only {nsd_download.format_bytes(free)} are free in {folder.resolve()}"
        )
        if plan.exact:
            raise WorkflowError(
                f"{message}; free space or set nsd.root to a local copy"
            )
        logger.warning(f"{message} (estimated from typical sizes)")


# --------------------------------------------------------------------------- fMRI preparation


def fmri_dir(subject="{subject}"):
    """Folder of one subject's prepared fMRI (``subject`` = two digits or the wildcard)."""
    return f"results/{DATASET}/subj{subject}/fmri"


def fmri_roi_outputs(subject="{subject}"):
    """Per-ROI outputs of prepare_fmri (train, test, voxels of each configured ROI)."""
    names = fmri_output_names(config["fmri"]["rois"])
    return [
        f"{fmri_dir(subject)}/{name}"
        for name in names
        if name.endswith((".npy", ".npz"))
    ]


def fmri_atlases():
    """ROI atlases the configured ROIs need, and those of them that have a label table."""
    atlases = nsd_layout.atlases_for(config["fmri"]["rois"])
    return atlases, [
        atlas for atlas in atlases if atlas not in nsd_layout.WHOLE_VOLUME_ATLASES
    ]


def fmri_inputs(wildcards):
    """Inputs of prepare_fmri for one subject (betas of every configured session, ROI
    atlases, label tables, brain mask and the design)."""
    subject = int(wildcards.subject)
    atlases, labelled = fmri_atlases()
    beta_format = config["nsd"]["beta_format"]
    return {
        "betas": [
            nsd_file(nsd_layout.betas_key(subject, s, beta_format)) for s in SESSIONS
        ],
        "expdesign": nsd_file(nsd_layout.expdesign_key()),
        "atlases": [nsd_file(nsd_layout.roi_key(subject, atlas)) for atlas in atlases],
        "label_tables": [
            nsd_file(nsd_layout.label_table_key(atlas)) for atlas in labelled
        ],
        "brainmask": nsd_file(nsd_layout.brainmask_key(subject)),
    }


def trials_per_session():
    """Trials in each betas file: 750 in NSD, the toy's own number in the toy world."""
    return toy_params().trials_per_session if TOY else nsd_layout.TRIALS_PER_SESSION


def fmri_runtime_minutes():
    """Generous wall time of prepare_fmri in minutes: one per session (inflating takes ~5-10 s)."""
    return 10 + len(SESSIONS)


def fmri_targets():
    """Every subject's prepared fMRI and the QC summary."""
    targets = summary_targets("fmri_qc.tsv")
    for subject in RUN_SUBJECTS:
        targets += fmri_roi_outputs(subject)
        targets += [
            f"{fmri_dir(subject)}/{name}"
            for name in ("train_trials.tsv", "test_images.tsv", "qc.tsv")
        ]
    return targets


# --------------------------------------------------------------------------- decoding, reconstruction, evaluation

DECODED_FEATURES = ("z", "c")
FEATURES_DIR = f"results/{DATASET}/features"
RECON_SHARDS = config["reconstruction"]["n_shards"]

for _feature in DECODED_FEATURES:
    _unprepared = [
        roi
        for roi in config["decoding"][f"{_feature}_rois"]
        if roi not in config["fmri"]["rois"]
    ]
    if _unprepared:
        raise WorkflowError(
            f"config key 'decoding.{_feature}_rois': {_unprepared} are not prepared; add them to "
            f"fmri.rois (now {config['fmri']['rois']})"
        )


def decoding_dir(subject="{subject}"):
    """Folder of one subject's decoders (``subject`` = two digits or the wildcard)."""
    return f"results/{DATASET}/subj{subject}/decoding"


def decoder_outputs(subject="{subject}", feature="{feature}"):
    """Files rule fit_decoder writes for one subject and feature (brainldm.decoding.decode_feature)."""
    folder = decoding_dir(subject)
    return {
        "pred": f"{folder}/{feature}_pred.npy",
        "nsd_ids": f"{folder}/{feature}_nsd_ids.npy",
        "alphas": f"{folder}/{feature}_alphas.npy",
        "cv_scores": f"{folder}/{feature}_cv_scores.npy",
        "test_r": f"{folder}/{feature}_test_r.tsv",
        "summary": f"{folder}/{feature}.json",
    }


def decoder_inputs(wildcards):
    """Inputs of fit_decoder: the decoding ROIs' prepared betas and the feature's table."""
    rois = config["decoding"][f"{wildcards.feature}_rois"]
    folder = fmri_dir(wildcards.subject)
    return {
        "train": [f"{folder}/{roi}_train.npy" for roi in rois],
        "test": [f"{folder}/{roi}_test.npy" for roi in rois],
        "train_trials": f"{folder}/train_trials.tsv",
        "test_images": f"{folder}/test_images.tsv",
        "features": f"{FEATURES_DIR}/{wildcards.feature}.npy",
        "feature_ids": f"{FEATURES_DIR}/{wildcards.feature}_nsd_ids.npy",
    }


def decoder_mem_mb(wildcards):
    """Memory of fit_decoder: c (59,136 targets) peaks near 12 GB at NSD scale, z far lower."""
    return 16000 if wildcards.feature == "c" else 8000


def decoder_gpus():
    """1 when decoding.backend asks for CUDA; ``auto`` uses a GPU only if the job lands on one."""
    return 1 if config["decoding"]["backend"] == "torch_cuda" else 0


def reconstruction_dir(subject="{subject}"):
    return f"results/{DATASET}/subj{subject}/reconstruction"


def reconstruction_shard_dir(subject="{subject}", shard="{shard}"):
    """One reconstruct_images job's folder: ``<method>/nsd<id>_s<k>.png`` and manifest.tsv."""
    return f"{reconstruction_dir(subject)}/shard{shard}of{RECON_SHARDS}"


def reconstruction_shard_dirs(wildcards):
    return [
        reconstruction_shard_dir(wildcards.subject, shard)
        for shard in range(RECON_SHARDS)
    ]


def sd_model_inputs():
    """The Stable Diffusion folder as an input when it is a file path (the toy model, or a
    pre-staged copy); nothing for a hub id (resolved in the job)."""
    model_id = config["model"]["id"]
    return [model_id] if TOY or Path(model_id).is_dir() else []


# --------------------------------------------------------------------------- features

FEATURE_SHARDS = config["features"]["n_shards"]
# Rule make_toy_model writes the toy Stable Diffusion here (config/toy.yaml's model.id).
TOY_MODEL_DIR = "resources/toy/model"
# The trained toy weights that ship with the workflow (brainldm.toy.training writes them);
# relative to the working directory, which --directory may put outside the workflow.
TOY_WEIGHTS_DIR = os.path.relpath(Path(workflow.basedir) / "workflow" / "toy_model")


def toy_weight_files():
    """The shipped toy weights folder's manifest and files (inputs of make_toy_model)."""
    from brainldm.toy.weights import MANIFEST, WEIGHT_FILES

    return [f"{TOY_WEIGHTS_DIR}/{MANIFEST}"] + [
        f"{TOY_WEIGHTS_DIR}/{name}" for name in WEIGHT_FILES.values()
    ]


def feature_inputs(wildcards):
    """Inputs of extract_features: the design (which images), the stimuli (z) or stim info and
    COCO captions (c), and the model folder when it is a file path (sd_model_inputs)."""
    inputs = {
        "expdesign": nsd_file(nsd_layout.expdesign_key()),
        "model": sd_model_inputs(),
    }
    if wildcards.feature == "z":
        inputs["stimuli"] = nsd_file(nsd_layout.stimuli_key())
    else:
        inputs["stim_info"] = nsd_file(nsd_layout.stim_info_key())
        inputs["captions"] = coco_caption_files()
    return inputs


def feature_shard_outputs(feature="{feature}", shard="{shard}"):
    """Files of one extract_features job (shard of FEATURE_SHARDS; brainldm.features.extract)."""
    stem = f"{FEATURES_DIR}/shards/{feature}_{shard}of{FEATURE_SHARDS}"
    return {
        "features": f"{stem}.npy",
        "nsd_ids": f"{stem}_nsd_ids.npy",
        "record": f"{stem}.json",
    }


def feature_shard_files(wildcards):
    """Inputs of merge_features: every shard's array, nsdIds and record."""
    shards = [
        feature_shard_outputs(wildcards.feature, shard)
        for shard in range(FEATURE_SHARDS)
    ]
    return {
        key: [shard[key] for shard in shards]
        for key in ("features", "nsd_ids", "record")
    }


def feature_gpus():
    """gpu=1 unless model.device is cpu (``auto`` asks for a GPU: on a cluster the job lands on
    one; locally, resources are not enforced beyond the profile's limit of one GPU job).
    """
    return 0 if config["model"]["device"] == "cpu" else 1


def feature_threads():
    """CPU threads of extract_features: 1 on CPU (tiny layers run fastest on one thread, and
    shards run side by side), 4 beside a GPU (image reading and resizing)."""
    return 1 if config["model"]["device"] == "cpu" else 4


def features_targets():
    return [
        f"{FEATURES_DIR}/{feature}{suffix}"
        for feature in DECODED_FEATURES
        for suffix in (".npy", "_nsd_ids.npy", ".json")
    ]


def sd_gpus():
    """gpu=1 for reconstruction and evaluation jobs unless model.device is cpu."""
    return 0 if config["model"]["device"] == "cpu" else 1


def sd_threads():
    """CPU threads of reconstruction/evaluation jobs: 1 on CPU (tiny models run fastest on one
    thread, and shards run side by side), 4 beside a GPU (image reading and writing)."""
    return 1 if config["model"]["device"] == "cpu" else 4


def evaluation_dir(subject="{subject}"):
    return f"results/{DATASET}/subj{subject}/evaluation"


def decoding_targets():
    targets = summary_targets("decoding.tsv")
    for subject in RUN_SUBJECTS:
        for feature in DECODED_FEATURES:
            targets += list(decoder_outputs(subject, feature).values())
    return targets


def reconstruction_targets():
    targets = []
    for subject in RUN_SUBJECTS:
        targets += [
            reconstruction_shard_dir(subject, shard) for shard in range(RECON_SHARDS)
        ]
        targets.append(f"{reconstruction_dir(subject)}/figure.png")
    return targets


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


from brainldm.evaluation.evaluate import registry_extractor_names

try:  # two-way:<extractor> metrics must name a registry extractor: stop before any job if not
    registry_extractor_names(config["evaluation"]["metrics"])
except ValueError as error:
    raise WorkflowError(str(error)) from None


# --------------------------------------------------------------------------- cortical maps

# The maps read the encoding stage's volumes by the names of its interface contract.
MAPS = config["maps"]["enabled"]
MAP_VOLUMES = map_specs.surface_volume_names(config["encoding"]) if MAPS else []
MAP_FIGURES = map_specs.figure_names(config["encoding"]) if MAPS else []


def encoding_volumes_dir(subject="{subject}"):
    """The encoding stage's NIfTI volumes of one subject (``{model}_r.nii.gz`` ...)."""
    return f"results/{DATASET}/subj{subject}/encoding/volumes"


def maps_dir(subject="{subject}"):
    return f"results/{DATASET}/subj{subject}/maps"


def surface_transform_files(wildcards):
    """The 8 NSD transforms of one subject (lh layerB1-3, lh fsaverage, then rh)."""
    return [
        nsd_file(key)
        for key in nsd_layout.surface_transform_keys(int(wildcards.subject))
    ]


def viewer_volume_names():
    """Surface maps the interactive viewer reads: r and FDR mask of each model it shows."""
    models = config["maps"]["viewer_map"].split("-", 1)
    known = map_specs.accuracy_models(config["encoding"])
    if any(model not in known for model in models):
        raise WorkflowError(
            f"config key 'maps.viewer_map': value {config['maps']['viewer_map']!r} is invalid; "
            f"expected a model of {known} or two joined by '-' (e.g. 'z-c')"
        )
    return [f"{model}_{kind}" for model in models for kind in ("r", "significant")]


def maps_targets():
    targets = []
    for subject in RUN_SUBJECTS:
        folder = maps_dir(subject)
        targets += [f"{folder}/surface/{name}.npz" for name in MAP_VOLUMES]
        targets += [f"{folder}/{name}.png" for name in MAP_FIGURES]
        targets += [f"{folder}/density_z_vs_c.png", f"{folder}/viewer.html"]
    return targets


# --------------------------------------------------------------------------- report

REPORT_DIR = f"results/{DATASET}/report"
# Summary tables shown in the report.
REPORT_TABLES = [
    "fmri_qc",
    "decoding",
    "identification",
    "metrics",
    "metrics_comparison",
    "encoding",
]


def report_targets():
    """Files made only for ``snakemake --report`` (configuration page, tables, figures); a
    run_subjects run makes only its subjects' figures and leaves the run-wide pages alone.
    """
    targets = []
    if RUN_SUBJECTS == SUBJECTS:
        targets.append(f"{REPORT_DIR}/configuration.html")
        targets += [f"{REPORT_DIR}/{table}.html" for table in REPORT_TABLES]
    targets += [
        f"{REPORT_DIR}/subj{subject}_reconstructions.png" for subject in RUN_SUBJECTS
    ]
    return targets


def summary_targets(*names):
    """The summary tables ``names`` over all analysed subjects, unless run_subjects selects only
    some of them: such a run leaves every summary as it is (the next full run updates it).
    """
    if RUN_SUBJECTS != SUBJECTS:
        return []
    return [f"results/{DATASET}/summary/{name}" for name in names]


def toy_attribute_targets():
    """On the toy world: the per-subject attribute match tables and their summary."""
    if not TOY:
        return []
    targets = summary_targets("attributes.tsv")
    targets += [f"{evaluation_dir(subject)}/attributes.tsv" for subject in RUN_SUBJECTS]
    return targets


def all_targets():
    """Final outputs of the whole graph for the configured dataset and subjects."""
    targets = []
    if TOY:
        targets += toy_world_files()
    targets += download_targets()
    targets += fmri_targets()
    targets += decoding_targets() + reconstruction_targets() + evaluation_targets()
    if MAPS:
        targets += maps_targets()
    targets += report_targets()
    targets += toy_attribute_targets()
    targets += encoding_targets()
    return targets


# --------------------------------------------------------------------------- encoding

from brainldm.encoding.fit import model_names as encoding_model_names

ENCODING = config["encoding"]
ENCODING_FEATURES_DIR = f"results/{DATASET}/encoding_features"
ENCODING_SHARDS = ENCODING["n_shards"]
ENCODING_SINGLE_MODELS, ENCODING_JOINT_MODELS = encoding_model_names(ENCODING)
ENCODING_MODELS = ENCODING_SINGLE_MODELS + ENCODING_JOINT_MODELS
# Atlases of the per-ROI summary: every streams label and the prf-visualrois areas.
ENCODING_SUMMARY_ATLASES = nsd_layout.ENCODING_SUMMARY_ATLASES

if ENCODING["mask"] not in config["fmri"]["rois"]:
    raise WorkflowError(
        f"config key 'encoding.mask': value {ENCODING['mask']!r} is not prepared; add it to "
        f"fmri.rois (now {config['fmri']['rois']})"
    )
if ENCODING["unet_strength"] not in ENCODING["zc_strengths"]:
    raise WorkflowError(
        f"config key 'encoding.unet_strength': value {ENCODING['unet_strength']} is not one of "
        f"encoding.zc_strengths {ENCODING['zc_strengths']}; the U-Net features are recorded "
        "during one of the zc denoisings"
    )


def encoding_dir(subject="{subject}"):
    """Folder of one subject's encoding outputs (``subject`` = two digits or the wildcard)."""
    return f"results/{DATASET}/subj{subject}/encoding"


def encoding_shard_outputs(shard="{shard}"):
    """Files of one extract_encoding_features job (brainldm.features.ldm_parts)."""
    stem = f"{ENCODING_FEATURES_DIR}/shards/encoding_{shard}of{ENCODING_SHARDS}"
    return {
        "features": f"{stem}.npy",
        "nsd_ids": f"{stem}_nsd_ids.npy",
        "record": f"{stem}.json",
    }


def encoding_shard_files(wildcards):
    shards = [encoding_shard_outputs(shard) for shard in range(ENCODING_SHARDS)]
    return {
        key: [shard[key] for shard in shards]
        for key in ("features", "nsd_ids", "record")
    }


def encoding_model_pattern():
    """Regex of the configured model names (the ``{model}`` wildcard)."""
    import re

    return "|".join(re.escape(model) for model in ENCODING_MODELS)


def encoder_mem_mb():
    """Memory of an encoding job, from the measured and estimated peaks at NSD's scale (README,
    Encoding, "Time and memory at NSD scale"): nsdgeneral on image averages peaks at 9.0 GB
    (15.3 GB with solver himalaya, too close to 16 GB); single trials need an estimated ~40 GB,
    and the whole brain (brainmask) adds per-voxel arrays, an estimated ~5-7 GB on image averages
    and ~12 GB on trials.
    """
    trials = ENCODING["train_on"] == "trials"
    whole_brain = ENCODING["mask"] == "brainmask"
    himalaya = ENCODING["solver"] == "himalaya"
    return (
        (48000 if trials else 16000)
        + (16000 if whole_brain else 0)
        + (8000 if himalaya else 0)
    )


def encoder_runtime_per_model():
    """Minutes per model: single trials make each fit 10-20x dearer or more (2.8x the rows, ~22x
    the eigendecompositions; 9.9x measured at 0.1 of NSD's scale, 17x at 0.3)."""
    return 1440 if ENCODING["train_on"] == "trials" else 240


def encoder_inputs(wildcards):
    """Inputs of fit_encoding_model: the mask's prepared betas and each space's features."""
    return encoder_inputs_of(wildcards.subject, wildcards.model.split("+"))


def subject_encoder_inputs(wildcards):
    """Inputs of fit_encoding_models: those of every configured model."""
    spaces = {space for model in ENCODING_MODELS for space in model.split("+")}
    return encoder_inputs_of(wildcards.subject, spaces)


def encoder_inputs_of(subject, spaces):
    """The mask's betas and the files of exactly the spaces read: a model of z alone does not
    wait for (or rerun after) c's features."""
    folder = fmri_dir(subject)
    mask = ENCODING["mask"]
    inputs = {
        "train": f"{folder}/{mask}_train.npy",
        "test": f"{folder}/{mask}_test.npy",
        "train_trials": f"{folder}/train_trials.tsv",
        "test_images": f"{folder}/test_images.tsv",
    }
    for space in sorted(set(spaces) & {"z", "c"}):
        inputs[space] = f"{FEATURES_DIR}/{space}.npy"
        inputs[f"{space}_ids"] = f"{FEATURES_DIR}/{space}_nsd_ids.npy"
    if set(spaces) - {"z", "c"}:
        inputs["encoding_features"] = [
            f"{ENCODING_FEATURES_DIR}/encoding{suffix}"
            for suffix in (".npy", "_nsd_ids.npy", ".json")
        ]
    return inputs


def encoding_volume_files(subject="{subject}"):
    """The NIfTI volumes of map_encoding (names of the maps contract)."""
    folder = f"{encoding_dir(subject)}/volumes"
    files = []
    for model in ENCODING_MODELS:
        files += [f"{folder}/{model}_r.nii.gz", f"{folder}/{model}_significant.nii.gz"]
    for joint in ENCODING_JOINT_MODELS:
        files += [
            f"{folder}/{joint}_unique_{space}.nii.gz" for space in joint.split("+")
        ]
    files += [
        f"{folder}/unet_best_{kind}.{ext}"
        for kind in ("block", "step")
        for ext in ("nii.gz", "json")
    ]
    return files


def encoding_atlas_inputs(wildcards):
    subject = int(wildcards.subject)
    return {
        "atlases": [
            nsd_file(nsd_layout.roi_key(subject, atlas))
            for atlas in ENCODING_SUMMARY_ATLASES
        ],
        "label_tables": [
            nsd_file(nsd_layout.label_table_key(atlas))
            for atlas in ENCODING_SUMMARY_ATLASES
        ],
    }


def encoding_subject_targets(subject):
    """Every encoding output of one subject."""
    folder = encoding_dir(subject)
    targets = [f"{folder}/{model}.npz" for model in ENCODING_MODELS]
    targets += [
        f"{folder}/voxels.npz",
        f"{folder}/summary.tsv",
    ] + encoding_volume_files(subject)
    return targets


def encoding_targets():
    targets = summary_targets("encoding.tsv")
    targets += [
        f"{ENCODING_FEATURES_DIR}/encoding{suffix}"
        for suffix in (".npy", "_nsd_ids.npy", ".json")
    ]
    for subject in RUN_SUBJECTS:
        targets += encoding_subject_targets(subject)
    return targets
