# Voxelwise models predicting every voxel of the configured mask from the LDM's parts.
# First the features of this stage for every seen image (zc at each noise level, pooled U-Net
# block outputs at early/middle/late denoising steps; sharded and resumable like
# extract_features),
# then per subject one job per model (single spaces z, c, zc*, unet_*; banded joints z+c, z+zc*)
# or, with encoding.jobs per_subject, one job for all of them,
# then per subject the voxel table, NIfTI volumes and ROI summary; then one summary table.


rule extract_encoding_features:
    input:
        z=f"{FEATURES_DIR}/z.npy",
        z_ids=f"{FEATURES_DIR}/z_nsd_ids.npy",
        c=f"{FEATURES_DIR}/c.npy",
        model=sd_model_inputs(),
    output:
        **encoding_shard_outputs(),
    log:
        f"logs/{DATASET}/extract_encoding_features/{{shard}}of{ENCODING_SHARDS}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/features.yaml"
    threads: feature_threads()
    resources:
        gpu=feature_gpus(),
        mem_mb=16000,
        runtime=720,
    params:
        model=config["model"],
        encoding=ENCODING,
        sampler=reconstruction_result_settings(config["reconstruction"]),
    script:
        "../scripts/extract_encoding_features.py"


rule merge_encoding_features:
    input:
        unpack(encoding_shard_files),
        z_ids=f"{FEATURES_DIR}/z_nsd_ids.npy",
    output:
        features=f"{ENCODING_FEATURES_DIR}/encoding.npy",
        nsd_ids=f"{ENCODING_FEATURES_DIR}/encoding_nsd_ids.npy",
        record=f"{ENCODING_FEATURES_DIR}/encoding.json",
    log:
        f"logs/{DATASET}/merge_encoding_features.log",
    conda:
        "../../envs/features.yaml"
    resources:
        mem_mb=8000,
        runtime=60,
    script:
        "../scripts/merge_encoding_features.py"


if ENCODING["jobs"] == "per_model":

    rule fit_encoding_model:
        input:
            unpack(encoder_inputs),
        output:
            scores=f"{encoding_dir()}/{{model}}.npz",
        log:
            f"logs/{DATASET}/fit_encoding_model/subj{{subject}}_{{model}}.log",
        wildcard_constraints:
            model=encoding_model_pattern(),
        conda:
            "../../envs/encoding.yaml"
        threads: ENCODING["threads"]
        resources:
            mem_mb=encoder_mem_mb(),
            runtime=encoder_runtime_per_model(),
            gpu=1 if ENCODING["backend"] == "torch_cuda" else 0,
        params:
            encoding=ENCODING,
            features_dir=FEATURES_DIR,
            encoding_features_dir=ENCODING_FEATURES_DIR,
            models=lambda wildcards: [wildcards.model],
        script:
            "../scripts/fit_encoding_models.py"

else:

    rule fit_encoding_models:
        input:
            unpack(subject_encoder_inputs),
        output:
            scores=expand(
                f"{encoding_dir()}/{{model}}.npz",
                model=ENCODING_MODELS,
                allow_missing=True,
            ),
        log:
            f"logs/{DATASET}/fit_encoding_models/subj{{subject}}.log",
        conda:
            "../../envs/encoding.yaml"
        threads: ENCODING["threads"]
        resources:
            mem_mb=encoder_mem_mb(),
            runtime=encoder_runtime_per_model() * len(ENCODING_MODELS),
            gpu=1 if ENCODING["backend"] == "torch_cuda" else 0,
        params:
            encoding=ENCODING,
            features_dir=FEATURES_DIR,
            encoding_features_dir=ENCODING_FEATURES_DIR,
            models=ENCODING_MODELS,
        script:
            "../scripts/fit_encoding_models.py"


rule map_encoding:
    input:
        unpack(encoding_atlas_inputs),
        scores=expand(
            f"{encoding_dir()}/{{model}}.npz",
            model=ENCODING_MODELS,
            allow_missing=True,
        ),
        mask_voxels=f"{fmri_dir()}/{ENCODING['mask']}_voxels.npz",
    output:
        voxels=f"{encoding_dir()}/voxels.npz",
        table=f"{encoding_dir()}/summary.tsv",
        volumes=encoding_volume_files(),
    log:
        f"logs/{DATASET}/map_encoding/subj{{subject}}.log",
    conda:
        "../../envs/encoding.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        encoding=ENCODING,
        atlases=ENCODING_SUMMARY_ATLASES,
    script:
        "../scripts/map_encoding.py"


rule summarize_encoding:
    input:
        tables=expand(f"{encoding_dir('{subject}')}/summary.tsv", subject=SUBJECTS),
    output:
        table=f"results/{DATASET}/summary/encoding.tsv",
    log:
        f"logs/{DATASET}/summarize_encoding.log",
    localrule: True
    conda:
        "../../envs/encoding.yaml"
    script:
        "../scripts/summarize_encoding.py"
