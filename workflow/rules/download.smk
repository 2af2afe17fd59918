# Downloads, used when nsd.root / coco.root are null: every NSD key the config needs (one job per
# file, output resources/nsd/<key>) from nsd.base_url, and COCO's two caption files.
# Retries happen inside the job (brainldm.nsd.http: transient errors, with backoff); the
# rules set retries: 0 (over any profile's --retries) so that a final failure (403/404, an MD5
# that differs again on a fresh full download) is not fetched again by Snakemake.
# The gate and the plan run in the onstart hook, i.e. after the DAG is built and before any job,
# and never in a dry run (-n): see check_downloads_before_run in common.smk.

# Where a download and the toy world could both make a file (the toy's nsd.root with coco.root
# null), the download wins.
# Downloads land here when nsd.root / coco.root are null.


if TOY:

    ruleorder: download_nsd_file > make_toy_nsd
    ruleorder: download_coco_annotations > make_toy_nsd


# Parse time: the offline plan of what is missing (dry runs show it too).
announce_downloads()


onstart:
    record_lock_owner()
    check_downloads_before_run()


rule download_nsd_file:
    output:
        f"{NSD_DOWNLOAD_DIR}/{{key}}",
    log:
        "logs/download/nsd/{key}.log",
    wildcard_constraints:
        key=NSD_KEY_PATTERN,
    retries: 0
    localrule: True
    conda:
        "../../envs/download.yaml"
    params:
        base_url=config["nsd"]["base_url"],
        accept_terms=config["nsd"]["accept_terms"],
    script:
        "../scripts/download_nsd_file.py"


rule download_coco_annotations:
    output:
        train=f"{COCO_DOWNLOAD_DIR}/{nsd_layout.COCO_CAPTION_FILES[0]}",
        val=f"{COCO_DOWNLOAD_DIR}/{nsd_layout.COCO_CAPTION_FILES[1]}",
    log:
        "logs/download/coco_annotations.log",
    retries: 0
    localrule: True
    conda:
        "../../envs/download.yaml"
    params:
        url=config["coco"]["annotations_url"],
    script:
        "../scripts/download_coco_annotations.py"
