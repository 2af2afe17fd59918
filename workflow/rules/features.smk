# Stable Diffusion features of every image the configured subjects saw in the configured
# sessions: z (VAE latents) and c (caption embeddings), in n_shards resumable jobs per feature,
# merged into one array per feature indexed by ascending nsdId. Noise is seeded per
# (seed, nsdId), so batch size and sharding never change a value. On the toy world, the tiny
# Stable Diffusion it uses is built first by make_toy_model.


if TOY:

    rule make_toy_model:
        input:
            stimuli=nsd_file(nsd_layout.stimuli_key()),
            stim_info=nsd_file(nsd_layout.stim_info_key()),
            expdesign=nsd_file(nsd_layout.expdesign_key()),
            captions=coco_caption_files(),
        output:
            model=directory(TOY_MODEL_DIR),
        log:
            "logs/toy/make_toy_model.log",
        conda:
            "../../envs/features.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=15,
        params:
            seed=config["toy"]["seed"],
            fit_steps=config["model"]["toy_fit_steps"],
        script:
            "../scripts/make_toy_model.py"


rule extract_features:
    input:
        unpack(feature_inputs),
    output:
        **feature_shard_outputs(),
    log:
        f"logs/{DATASET}/extract_features/{{feature}}_{{shard}}of{FEATURE_SHARDS}.log",
    wildcard_constraints:
        feature="z|c",
        shard=r"\d+",
    conda:
        "../../envs/features.yaml"
    threads: feature_threads()
    resources:
        gpu=feature_gpus(),
        mem_mb=16000,
        runtime=240,
    params:
        model=config["model"],
        settings=config["features"],
        subjects=config["subjects"],
        sessions=SESSIONS,
        trials_per_session=trials_per_session(),
    script:
        "../scripts/extract_features.py"


rule merge_features:
    input:
        unpack(feature_shard_files),
        expdesign=nsd_file(nsd_layout.expdesign_key()),
    output:
        features=f"{FEATURES_DIR}/{{feature}}.npy",
        nsd_ids=f"{FEATURES_DIR}/{{feature}}_nsd_ids.npy",
        record=f"{FEATURES_DIR}/{{feature}}.json",
    log:
        f"logs/{DATASET}/merge_features/{{feature}}.log",
    wildcard_constraints:
        feature="z|c",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        subjects=config["subjects"],
        sessions=SESSIONS,
        trials_per_session=trials_per_session(),
    script:
        "../scripts/merge_features.py"
