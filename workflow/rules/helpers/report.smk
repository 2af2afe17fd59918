# Paths, input functions and settings of workflow/rules/report.smk (helpers: no rules here).
REPORT_DIR = f"results/{DATASET}/report"


def report_targets():
    """Files made only for ``snakemake --report`` (configuration page, tables, figures); a
    run_subjects run makes only its subjects' figures and leaves the run-wide pages alone.
    """
    targets = []
    if RUN_SUBJECTS == SUBJECTS:
        targets.append(f"{REPORT_DIR}/configuration.html")
        targets += [f"{REPORT_DIR}/{table}.html" for table in names.REPORT_TABLES]
    targets += [
        f"{REPORT_DIR}/subj{subject}_reconstructions.png" for subject in RUN_SUBJECTS
    ]
    return targets
