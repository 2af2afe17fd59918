# Paths, input functions and settings of workflow/rules/encoding.smk (helpers: no rules here).
ENCODING = config["encoding"]
ENCODING_FEATURES_DIR = f"results/{DATASET}/encoding_features"
ENCODING_SHARDS = ENCODING["n_shards"]
ENCODING_SINGLE_MODELS, ENCODING_JOINT_MODELS = names.model_names(ENCODING)
ENCODING_MODELS = ENCODING_SINGLE_MODELS + ENCODING_JOINT_MODELS
# Atlases of the per-ROI summary: every streams label and the prf-visualrois areas.
ENCODING_SUMMARY_ATLASES = nsd_layout.ENCODING_SUMMARY_ATLASES
# The encoding settings that change a model's fit and scores.
ENCODING_FIT_KEYS = (
    "mask",
    "train_on",
    "alphas",
    "n_iter",
    "n_folds",
    "solver",
    "fdr_q",
    "seed",
)


def encoding_dir(subject="{subject}"):
    """Folder of one subject's encoding outputs (``subject`` = two digits or the wildcard)."""
    return f"results/{DATASET}/subj{subject}/encoding"


def encoding_volumes_dir(subject="{subject}"):
    """The encoding stage's NIfTI volumes of one subject (``{model}_r.nii.gz`` ...)."""
    return f"{encoding_dir(subject)}/volumes"


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
    """Memory of an encoding job, from the measured and estimated peaks at NSD's scale
    (docs/benchmarks.md, Encoding): nsdgeneral on image averages peaks at 9.0 GB
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
    """The NIfTI volumes of map_encoding and the labels of the U-Net's best block and step."""
    folder = encoding_volumes_dir(subject)
    files = [
        f"{folder}/{name}.nii.gz" for name in names.encoding_volume_names(ENCODING)
    ]
    return files + [f"{folder}/{name}.json" for name in names.UNET_BEST_VOLUMES]


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
