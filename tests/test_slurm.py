"""The toy graph on a real SLURM cluster through profiles/slurm, against a local run.

Needs a cluster that answers ``sinfo`` (``.ci/slurm-cluster start`` makes a one-node one, and
``tests/run`` calls it where it can); skipped otherwise, with the reason. The cluster run is the
session's second fresh toy run (``conftest.second_toy_run``), compared with the local one
(``conftest.toy_run``); the same comparison, file by file, is also test_workflow's determinism
test.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from toy_runs import (
    BACKGROUND_NICENESS,
    behind_the_tests,
    differing,
    file_hashes,
    job_counts,
    job_logs,
    steps_done,
)

#: The toy graph's `localrule`s, run on the submit host: the summaries and report pages, the light
#: figures and the viewer page, the toy's own builders and attribute check (the downloads, local
#: too, are not in the toy graph).
SUBMIT_HOST_RULES = {
    "report_configuration",
    "report_table",
    "report_reconstructions",
    "summarize_fmri_qc",
    "summarize_decoding",
    "summarize_identification",
    "summarize_metrics",
    "summarize_encoding",
    "summarize_toy_attributes",
    "plot_reconstructions",
    "plot_accuracy_density",
    "view_surface",
    "make_toy_nsd",
    "make_toy_model",
    "match_toy_attributes",
}


@pytest.fixture(scope="module")
def slurm_run(second_toy_run):
    if second_toy_run["executor"] != "slurm":
        # tests/run says why it started no cluster (not root, not Debian).
        why = os.environ.get(
            "BRAINLDM_SLURM_UNAVAILABLE",
            "run the suite with tests/run (as root on Debian it starts a one-node cluster), or start one "
            "first with: sudo .ci/slurm-cluster start",
        )
        pytest.skip(f"no SLURM cluster answers sinfo with a usable node; {why}")
    return second_toy_run


def test_slurm_run_completes_with_one_log_per_job(slurm_run, toy_run):
    output = slurm_run["output"]
    assert "workflow specific profile profiles/slurm" in output
    assert re.search(r"Auto-selected partition 'cpu' for job fit_decoder", output), output[-3000:]
    assert re.search(r"Job \d+ has been submitted with SLURM jobid", output), output[-3000:]
    total = steps_done(output)
    logs = job_logs(slurm_run["directory"])
    # Every job but the target rule `all` has its own log file, the same ones as locally.
    assert len(logs) == total - 1
    assert logs == job_logs(toy_run)


def test_slurm_results_equal_the_local_run(slurm_run, toy_hashes):
    cluster = file_hashes(slurm_run["directory"], parts=("results",))
    local = {path: digest for path, digest in toy_hashes.items() if path.startswith("results/")}
    assert any(path.endswith(".png") for path in local) and any(path.endswith("_pred.npy") for path in local)
    changed = differing(cluster, local)
    assert not changed, f"{len(changed)} result files differ: {changed[:20]}"


def test_light_rules_run_on_the_submit_host_and_every_other_job_through_slurm(slurm_run):
    output = slurm_run["output"]
    jobs = job_counts(output)
    submitted = re.findall(r"submitted with SLURM jobid \d+ \(log: \S*/slurm_logs/rule_(\w+)/", output)
    assert SUBMIT_HOST_RULES <= set(jobs), sorted(SUBMIT_HOST_RULES - set(jobs))
    assert Counter(submitted) == {
        rule: count for rule, count in jobs.items() if rule not in SUBMIT_HOST_RULES
    }


@pytest.mark.usefixtures("slurm_run")  # after the cluster run: its jobs hold the node's CPUs till then
def test_cluster_jobs_run_at_the_priority_of_the_submitter(tmp_path):
    """The test cluster passes the submitter's nice on to a job and to the job's session, so the
    suite's cluster run stays behind the tests (.ci/slurm-cluster)."""
    # srun, not sbatch --wait (which polls for ~10 s): the same rule passes the priority on
    job = subprocess.run(
        ["srun", "--quiet", "sh", "-c", "nice; cat /proc/self/autogroup"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        start_new_session=True,
        preexec_fn=behind_the_tests,
    )
    niceness, *session = job.stdout.splitlines()
    expected = min(os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICENESS, 19)
    assert int(niceness) == expected
    if Path("/proc/self/autogroup").is_file():
        assert session and session[0].endswith(f" nice {expected}"), session
