# Stable Diffusion features of every image the configured subjects saw in the configured
# sessions: z (VAE latents) and c (caption embeddings), in n_shards resumable jobs per feature,
# merged into one array per feature indexed by ascending nsdId. Noise is seeded per
# (seed, nsdId), so batch size and sharding never change a value. On the toy world, the tiny
# Stable Diffusion it uses is first assembled by make_toy_model from the trained weights that
# ship in workflow/toy_model (retrained by brainldm.toy.training, not by the workflow).


if TOY:

    rule make_toy_model:
        input:
            weights=toy_weight_files(),
        output:
            model=directory(TOY_MODEL_DIR),
        log:
            "logs/toy/make_toy_model.log",
        localrule: True
        conda:
            "../../envs/features.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=5,
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
    threads: model_threads()
    resources:
        gpu=model_gpus(),
        mem_mb=16000,
        runtime=240,
    params:
        model=result_settings(config, "model"),
        settings=result_settings(config, "features"),
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
