"""profiles/slurm without a cluster: its thread cap and its partition choice (dry runs).

The real cluster run is tests/test_slurm.py; the default profile's gpu limit is checked on the
toy run in tests/test_workflow.py.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from toy_runs import REPO, copy_workflow

SLURM_PROFILE = REPO / "profiles" / "slurm"


def dry_run_jobs(directory: Path, *args: str, path_prefix: Path | None = None) -> list[dict]:
    """Jobs of ``snakemake -n --cores 16 ARGS`` in ``directory``: rule, threads and resources each.

    ``path_prefix`` goes first on PATH (a fake ``sinfo``).
    """
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "16", *args]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=600, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", output):
        header = re.match(r"(?:local)?rule (\w+):\n", block)
        if not header or header.group(1) == "all":
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        pairs = dict(item.split("=", 1) for item in resources.group(1).split(", ")) if resources else {}
        jobs.append(
            {
                "rule": header.group(1),
                "threads": int(threads.group(1)) if threads else 1,
                "resources": {key: int(value) if value.isdigit() else value for key, value in pairs.items()},
            }
        )
    assert jobs, output[-4000:]
    return jobs


@pytest.fixture
def workflow_copy(tmp_path):
    """The workflow without results, so that a dry run lists every job."""
    return copy_workflow(tmp_path / "workflow")


@pytest.fixture
def fake_sinfo(tmp_path):
    """A ``sinfo`` that lists two nodes, of 4 and 6 CPUs, one number a line as ``--format=%c`` does."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "sinfo"
    script.write_text("#!/bin/sh\nprintf '4\\n6\\n'\n")
    script.chmod(0o755)
    return folder


def test_slurm_profile_caps_threads_at_the_largest_node(workflow_copy, fake_sinfo):
    eight = ("--configfile", "config/toy.yaml", "--config", 'decoding={"threads": 8}')  # the paper config's
    jobs = dry_run_jobs(workflow_copy, "--workflow-profile", "profiles/slurm", *eight, path_prefix=fake_sinfo)
    decoders = [job for job in jobs if job["rule"] == "fit_decoder"]
    assert decoders and all(job["threads"] == 6 for job in decoders)  # the rule asks for 8
    # Without the profile the rule's own 8 threads stand (16 cores given).
    uncapped = dry_run_jobs(workflow_copy, "--workflow-profile", "none", *eight)
    assert {job["threads"] for job in uncapped if job["rule"] == "fit_decoder"} == {8}


class _Resources(dict):
    def __getattr__(self, name):
        return self[name]


class _Job:
    """What the plugin's partition choice reads of a job: name, threads, resources."""

    def __init__(self, job: dict):
        self.name = job["rule"]
        self.threads = job["threads"]
        self.resources = _Resources(job["resources"])


def test_slurm_partitions_send_gpu_jobs_to_the_gpu_partition(workflow_copy, fake_sinfo):
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    partitions = read_partition_file(SLURM_PROFILE / "partitions.yaml")
    # The paper's config: extraction, reconstruction and evaluation ask for a GPU.
    jobs = dry_run_jobs(workflow_copy, "--workflow-profile", "profiles/slurm", path_prefix=fake_sinfo)
    logger = logging.getLogger("slurm-partitions")
    chosen = {(job["rule"], get_best_partition(partitions, _Job(job), logger)) for job in jobs}
    gpu_rules = {job["rule"] for job in jobs if job["resources"].get("gpu", 0) > 0}
    assert gpu_rules >= {"extract_features", "reconstruct_images", "identify_reconstructions"}
    assert chosen == {(rule, "gpu" if rule in gpu_rules else "cpu") for rule, _ in chosen}


@pytest.mark.parametrize(
    "encoding, rois, mem_mb, runtime",
    [
        ("{}", None, 16000, 240),  # the paper's settings: nsdgeneral, image averages
        ('{"mask": "brainmask"}', "[early, ventral, nsdgeneral, brainmask]", 32000, 240),
        ('{"train_on": "trials"}', None, 48000, 1440),
        ('{"solver": "himalaya"}', None, 24000, 240),
    ],
)
def test_encoding_jobs_ask_for_the_memory_and_time_of_their_mask_rows_and_solver(
    workflow_copy, encoding, rois, mem_mb, runtime
):
    """A cluster must not kill a fit that the paper settings' 16 GB and 4 h would not hold."""
    config = ["subjects=1", f"encoding={encoding}"] + ([f"fmri={{'rois': {rois}}}"] if rois else [])
    jobs = dry_run_jobs(workflow_copy, "--workflow-profile", "none", "--config", *config)
    fits = [job["resources"] for job in jobs if job["rule"] == "fit_encoding_model"]
    assert len(fits) > 2
    assert {(fit["mem_mb"], fit["runtime"]) for fit in fits} == {(mem_mb, runtime)}
