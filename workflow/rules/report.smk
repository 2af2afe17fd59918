# Pages for Snakemake's report (snakemake --report results/<dataset>/report.html): the run's
# configuration with its departures from the paper, the summary tables as HTML, and each
# subject's reconstruction figure. The encoding maps are report() outputs of maps.smk; the rule
# graph is part of every Snakemake report.


rule report_configuration:
    output:
        page=report(
            f"{REPORT_DIR}/configuration.html",
            caption="../report/configuration.rst",
            category="Configuration",
        ),
    log:
        f"logs/{DATASET}/report_configuration.log",
    localrule: True
    conda:
        "../../envs/maps.yaml"
    params:
        config=result_config(config),
        schema=str(
            Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
        ),
        dataset=DATASET,
    script:
        "../scripts/report_configuration.py"


rule report_table:
    input:
        table=f"results/{DATASET}/summary/{{table}}.tsv",
    output:
        page=report(
            f"{REPORT_DIR}/{{table}}.html",
            caption="../report/tables.rst",
            category="Summary tables",
            labels={"table": "{table}"},
        ),
    log:
        f"logs/{DATASET}/report_table/{{table}}.log",
    wildcard_constraints:
        table="|".join(names.REPORT_TABLES),
    localrule: True
    conda:
        "../../envs/maps.yaml"
    script:
        "../scripts/report_table.py"


rule report_reconstructions:
    input:
        figure=f"{reconstruction_dir()}/figure.png",
    output:
        figure=report(
            f"{REPORT_DIR}/subj{{subject}}_reconstructions.png",
            caption="../report/reconstructions.rst",
            category="Reconstructions",
            labels={"subject": "{subject}"},
        ),
    log:
        f"logs/{DATASET}/report_reconstructions/subj{{subject}}.log",
    localrule: True
    conda:
        "../../envs/maps.yaml"
    script:
        "../scripts/report_reconstructions.py"
