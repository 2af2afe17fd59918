"""Resuming a killed run with the same command: recognise Snakemake's lock left by a dead run.

Snakemake locks the working directory for a run (``.snakemake/locks/``) and removes the lock
when it ends; a run killed with SIGKILL (or a lost machine) cannot, and the next run stops with
a ``LockException`` until ``snakemake --unlock`` is run. Snakemake does not record who holds
the lock, so the workflow does: its onstart hook (which Snakemake runs after taking the lock)
writes the identity of the running Snakemake process beside the lock
(:func:`record_lock_owner`), and the next run, while its Snakefile is parsed (before Snakemake
looks at the lock), removes the lock when that process is gone (:func:`clear_stale_lock`).

A lock is left alone (and Snakemake's own message applies) when it is not provably stale:
no owner record, a record older than the lock (a run that locked but had not yet reached
onstart), a record from another host, or a process that still runs.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from brainldm.core.atomic import write_text

#: File in Snakemake's folder (``.snakemake``) naming the process that holds the lock.
OWNER_FILE = "brainldm_lock_owner.json"


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` (seconds since the epoch), None when it does not exist.

    Together with the pid it identifies a process (pids are reused).
    """
    import psutil  # a dependency of Snakemake, in whose process this runs

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def record_lock_owner(snakemake_dir: str | os.PathLike = ".snakemake", pid: int | None = None) -> dict:
    """Write ``OWNER_FILE``: host, pid and start time of the Snakemake process holding the lock."""
    pid = os.getpid() if pid is None else pid
    owner = {"host": socket.gethostname(), "pid": pid, "started": process_start_time(pid)}
    write_text(Path(snakemake_dir) / OWNER_FILE, json.dumps(owner) + "\n")
    return owner


def lock_files(snakemake_dir: str | os.PathLike = ".snakemake") -> list[Path]:
    """Snakemake's lock files (file persistence backend: ``locks/<n>.{input,output}.lock``)."""
    return sorted((Path(snakemake_dir) / "locks").glob("*.lock"))


def stale_lock_owner(snakemake_dir: str | os.PathLike = ".snakemake") -> dict | None:
    """The owner record when the lock in ``snakemake_dir`` belongs to a run that is gone.

    None when there is no lock, or when it may belong to a live run (see the module notes).
    """
    locks = lock_files(snakemake_dir)
    owner_path = Path(snakemake_dir) / OWNER_FILE
    if not locks or not owner_path.is_file():
        return None
    if any(lock.stat().st_mtime_ns > owner_path.stat().st_mtime_ns for lock in locks):
        return None
    try:
        owner = json.loads(owner_path.read_text())
        host, pid, started = owner["host"], int(owner["pid"]), owner["started"]
    except (ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return None
    now_started = process_start_time(pid)
    if now_started is not None and started is not None and abs(now_started - started) < 1.0:
        return None
    return owner


def clear_stale_lock(snakemake_dir: str | os.PathLike = ".snakemake") -> str | None:
    """Remove the lock of a run that is gone; return a one-line note, or None if nothing done."""
    owner = stale_lock_owner(snakemake_dir)
    if owner is None:
        return None
    for lock in lock_files(snakemake_dir):
        lock.unlink(missing_ok=True)
    (Path(snakemake_dir) / OWNER_FILE).unlink(missing_ok=True)
    return (
        f"removed the lock of {Path(snakemake_dir).resolve()} left by Snakemake process "
        f"{owner['pid']} on {owner['host']}, which is no longer running (killed?); resuming"
    )
