"""The toy graph on a real SLURM cluster through profiles/slurm, against a local run.

Needs a cluster that answers ``sinfo`` (``.ci/slurm-cluster start`` makes a one-node one, and
``.ci/run`` calls it); skipped otherwise. The toy is shrunk (``SMALL_TOY``) so that both runs fit
in CI's time, while every rule of the graph still runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_workflow import copy_workflow, file_hashes

REPO = Path(__file__).resolve().parents[1]

# Command-line overrides of config/toy.yaml: 2 of the 5 sessions (27 test images), one sample
# per method and 4 DDIM steps, one reconstruction shard per subject, and 9 encoding models per
# subject instead of 18 (one zc level; 2 U-Net blocks x 2 steps): each SLURM job costs its status
# polling on top of its work.
SMALL_TOY = (
    "--configfile", "config/toy.yaml",
    "--config",
    'sessions={"last": 2}',
    'reconstruction={"n_samples": 1, "ddim_steps": 4, "n_shards": 1}',
    'encoding={"zc_strengths": [0.5], "unet_strength": 0.5, "unet_blocks": ["mid", "up_1"], "unet_steps": ["early", "late"]}',
)

RUN_TIMEOUT_S = 2400


def cluster_node_cpus() -> int | None:
    """CPUs of the cluster's largest node, or None when no SLURM cluster answers."""
    if shutil.which("sinfo") is None:
        return None
    try:
        listing = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%c %T"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        return None
    nodes = [line.split() for line in listing.stdout.splitlines() if line.strip()]
    usable = [int(cpus) for cpus, state in nodes if state.rstrip("*") in {"idle", "mixed", "allocated"}]
    return max(usable) if listing.returncode == 0 and usable else None


def run_snakemake(directory: Path, *args: str) -> str:
    """Run Snakemake to the end in ``directory``; its whole output, or fail with its tail.

    On a timeout Snakemake gets SIGTERM first, so that it cancels its SLURM jobs.
    """
    command = [sys.executable, "-m", "snakemake", *args]
    process = subprocess.Popen(command, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.terminate()
        output, _ = process.communicate(timeout=120)
        raise AssertionError(f"{' '.join(command)} ran past {RUN_TIMEOUT_S} s:\n{output[-6000:]}")
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{output[-8000:]}")
    return output


def steps_done(output: str) -> int:
    """The job count of Snakemake's final ``N of N steps (100%) done`` line."""
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", output)
    assert done, f"Snakemake did not report completion:\n{output[-3000:]}"
    finished, total = map(int, done[-1])
    assert finished == total
    return total


@pytest.fixture(scope="module")
def slurm_and_local_runs(tmp_path_factory):
    cpus = cluster_node_cpus()
    if cpus is None:
        pytest.skip("no SLURM cluster answers sinfo with a usable node (start one: .ci/slurm-cluster start)")
    local = copy_workflow(tmp_path_factory.mktemp("local"))
    # As many cores as the node has CPUs, so that every job gets the same thread count.
    local_output = run_snakemake(local, "--cores", str(cpus), *SMALL_TOY)
    cluster = copy_workflow(tmp_path_factory.mktemp("slurm"))
    started = time.monotonic()
    cluster_output = run_snakemake(
        cluster, "--workflow-profile", "profiles/slurm", "--slurm-init-seconds-before-status-checks", "5", *SMALL_TOY
    )
    print(f"SLURM run of the small toy: {time.monotonic() - started:.0f} s")
    return {"local": local, "cluster": cluster, "local_output": local_output, "cluster_output": cluster_output}


def test_slurm_run_completes_with_one_log_per_job(slurm_and_local_runs):
    output = slurm_and_local_runs["cluster_output"]
    cluster = slurm_and_local_runs["cluster"]
    assert "workflow specific profile profiles/slurm" in output
    assert re.search(r"Auto-selected partition 'cpu' for job fit_decoder", output), output[-3000:]
    total = steps_done(output)
    assert total == steps_done(slurm_and_local_runs["local_output"])
    logs = sorted(str(path.relative_to(cluster)) for path in (cluster / "logs").rglob("*.log"))
    # Every job but the target rule `all` has its own log file, the same ones as locally.
    assert len(logs) == total - 1
    local = slurm_and_local_runs["local"]
    assert logs == sorted(str(path.relative_to(local)) for path in (local / "logs").rglob("*.log"))


def test_slurm_results_equal_the_local_run(slurm_and_local_runs):
    cluster = file_hashes(slurm_and_local_runs["cluster"], parts=("results",))
    local = file_hashes(slurm_and_local_runs["local"], parts=("results",))
    assert sorted(cluster) == sorted(local)
    assert any(path.endswith(".png") for path in local) and any(path.endswith("_pred.npy") for path in local)
    differing = [path for path in local if cluster[path] != local[path]]
    assert not differing, f"{len(differing)} of {len(local)} result files differ: {differing[:20]}"
