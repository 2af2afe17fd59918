# Paths, input functions and settings of workflow/rules/download.smk (helpers: no rules here).
NSD_DOWNLOAD_DIR = "resources/nsd"
COCO_DOWNLOAD_DIR = "resources/coco"
# Keys that download_nsd_file may fetch (NSD's three top-level folders, nothing else).
NSD_KEY_PATTERN = r"nsddata(?:_betas|_stimuli)?/[^\s*?]+"


def download_targets():
    """Files the download rules fetch for this config.

    Every NSD key the configured subjects, sessions, beta format and ROIs need (plus design,
    stim info and the stimulus brick) under ``resources/nsd`` when ``nsd.root`` is null, and the
    two COCO caption files under ``resources/coco`` when ``coco.root`` is null.
    """
    files = []
    if config["nsd"]["root"] is None:
        files += [
            f"{NSD_DOWNLOAD_DIR}/{key}" for key in nsd_download.needed_keys(config)
        ]
    if config["coco"]["root"] is None:
        files += [
            f"{COCO_DOWNLOAD_DIR}/{name}" for name in nsd_layout.COCO_CAPTION_FILES
        ]
    return files


def missing_nsd_downloads():
    """Needed NSD keys not yet in ``resources/nsd`` (empty when ``nsd.root`` is set)."""
    if config["nsd"]["root"] is not None:
        return []
    return [
        key
        for key in nsd_download.needed_keys(config)
        if not Path(NSD_DOWNLOAD_DIR, key).exists()
    ]


def announce_downloads():
    """At parse time (main process only, no network): what is missing, roughly how big.

    Shown by dry runs too, with a note when the terms gate would stop a real run.
    """
    if not workflow.is_main_process:
        return
    keys = missing_nsd_downloads()
    if not keys:
        return
    plan = nsd_download.plan_downloads(
        config["nsd"]["base_url"], keys, online=False, show=False
    )
    print(f"NSD {plan.summary()}", file=sys.stderr)
    if not config["nsd"]["accept_terms"]:
        print(
            "NSD terms: nsd.accept_terms is false, so a real run stops before any job; a dry run "
            f"(-n) only plans. Terms and data access form: {nsd_download.NSD_TERMS_URL}",
            file=sys.stderr,
        )


def scheduled_nsd_downloads():
    """NSD keys that rule download_nsd_file fetches in this run (the jobs Snakemake will run)."""
    return sorted(
        dict(job.wildcards)["key"]
        for job in workflow.dag.needrun_jobs()
        if job.rule.name == "download_nsd_file"
    )


def check_downloads_before_run():
    """The onstart hook: terms gate, then the plan from HEAD requests, before any job runs.

    Snakemake runs onstart after building the DAG and before scheduling, and never in a dry run
    (``-n``) nor inside spawned jobs, so a dry run plans with no network and no terms, while a
    real run that would download NSD files stops here (brainldm.nsd.download.check_download_plan).
    """
    keys = scheduled_nsd_downloads()
    if not keys:
        return
    try:
        nsd_download.check_download_plan(
            config["nsd"]["base_url"],
            keys,
            accept_terms=config["nsd"]["accept_terms"],
            download_dir=NSD_DOWNLOAD_DIR,
            plan_path="logs/download/nsd_plan.tsv",
        )
    except nsd_download.DownloadError as error:
        raise WorkflowError(str(error)) from None
