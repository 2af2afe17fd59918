"""The whole graph through Snakemake's command line, on a copy of the workflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import merged_config
from toy_runs import (
    BACKGROUND_NICENESS,
    REPO,
    behind_the_tests,
    copy_workflow,
    differing,
    file_hashes,
    job_counts,
    snakemake,
    workflow_environment,
)

from brainldm.core.config import validate_config


def test_lint_is_clean():
    result = snakemake(REPO, "--lint", check=False)
    assert "in a good condition" in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize("empty", [False, True], ids=["missing", "empty"])
def test_local_nsd_root_that_holds_nothing_stops_at_startup_naming_the_key(tmp_path, empty):
    directory = copy_workflow(tmp_path / "wf")
    if empty:
        (directory / "nsd_copy").mkdir()
    result = snakemake(directory, "--config", 'nsd={"root": "nsd_copy"}', check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    problem = "is empty" if empty else "does not exist"
    assert f"config key 'nsd.root': folder 'nsd_copy' {problem}; expected a local NSD copy" in output
    assert "MissingInputException" not in output and "Missing input files" not in output


def test_planning_the_toy_graph_does_not_import_torch():
    """Every snakemake start parses the workflow; importing torch there would cost seconds each."""
    command = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--configfile", "config/toy.yaml"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "brainldm.core.config" in imported and "numpy" in imported
    assert "torch" not in imported and "diffusers" not in imported


def test_a_working_directory_outside_the_workflow_plans_the_whole_toy_graph(tmp_path):
    """``--directory DIR`` writes everything under DIR; the shipped toy weights are still found."""
    directory = tmp_path / "elsewhere"
    result = snakemake(REPO, "-n", "--directory", str(directory), "--configfile", "config/toy.yaml")
    output = result.stdout + result.stderr
    assert re.search(r"^all\s+1$", output, re.MULTILINE), output[-3000:]
    inputs = re.search(r"^rule make_toy_model:\n\s+input: (.+)$", output, re.MULTILINE)
    assert inputs, output[-3000:]
    manifest = directory / inputs.group(1).split(", ")[0]
    assert manifest.resolve() == REPO / "workflow" / "toy_model" / "manifest.json"


def test_snakefmt_check_is_clean():
    """Snakefile and every .smk parse and are formatted (snakefmt's own rules)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_toy_run_writes_the_toy_world(toy_run):
    assert (toy_run / "resources/toy/nsd/nsddata/experiments/nsd/nsd_expdesign.mat").is_file()
    assert (toy_run / "resources/toy/coco/annotations/captions_val2017.json").is_file()
    assert (toy_run / "logs/toy/make_toy_nsd.log").read_text().strip()


def test_toy_run_assembles_the_model_and_scores_attributes(toy_run):
    record = json.loads((toy_run / "resources/toy/model/brainldm_toy_model.json").read_text())
    assert (
        record["weights"]["sha256"]
        == json.loads((REPO / "workflow/toy_model/manifest.json").read_text())["sha256"]
    )
    rows = (toy_run / "results/toy/summary/attributes.tsv").read_text().splitlines()
    assert rows[0].split("\t") == [
        "subject",
        "method",
        "attribute",
        "match",
        "chance",
        "n_images",
        "n_samples",
    ]
    seen = {tuple(row.split("\t")[:3]) for row in rows[1:]}
    assert ("2", "c", "shape") in seen and ("1", "original", "position") in seen and len(seen) == 2 * 4 * 5
    features = {
        row.split("\t")[2]
        for row in (toy_run / "results/toy/summary/identification.tsv").read_text().splitlines()[1:]
    }
    assert features == {"pixels", "toy_semantic"}


def test_toy_rerun_has_nothing_to_do(toy_run):
    result = snakemake(toy_run, "--configfile", "config/toy.yaml", "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_invalid_config_stops_before_any_job_naming_the_key(tmp_path):
    directory = copy_workflow(tmp_path)
    result = snakemake(
        directory, "--configfile", "config/toy.yaml", "--config", "subjects=[1,12]", check=False
    )
    assert result.returncode != 0
    assert "config key 'subjects[1]'" in result.stdout + result.stderr
    assert not (directory / "resources").exists()


def test_toy_run_writes_the_field_metrics(toy_run):
    from brainldm.core.tables import read_rows

    rows = read_rows(toy_run / "results/toy/summary/metrics.tsv")
    assert {(r["subject"], r["method"]) for r in rows} == {
        (s, m) for s in ("1", "2") for m in ("z", "c", "zc")
    }
    assert {r["metric"] for r in rows} == {"PixCorr", "SSIM", "two-way:pixels", "two-way:toy_semantic"}
    assert all(r["protocol"] == "mindeye" and r["n_samples"] == "1" for r in rows)
    # two-way:<extractor> is the identification registry's space on the first sample, fed in
    # batches of the same evaluation.batch_size: the same number as identify_reconstructions'
    # two-way accuracy there (to the last digit, near-ties included)
    identification = read_rows(toy_run / "results/toy/summary/identification.tsv")
    two_way = {(r["subject"], r["method"], f"two-way:{r['feature']}"): r for r in identification}
    compared = 0
    for row in rows:
        if row["metric"].startswith("two-way:"):
            reference = two_way[(row["subject"], row["method"], row["metric"])]
            assert row["value"] == reference["two_way_accuracy"] and row["n_images"] == reference["n_images"]
            compared += 1
    assert compared == 2 * 3 * 2  # subjects x methods x (pixels, toy_semantic)
    value = {(r["subject"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    for subject in (
        "1",
        "2",
    ):  # z reconstructions carry the image's layout, c ones only what the caption says
        assert value[(subject, "z", "PixCorr")] > value[(subject, "c", "PixCorr")] + 0.2
    comparison = read_rows(toy_run / "results/toy/summary/metrics_comparison.tsv")
    assert [r["method"] for r in comparison if r["source"] == "this run"] == ["z", "c", "zc"]
    assert all(r["note"] == "published, other test set" for r in comparison if r["source"] != "this run")


def test_toy_report_holds_configuration_tables_and_reconstructions(toy_run):
    """``snakemake --report`` of the toy run, opened in headless Chromium (tests/headless_chromium.py)."""
    from headless_chromium import find_chromium, open_page

    # written beside results/, so the run's own files stay those a fresh run makes
    (toy_run / "report_test").mkdir(exist_ok=True)
    snakemake(toy_run, "--configfile", "config/toy.yaml", "--report", "report_test/report.html")
    report = toy_run / "report_test/report.html"
    page = report.read_text()
    for table in ("fmri_qc", "decoding", "identification", "metrics", "metrics_comparison"):
        assert f"results/toy/report/{table}.html" in page, table
    assert "subj01_reconstructions.png" in page and "subj02_reconstructions.png" in page
    if find_chromium() is None:
        pytest.fail("Chromium is needed (Debian: apt-get install -y chromium; .ci/run installs it)")
    result = open_page(report, clicks=("Reconstructions",))
    assert result.errors == [], result.errors
    assert "Summary tables" in open_page(report).summary["text"]
    (toy_run / "report_test/report_screenshot.png").write_bytes(result.screenshot)


# --------------------------------------------------------------------------- determinism, recovery

READ_PRIORITY = (
    "import os; print(os.getpriority(os.PRIO_PROCESS, 0)); "
    "os.path.exists('/proc/self/autogroup') and print(open('/proc/self/autogroup').read())"
)


def test_background_runs_start_behind_the_tests_in_their_own_session():
    """The suite's toy runs lower their priority where the kernel counts it: their session's."""
    expected = min(os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICENESS, 19)
    child = subprocess.run(
        [sys.executable, "-c", READ_PRIORITY],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
        preexec_fn=behind_the_tests,
    ).stdout.splitlines()
    assert int(child[0]) == expected
    if Path("/proc/self/autogroup").is_file():
        assert child[1].endswith(f" nice {expected}"), child


def test_two_fresh_toy_runs_give_byte_identical_files(toy_run, toy_hashes, second_toy_run):
    """Same commit and config: every file under results/ and resources/ has the same bytes.

    The second run goes through SLURM where a cluster answers (``conftest.second_toy_run``).
    """
    second = file_hashes(second_toy_run["directory"])
    assert len(toy_hashes) > 100 and any(name.endswith(".png") for name in toy_hashes)
    assert not differing(toy_hashes, second), (second_toy_run["executor"], differing(toy_hashes, second)[:20])


@pytest.fixture(scope="module")
def killed_run(toy_run, toy_hashes, tmp_path_factory, toy_config):
    """A copy of the toy run killed during reconstruct_images, and its resume, started at once.

    SIGKILL hits Snakemake and its jobs (the whole process group, as when a machine dies), so
    Snakemake's lock and a half-filled shard folder are left behind; what the kill left is
    recorded before the same command, without ``--forcerun``, resumes the run in the background:
    it remakes subject 1's first shard beside the tests that follow, and
    ``test_killed_run_resumes_with_the_same_command`` waits for it.
    """
    directory = tmp_path_factory.mktemp("killed") / "run"
    shutil.copytree(toy_run, directory, symlinks=True)
    recon = directory / "results/toy"
    target = f"results/toy/subj01/reconstruction/shard0of{toy_config['reconstruction']['n_shards']}"
    command = [sys.executable, "-m", "snakemake", "--cores", "2", target, "--configfile", "config/toy.yaml"]
    log = directory.parent / "killed.log"
    with open(log, "w") as handle:
        run = subprocess.Popen(
            [*command, "--forcerun", "reconstruct_images"],
            cwd=directory,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 600
        try:
            while not any(recon.glob("subj*/reconstruction/shard*.tmp-*/*/*.png")):
                assert run.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no reconstruction started"
                time.sleep(0.05)
        finally:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    left = {
        "locks": list((directory / ".snakemake/locks").glob("*.lock")),
        "partial": list(recon.glob("subj*/reconstruction/shard*.tmp-*")),
        "incomplete": [
            shard
            for shard in recon.glob("subj*/reconstruction/shard*of*")
            if ".tmp-" not in shard.name and not holds_its_manifest(shard)
        ],
    }
    outputs = {name: directory.parent / f"resume.{name}" for name in ("stdout", "stderr")}
    with open(outputs["stdout"], "w") as stdout, open(outputs["stderr"], "w") as stderr:
        resume = subprocess.Popen(
            command, cwd=directory, stdout=stdout, stderr=stderr, env=workflow_environment()
        )
    yield {"directory": directory, "left": left, "resume": resume, "outputs": outputs}
    if resume.poll() is None:
        resume.kill()
        resume.wait()


def holds_its_manifest(shard: Path) -> bool:
    """Whether a reconstruction shard folder holds every image its manifest lists."""
    rows = (shard / "manifest.tsv").read_text().splitlines()[1:]
    return bool(rows) and all((shard / row.split("\t")[3]).is_file() for row in rows)


def test_killed_run_leaves_its_lock_and_no_partial_output(killed_run):
    left = killed_run["left"]
    assert left["locks"], "the kill left no lock to recover from"
    assert left["partial"], "the kill left no partial shard"
    assert left["incomplete"] == [], "an output path holds part of a shard"


@pytest.mark.usefixtures("toy_hashes")  # taken before this test remakes a file of the run
def test_default_profile_limits_gpu_jobs_to_one(toy_run):
    # Snakemake reads profiles/default beside the Snakefile by itself and, when it schedules jobs
    # (one cheap job is forced here), states the limit it holds every gpu=1 job to;
    # `--workflow-profile none` drops it.
    force = ("--configfile", "config/toy.yaml", "--forcerun", "summarize_fmri_qc")
    result = snakemake(toy_run, *force)
    output = result.stdout + result.stderr
    assert "workflow specific profile profiles/default" in output
    assert re.search(r'Provided resources: gpu=Resource\("gpu", 1\)', output), output[-3000:]
    result = snakemake(toy_run, *force, "--workflow-profile", "none")
    output = result.stdout + result.stderr
    assert "Finished jobid" in output and "Provided resources" not in output


def summary_rows(directory: Path, name: str, subject: int) -> list[str]:
    lines = (directory / "results/toy/summary" / name).read_text().splitlines()
    return [line for line in lines[1:] if int(line.split("\t")[0]) == subject]


def test_rerunning_one_subject_leaves_the_other_and_the_shared_files_alone(toy_run, toy_hashes):
    before = {path: digest for path, digest in toy_hashes.items() if path.startswith("results/")}
    mtimes = {path: (toy_run / path).stat().st_mtime_ns for path in before}
    rows = {
        name: summary_rows(toy_run, name, 2)
        for name in ("decoding.tsv", "identification.tsv", "fmri_qc.tsv", "metrics.tsv", "encoding.tsv")
    }
    subject_1 = ("results/toy/subj01/", "results/toy/report/subj01_")  # its folder and report figure

    result = snakemake(
        toy_run, "--configfile", "config/toy.yaml", "--config", "run_subjects=1", "--forcerun", "prepare_fmri"
    )
    output = result.stdout + result.stderr
    from brainldm.core.names import model_names

    config = validate_config(merged_config(REPO / "config" / "toy.yaml"))
    shards = config["reconstruction"]["n_shards"]
    n_encoding_models = sum(len(names) for names in model_names(config["encoding"]))
    encoding_jobs = (
        {"fit_encoding_models": 1}
        if config["encoding"]["jobs"] == "per_subject"
        else {"fit_encoding_model": n_encoding_models}
    )
    assert job_counts(output) == {
        "prepare_fmri": 1,
        "fit_decoder": 2,
        "reconstruct_images": shards,
        "plot_reconstructions": 1,
        "identify_reconstructions": 1,
        "evaluate_reconstructions": 1,
        "report_reconstructions": 1,
        "match_toy_attributes": 1,
        **encoding_jobs,
        "map_encoding": 1,
        "project_to_surface": 1,
        "plot_cortical_maps": 1,
        "plot_accuracy_density": 1,
        "view_surface": 1,
    }
    assert "subject=02" not in output
    after = file_hashes(toy_run, parts=("results",))
    assert sorted(after) == sorted(before)
    untouched = [path for path in before if not path.startswith(subject_1)]
    assert any(path.startswith("results/toy/features/") for path in untouched)
    assert any(path.startswith("results/toy/subj02/") for path in untouched)
    assert [path for path in untouched if after[path] != before[path]] == []
    assert [path for path in untouched if (toy_run / path).stat().st_mtime_ns != mtimes[path]] == []
    rerun = [path for path in before if path.startswith(subject_1)]
    assert rerun and all((toy_run / path).stat().st_mtime_ns > mtimes[path] for path in rerun)
    # remade from the same inputs, subject 1's files come back with the same bytes
    assert [path for path in rerun if after[path] != before[path]] == []

    # The next full run at most brings the summaries up to date (Snakemake reruns one only where
    # an input's content changed); subject 2's rows stay as they were.
    result = snakemake(toy_run, "--configfile", "config/toy.yaml")
    output = result.stdout + result.stderr
    summaries = {
        "summarize_fmri_qc",
        "summarize_decoding",
        "summarize_identification",
        "summarize_metrics",
        "summarize_toy_attributes",
        "summarize_encoding",
        "report_table",
    }
    assert "Nothing to be done" in output or set(job_counts(output)) <= summaries, output[-3000:]
    for name, subject_2_rows in rows.items():
        assert subject_2_rows and summary_rows(toy_run, name, 2) == subject_2_rows
        assert summary_rows(toy_run, name, 1)
    final = file_hashes(toy_run, parts=("results",))
    assert [
        path
        for path in untouched
        if not path.startswith("results/toy/summary/") and final[path] != before[path]
    ] == []


def test_killed_run_resumes_with_the_same_command(killed_run, toy_hashes):
    """The same command, without ``--forcerun``, finishes the killed run with equal results."""
    killed_run["resume"].wait(timeout=1200)
    stdout, stderr = (killed_run["outputs"][name].read_text() for name in ("stdout", "stderr"))
    assert killed_run["resume"].returncode == 0, f"{stdout[-3000:]}\n{stderr[-6000:]}"
    assert "removed the lock" in stderr
    recon = killed_run["directory"] / "results/toy"
    assert not list(recon.glob("subj*/reconstruction/shard*.tmp-*"))
    hashes = file_hashes(killed_run["directory"])
    assert not differing(toy_hashes, hashes), differing(toy_hashes, hashes)[:20]


def test_toy_run_encoding_finds_the_planted_tuning(toy_run):
    """The whole graph's encoding stage: z best in early, c best in ventral, for every subject."""
    import csv

    with open(toy_run / "results/toy/summary/encoding.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    r = {
        (row["subject"], row["model"], row["roi"]): float(row["mean_r"])
        for row in rows
        if not row["unique_space"]
    }
    for subject in ("1", "2"):
        assert r[(subject, "z", "early")] > r[(subject, "z", "ventral")]
        assert r[(subject, "c", "ventral")] > r[(subject, "c", "early")]
    for name in ("z+c_unique_c.nii.gz", "zc0.5_significant.nii.gz", "unet_best_step.nii.gz"):
        assert (toy_run / "results/toy/subj02/encoding/volumes" / name).is_file(), name
