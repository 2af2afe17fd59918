# Paths, input functions and settings of workflow/rules/fmri.smk (helpers: no rules here).
from brainldm.fmri.prepare import output_names as fmri_output_names


def fmri_dir(subject="{subject}"):
    """Folder of one subject's prepared fMRI (``subject`` = two digits or the wildcard)."""
    return f"results/{DATASET}/subj{subject}/fmri"


def fmri_roi_outputs(subject="{subject}"):
    """Per-ROI outputs of prepare_fmri (train, test, voxels of each configured ROI)."""
    return [
        f"{fmri_dir(subject)}/{name}"
        for name in fmri_output_names(config["fmri"]["rois"])
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
