"""The toy graph on a real SLURM cluster through profiles/slurm, against a local run.

Needs a cluster that answers ``sinfo`` (``.ci/slurm-cluster start`` makes a one-node one, and
``.ci/run`` calls it); skipped otherwise. The cluster run is the session's second fresh toy run
(``conftest.second_toy_run``), compared with the local one (``conftest.toy_run``); the same
comparison, file by file, is also test_workflow's determinism test.
"""

from __future__ import annotations

import re

import pytest

from toy_runs import differing, file_hashes, job_logs, steps_done


@pytest.fixture(scope="module")
def slurm_run(second_toy_run):
    if second_toy_run["executor"] != "slurm":
        pytest.skip("no SLURM cluster answers sinfo with a usable node (start one: .ci/slurm-cluster start)")
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


def test_slurm_results_equal_the_local_run(slurm_run, toy_run):
    cluster = file_hashes(slurm_run["directory"], parts=("results",))
    local = file_hashes(toy_run, parts=("results",))
    assert any(path.endswith(".png") for path in local) and any(path.endswith("_pred.npy") for path in local)
    changed = differing(cluster, local)
    assert not changed, f"{len(changed)} result files differ: {changed[:20]}"
