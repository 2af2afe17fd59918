# Decoding stage. Per subject, ridge maps from prepared fMRI to Stable Diffusion features with
# the paper's settings (himalaya RidgeCV model: svd, alphas per target by 5-fold unshuffled
# KFold, X standardised on the training trials, Y raw, no intercept); then one summary table.


rule fit_decoder:
    input:
        unpack(decoder_inputs),
    output:
        **decoder_outputs(),
    log:
        f"logs/{DATASET}/fit_decoder/subj{{subject}}_{{feature}}.log",
    wildcard_constraints:
        feature="z|c",
    conda:
        "../../envs/decoding.yaml"
    threads: config["decoding"]["threads"]
    resources:
        mem_mb=decoder_mem_mb,
        runtime=240,
        gpu=decoder_gpus(),
    params:
        rois=lambda wildcards: config["decoding"][f"{wildcards.feature}_rois"],
        settings=result_settings(config, "decoding"),
    script:
        "../scripts/fit_decoder.py"


rule summarize_decoding:
    input:
        summaries=expand(
            f"{decoding_dir('{subject}')}/{{feature}}.json",
            subject=SUBJECTS,
            feature=DECODED_FEATURES,
        ),
    output:
        table=f"results/{DATASET}/summary/decoding.tsv",
    log:
        f"logs/{DATASET}/summarize_decoding.log",
    localrule: True
    conda:
        "../../envs/decoding.yaml"
    params:
        subjects=[int(s) for s in SUBJECTS for _ in DECODED_FEATURES],
    script:
        "../scripts/summarize_decoding.py"
