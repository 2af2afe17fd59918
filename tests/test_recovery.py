"""Crash recovery pieces: stale Snakemake locks, temporaries of killed writers, folder outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from brainldm.core import recovery
from brainldm.core.atomic import atomic_path, remove_stale_temporaries


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def make_lock(snakemake_dir):
    locks = snakemake_dir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    (locks / "0.input.lock").write_text("a\n")
    (locks / "0.output.lock").write_text("b\n")


def test_lock_of_a_dead_run_is_cleared(tmp_path):
    make_lock(tmp_path)
    recovery.record_lock_owner(tmp_path, pid=dead_pid())
    note = recovery.clear_stale_lock(tmp_path)
    assert note is not None and "no longer running" in note
    assert recovery.lock_files(tmp_path) == []
    assert not (tmp_path / recovery.OWNER_FILE).exists()


def test_lock_of_a_live_run_is_kept(tmp_path):
    make_lock(tmp_path)
    owner = recovery.record_lock_owner(tmp_path)  # this process: alive
    assert owner["pid"] == os.getpid() and owner["started"] is not None
    assert recovery.clear_stale_lock(tmp_path) is None
    assert len(recovery.lock_files(tmp_path)) == 2


def test_reused_pid_is_not_the_owner(tmp_path):
    """A live process with the recorded pid but another start time did not take the lock."""
    make_lock(tmp_path)
    owner = recovery.record_lock_owner(tmp_path)
    record = tmp_path / recovery.OWNER_FILE
    record.write_text(json.dumps({**owner, "started": owner["started"] - 3600}))
    assert recovery.stale_lock_owner(tmp_path) is not None


@pytest.mark.parametrize("case", ["lock newer than the record", "other host", "no record", "no lock"])
def test_lock_is_kept_unless_provably_stale(tmp_path, case):
    make_lock(tmp_path)
    recovery.record_lock_owner(tmp_path, pid=dead_pid())
    record = tmp_path / recovery.OWNER_FILE
    if case == "lock newer than the record":  # a run that locked but has not reached onstart
        later = time.time() + 5
        for lock in recovery.lock_files(tmp_path):
            os.utime(lock, (later, later))
    elif case == "other host":
        record.write_text(json.dumps({**json.loads(record.read_text()), "host": "elsewhere"}))
    elif case == "no record":
        record.unlink()
    else:
        for lock in recovery.lock_files(tmp_path):
            lock.unlink()
    assert recovery.clear_stale_lock(tmp_path) is None
    if case != "no lock":
        assert len(recovery.lock_files(tmp_path)) == 2


def test_temporaries_of_killed_writers_are_removed(tmp_path):
    out = tmp_path / "shard0of2"
    dead = tmp_path / f"shard0of2.tmp-{dead_pid()}"
    (dead / "z").mkdir(parents=True)
    (dead / "z" / "nsd1_s0.png").write_bytes(b"partial")
    live = tmp_path / f"shard0of2.tmp-{os.getppid()}"
    live.mkdir()
    other = tmp_path / f"shard1of2.tmp-{dead_pid()}"
    other.mkdir()
    file_tmp = tmp_path / f"x.tmp-{dead_pid()}.npy"
    file_tmp.write_bytes(b"partial")
    assert remove_stale_temporaries(out) == [dead]
    assert live.exists() and other.exists()
    assert remove_stale_temporaries(tmp_path / "x.npy") == [file_tmp]
    with atomic_path(tmp_path / "shard1of2") as tmp:  # a new writer cleans up before it starts
        assert not other.exists()
        tmp.mkdir()


def test_folder_output_appears_only_when_complete(tmp_path):
    out = tmp_path / "shard0of2"
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.mkdir()
            (tmp / "a.png").write_bytes(b"1")
            raise RuntimeError("killed")
    assert not out.exists() and not list(tmp_path.iterdir())
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "a.png").write_bytes(b"1")
        assert not out.exists()
    assert (out / "a.png").read_bytes() == b"1"
    # a rerun replaces a complete folder whole (nothing of the old one stays)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "b.png").write_bytes(b"2")
    assert sorted(p.name for p in out.iterdir()) == ["b.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard0of2"]
