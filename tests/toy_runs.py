"""Runs of the workflow through Snakemake's command line, on copies of the workflow.

Shared by the graph tests: ``conftest.py`` makes the session's two fresh toy runs with these.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "envs", "profiles")

#: Thread counts of BLAS and OpenMP, read at their libraries' start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

#: Those settings as pytest started with them: conftest sets the tests' own to one thread, and
#: every workflow run gets these back (``workflow_environment``).
STARTING_THREADS = {name: os.environ.get(name) for name in THREAD_VARIABLES}


def workflow_environment() -> dict[str, str]:
    """The environment for a workflow run: the tests' own, with the thread settings pytest started
    with (so that the runs' jobs use the threads they would outside the tests)."""
    environment = {name: value for name, value in os.environ.items() if name not in THREAD_VARIABLES}
    environment.update({name: value for name, value in STARTING_THREADS.items() if value is not None})
    return environment


#: What a run produces: every file under these folders is compared between runs.
PRODUCED = ("results", "resources")

#: Longest a whole toy run may take, counted from its start (through SLURM beside the other tests:
#: ~9-15 min here), before the test gives up on it.
RUN_TIMEOUT_S = 2400


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
    """``snakemake --cores 2 ARGS`` in ``directory``; on failure (with ``check``) its output's tail."""
    command = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    result = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=1200, env=workflow_environment()
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def file_hashes(directory: Path, parts: tuple[str, ...] = PRODUCED) -> dict[str, str]:
    """sha256 of every file under ``parts`` of ``directory``, by path relative to ``directory``."""
    hashes = {}
    for part in parts:
        for path in sorted((directory / part).rglob("*")):
            if path.is_file():
                hashes[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """Paths whose hashes differ between ``a`` and ``b`` or that only one of them has."""
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def job_logs(directory: Path) -> list[str]:
    """Every job log of a run, relative to ``directory``."""
    return sorted(str(path.relative_to(directory)) for path in (directory / "logs").rglob("*.log"))


def cluster_node_cpus() -> int | None:
    """CPUs of the SLURM cluster's largest usable node, or None when no cluster answers ``sinfo``."""
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


#: How much lower the background runs' CPU priority is than the tests' (``nice``), the local run's
#: and the SLURM run's alike: putting the local run ahead (nice 5 against 10), so that the tests
#: waiting for it start sooner, left the SLURM run behind and the suite slower (354 s against 325 s).
BACKGROUND_NICENESS = 10


def behind_the_tests(niceness: int = BACKGROUND_NICENESS) -> None:
    """In a background run's process before it starts: lower its CPU priority by ``niceness``.

    Where the kernel weighs sessions against each other first (sched_autogroup), a nice value
    orders tasks only within their session: the run has a session of its own (``Popen``'s
    ``start_new_session``) and that session gets the run's nice value, as the cluster's jobs get
    theirs (.ci/slurm-cluster).
    """
    lowered = os.nice(niceness)
    try:
        with open("/proc/self/autogroup", "w") as autogroup:
            autogroup.write(str(lowered))
    except OSError:
        pass  # no session weighting on this kernel: the nice value alone orders the tasks


class BackgroundRun:
    """A whole Snakemake run started now in ``directory``, its output into ``log``, and waited for
    with ``output``.

    Through ``profiles/slurm`` with ``on_slurm``, else ``--cores 2``, behind the tests in CPU
    priority (``behind_the_tests``; SLURM jobs stay behind where the cluster passes the priority
    on). The first status check comes after 1 s (the plugin's least; 5 s took 436 s instead of
    395 s for the toy graph here).
    """

    def __init__(self, directory: Path, *args: str, log: Path, on_slurm: bool):
        executor = (
            ("--workflow-profile", "profiles/slurm", "--slurm-init-seconds-before-status-checks", "1")
            if on_slurm
            else ("--cores", "2")
        )
        self.command = [sys.executable, "-m", "snakemake", *executor, *args]
        self.directory = directory
        self.log = log
        self.started = time.monotonic()
        with open(log, "w") as handle:
            self.process = subprocess.Popen(
                self.command,
                cwd=directory,
                stdout=handle,
                stderr=subprocess.STDOUT,
                text=True,
                env=workflow_environment(),
                start_new_session=True,
                preexec_fn=behind_the_tests,
            )

    def output(self) -> str:
        """Wait until the run ends (at most ``RUN_TIMEOUT_S`` from its start); its output, or fail
        with its tail."""
        try:
            self.process.wait(timeout=max(1.0, RUN_TIMEOUT_S - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(
                f"{' '.join(self.command)} ran past {RUN_TIMEOUT_S} s:\n{self.log.read_text()[-6000:]}"
            )
        output = self.log.read_text()
        if self.process.returncode != 0:
            raise AssertionError(f"{' '.join(self.command)} failed:\n{output[-8000:]}")
        return output

    def stop(self) -> None:
        """SIGTERM to a run still going, so that Snakemake cancels its SLURM jobs; then wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=120)


def elapsed(output: str) -> str:
    """Snakemake's own ``Elapsed time`` of a finished run, from its output."""
    times = re.findall(r"Elapsed time: (\S+)", output)
    return times[-1] if times else "unknown"


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table (rule -> jobs), without the `all` and `total` rows."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {rule: int(count) for rule, count in rows if rule not in ("all", "total")}


def steps_done(output: str) -> int:
    """The job count of Snakemake's final ``N of N steps (100%) done`` line."""
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", output)
    assert done, f"Snakemake did not report completion:\n{output[-3000:]}"
    finished, total = map(int, done[-1])
    assert finished == total
    return total
