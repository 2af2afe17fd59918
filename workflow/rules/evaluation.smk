# Evaluation: the paper's identification (anchored on the original, mean r over the samples,
# against every other test image) and the field's two-way identification, per subject and
# feature space; the field's eight metrics (evaluation.metrics, evaluation.protocol) per
# subject; then summary tables.


rule identify_reconstructions:
    input:
        shards=reconstruction_shard_dirs,
        test_ids=decoder_outputs(feature="z")["nsd_ids"],
        stimuli=nsd_file(nsd_layout.stimuli_key()),
    output:
        table=f"{evaluation_dir()}/identification.tsv",
    log:
        f"logs/{DATASET}/identify_reconstructions/subj{{subject}}.log",
    conda:
        "../../envs/evaluation.yaml"
    threads: model_threads()
    resources:
        gpu=model_gpus(),
        mem_mb=16000,
        runtime=240,
    params:
        settings=result_settings(config, "reconstruction", RECONSTRUCTION_READ_KEYS),
        evaluation=result_settings(config, "evaluation", IDENTIFICATION_KEYS),
        device=config["model"]["device"],
    script:
        "../scripts/identify_reconstructions.py"


rule summarize_identification:
    input:
        tables=expand(
            f"{evaluation_dir('{subject}')}/identification.tsv", subject=SUBJECTS
        ),
    output:
        table=f"results/{DATASET}/summary/identification.tsv",
    log:
        f"logs/{DATASET}/summarize_identification.log",
    localrule: True
    conda:
        "../../envs/evaluation.yaml"
    params:
        subjects=[int(s) for s in SUBJECTS],
    script:
        "../scripts/summarize_identification.py"


rule evaluate_reconstructions:
    input:
        shards=reconstruction_shard_dirs,
        test_ids=decoder_outputs(feature="z")["nsd_ids"],
        stimuli=nsd_file(nsd_layout.stimuli_key()),
    output:
        table=f"{evaluation_dir()}/metrics.tsv",
    log:
        f"logs/{DATASET}/evaluate_reconstructions/subj{{subject}}.log",
    conda:
        "../../envs/evaluation.yaml"
    threads: model_threads()
    resources:
        gpu=model_gpus(),
        mem_mb=16000,
        runtime=240,
    params:
        settings=result_settings(config, "reconstruction", RECONSTRUCTION_READ_KEYS),
        evaluation=result_settings(config, "evaluation"),
        device=config["model"]["device"],
    script:
        "../scripts/evaluate_reconstructions.py"


rule summarize_metrics:
    input:
        tables=expand(f"{evaluation_dir('{subject}')}/metrics.tsv", subject=SUBJECTS),
    output:
        table=f"results/{DATASET}/summary/metrics.tsv",
        comparison=f"results/{DATASET}/summary/metrics_comparison.tsv",
    log:
        f"logs/{DATASET}/summarize_metrics.log",
    localrule: True
    conda:
        "../../envs/evaluation.yaml"
    params:
        subjects=[int(s) for s in SUBJECTS],
    script:
        "../scripts/summarize_metrics.py"


# On the toy world: how often each method's reconstructions show the seen image's planted
# attributes (shape, colour, size, position, background), read by the shipped toy classifier.
if TOY:

    rule match_toy_attributes:
        input:
            shards=reconstruction_shard_dirs,
            test_ids=decoder_outputs(feature="z")["nsd_ids"],
            stimuli=nsd_file(nsd_layout.stimuli_key()),
            attributes=nsd_file(TOY_ATTRIBUTES_KEY),
            weights=toy_weight_files(),
        output:
            table=f"{evaluation_dir()}/attributes.tsv",
        log:
            f"logs/{DATASET}/match_toy_attributes/subj{{subject}}.log",
        localrule: True
        conda:
            "../../envs/evaluation.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            settings=result_settings(config, "reconstruction", RECONSTRUCTION_READ_KEYS),
        script:
            "../scripts/match_toy_attributes.py"

    rule summarize_toy_attributes:
        input:
            tables=expand(
                f"{evaluation_dir('{subject}')}/attributes.tsv", subject=SUBJECTS
            ),
        output:
            table=f"results/{DATASET}/summary/attributes.tsv",
        log:
            f"logs/{DATASET}/summarize_toy_attributes.log",
        localrule: True
        conda:
            "../../envs/evaluation.yaml"
        params:
            subjects=[int(s) for s in SUBJECTS],
        script:
            "../scripts/summarize_toy_attributes.py"
