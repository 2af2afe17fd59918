"""The whole graph through Snakemake's command line, on a copy of the workflow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "envs")


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


def test_toy_run_encoding_finds_the_planted_tuning(toy_run):
    """The whole graph's encoding stage: z best in early, c best in ventral, for every subject."""
    import csv

    with open(toy_run / "results/toy/summary/encoding.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    r = {(row["subject"], row["model"], row["roi"]): float(row["mean_r"]) for row in rows if not row["unique_space"]}
    for subject in ("1", "2"):
        assert r[(subject, "z", "early")] > r[(subject, "z", "ventral")]
        assert r[(subject, "c", "ventral")] > r[(subject, "c", "early")]
    for name in ("z+c_unique_c.nii.gz", "zc0.5_significant.nii.gz", "unet_best_step.nii.gz"):
        assert (toy_run / "results/toy/subj02/encoding/volumes" / name).is_file(), name
