# fMRI preparation: per subject, betas streamed session by session into ROI matrices of the
# paper's train/test split (train single trials, test averaged over repeats), plus QC.


rule prepare_fmri:
    input:
        unpack(fmri_inputs),
    output:
        qc=f"{fmri_dir()}/qc.tsv",
        train_trials=f"{fmri_dir()}/train_trials.tsv",
        test_images=f"{fmri_dir()}/test_images.tsv",
        rois=fmri_roi_outputs(),
    log:
        f"logs/{DATASET}/prepare_fmri/subj{{subject}}.log",
    conda:
        "../../envs/fmri.yaml"
    threads: config["fmri"]["threads"]
    resources:
        mem_mb=2500,
        runtime=fmri_runtime_minutes(),
    params:
        sessions=SESSIONS,
        rois=config["fmri"]["rois"],
        value_scaling=config["fmri"]["value_scaling"],
        atlases=fmri_atlases()[0],
        labelled_atlases=fmri_atlases()[1],
        trials_per_session=trials_per_session(),
    script:
        "../scripts/prepare_fmri.py"


rule summarize_fmri_qc:
    input:
        qc=expand(f"{fmri_dir('{subject}')}/qc.tsv", subject=SUBJECTS),
    output:
        summary=f"results/{DATASET}/summary/fmri_qc.tsv",
    log:
        f"logs/{DATASET}/summarize_fmri_qc.log",
    localrule: True
    conda:
        "../../envs/fmri.yaml"
    script:
        "../scripts/summarize_fmri_qc.py"
