# Reconstruction: per subject and shard, every test image with the decoded z and c: z (VAE
# decode), c (generation) and zc (the paper's img2img), n_samples each; then a figure per subject.
# Each sample's noise is seeded by (seed, nsdId, sample), so shards and batch size never change
# an image. The speed options (brainldm.reconstruction.sampler.SPEED_KEYS) never change an image beyond a
# GPU's rounding: the params leave them out (brainldm.core.settings) and the script reads them
# from the config, so that changing one reruns nothing.


rule reconstruct_images:
    input:
        z=decoder_outputs(feature="z")["pred"],
        z_ids=decoder_outputs(feature="z")["nsd_ids"],
        c=decoder_outputs(feature="c")["pred"],
        c_ids=decoder_outputs(feature="c")["nsd_ids"],
        model=sd_model_inputs(),
    output:
        shard=directory(reconstruction_shard_dir()),
    log:
        f"logs/{DATASET}/reconstruct_images/subj{{subject}}_shard{{shard}}.log",
    wildcard_constraints:
        shard=r"\d+",
    conda:
        "../../envs/reconstruction.yaml"
    threads: model_threads()
    resources:
        gpu=model_gpus(),
        mem_mb=16000,
        runtime=720,
    params:
        model=result_settings(config, "model"),
        settings=result_settings(config, "reconstruction", SAMPLER_KEYS),
        n_shards=RECON_SHARDS,
    script:
        "../scripts/reconstruct_images.py"


rule plot_reconstructions:
    input:
        shards=reconstruction_shard_dirs,
        test_ids=decoder_outputs(feature="z")["nsd_ids"],
        stimuli=nsd_file(nsd_layout.stimuli_key()),
    output:
        figure=f"{reconstruction_dir()}/figure.png",
    log:
        f"logs/{DATASET}/plot_reconstructions/subj{{subject}}.log",
    localrule: True
    conda:
        "../../envs/reconstruction.yaml"
    params:
        methods=config["reconstruction"]["methods"],
        n_images=config["reconstruction"]["figure_images"],
    script:
        "../scripts/plot_reconstructions.py"
