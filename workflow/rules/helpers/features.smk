# Paths, input functions and settings of workflow/rules/features.smk (helpers: no rules here).
DECODED_FEATURES = names.BASE_SPACES
FEATURES_DIR = f"results/{DATASET}/features"
FEATURE_SHARDS = config["features"]["n_shards"]


def sd_model_inputs():
    """The Stable Diffusion folder as an input when it is a file path (the toy model, or a
    pre-staged copy); nothing for a hub id (resolved in the job)."""
    model_id = config["model"]["id"]
    return [model_id] if TOY or Path(model_id).is_dir() else []


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
