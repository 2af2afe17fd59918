# Paths, input functions and settings of workflow/rules/reconstruction.smk (helpers: no rules here).
RECON_SHARDS = config["reconstruction"]["n_shards"]
# The reconstruction settings that change the images (figure_images changes only the figure).
SAMPLER_KEYS = (
    "methods",
    "n_samples",
    "image_size",
    "strength",
    "ddim_steps",
    "ddim_eta",
    "guidance_scale",
    "seed",
)
# What the readers of the reconstructions need: which methods, how many samples, which shards.
RECONSTRUCTION_READ_KEYS = ("methods", "n_samples", "n_shards")


def reconstruction_dir(subject="{subject}"):
    return f"results/{DATASET}/subj{subject}/reconstruction"


def reconstruction_shard_dir(subject="{subject}", shard="{shard}"):
    """One reconstruct_images job's folder: ``<method>/nsd<id>_s<k>.png`` and manifest.tsv."""
    return f"{reconstruction_dir(subject)}/shard{shard}of{RECON_SHARDS}"


def reconstruction_shard_dirs(wildcards):
    return [
        reconstruction_shard_dir(wildcards.subject, shard)
        for shard in range(RECON_SHARDS)
    ]


def reconstruction_targets():
    targets = []
    for subject in RUN_SUBJECTS:
        targets += [
            reconstruction_shard_dir(subject, shard) for shard in range(RECON_SHARDS)
        ]
        targets.append(f"{reconstruction_dir(subject)}/figure.png")
    return targets
