"""The whole graph through Snakemake's command line, on a copy of the workflow."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brainldm.config import validate_config
from conftest import merged_config

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "envs", "profiles")


def copy_workflow(destination: Path) -> Path:
    """Copy what Snakemake needs (not results/ or resources/) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, destination / part)
    return destination


def snakemake(directory: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The toy world's whole graph, run once: ``snakemake --cores 2 --configfile config/toy.yaml``."""
    directory = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(directory, "--configfile", "config/toy.yaml")
    return directory


def test_lint_is_clean():
    result = snakemake(REPO, "--lint", check=False)
    assert "in a good condition" in result.stdout + result.stderr, result.stdout + result.stderr


def test_toy_run_writes_the_toy_world(toy_run):
    assert (toy_run / "resources/toy/nsd/nsddata/experiments/nsd/nsd_expdesign.mat").is_file()
    assert (toy_run / "resources/toy/coco/annotations/captions_val2017.json").is_file()
    assert (toy_run / "logs/toy/make_toy_nsd.log").read_text().strip()


def test_toy_rerun_has_nothing_to_do(toy_run):
    result = snakemake(toy_run, "--configfile", "config/toy.yaml", "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_invalid_config_stops_before_any_job_naming_the_key(tmp_path):
    directory = copy_workflow(tmp_path)
    result = snakemake(directory, "--configfile", "config/toy.yaml", "--config", "subjects=[1,12]", check=False)
    assert result.returncode != 0
    assert "config key 'subjects[1]'" in result.stdout + result.stderr
    assert not (directory / "resources").exists()


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


def result_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory/results``, by path relative to ``directory``."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((directory / "results").rglob("*"))
        if path.is_file()
    }


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule -> jobs), without the `all` and `total` rows."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {rule: int(count) for rule, count in rows if rule not in ("all", "total")}


def summary_rows(directory: Path, name: str, subject: int) -> list[str]:
    lines = (directory / "results/toy/summary" / name).read_text().splitlines()
    return [line for line in lines[1:] if int(line.split("\t")[0]) == subject]


def test_rerunning_one_subject_leaves_the_other_and_the_shared_files_alone(toy_run):
    before = result_hashes(toy_run)
    mtimes = {path: (toy_run / path).stat().st_mtime_ns for path in before}
    rows = {name: summary_rows(toy_run, name, 2) for name in ("decoding.tsv", "identification.tsv", "fmri_qc.tsv")}
    subject_1 = "results/toy/subj01/"

    result = snakemake(toy_run, "--configfile", "config/toy.yaml", "--config", "run_subjects=1",
                       "--forcerun", "prepare_fmri")
    output = result.stdout + result.stderr
    shards = validate_config(merged_config(REPO / "config" / "toy.yaml"))["reconstruction"]["n_shards"]
    assert job_counts(output) == {"prepare_fmri": 1, "fit_decoder": 2, "reconstruct_images": shards,
                                  "plot_reconstructions": 1, "identify_reconstructions": 1}
    assert "subject=02" not in output
    after = result_hashes(toy_run)
    assert sorted(after) == sorted(before)
    untouched = [path for path in before if not path.startswith(subject_1)]
    assert any(path.startswith("results/toy/features/") for path in untouched)
    assert any(path.startswith("results/toy/subj02/") for path in untouched)
    assert [path for path in untouched if after[path] != before[path]] == []
    assert [path for path in untouched if (toy_run / path).stat().st_mtime_ns != mtimes[path]] == []
    rerun = [path for path in before if path.startswith(subject_1)]
    assert rerun and all((toy_run / path).stat().st_mtime_ns > mtimes[path] for path in rerun)

    # The next full run at most brings the summaries up to date (Snakemake reruns one only where
    # an input's content changed); subject 2's rows stay as they were.
    result = snakemake(toy_run, "--configfile", "config/toy.yaml")
    output = result.stdout + result.stderr
    summaries = {"summarize_fmri_qc", "summarize_decoding", "summarize_identification"}
    assert "Nothing to be done" in output or set(job_counts(output)) <= summaries, output[-3000:]
    for name, subject_2_rows in rows.items():
        assert subject_2_rows and summary_rows(toy_run, name, 2) == subject_2_rows
        assert summary_rows(toy_run, name, 1)
    assert all(result_hashes(toy_run)[path] == before[path] for path in untouched
               if not path.startswith("results/toy/summary/"))
