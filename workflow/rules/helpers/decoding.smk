# Paths, input functions and settings of workflow/rules/decoding.smk (helpers: no rules here).
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


def decoding_targets():
    targets = summary_targets("decoding.tsv")
    for subject in RUN_SUBJECTS:
        for feature in DECODED_FEATURES:
            targets += list(decoder_outputs(subject, feature).values())
    return targets
