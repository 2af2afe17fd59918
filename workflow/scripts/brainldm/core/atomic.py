"""Write outputs so that nothing half-written is ever left at the final path."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of ``path`` left by :func:`atomic_path` in a killed process.

    A job killed with SIGKILL (or a lost node) cannot clean up, so ``x.tmp-<pid>.npy`` files,
    ``shard.tmp-<pid>`` folders (or a replaced folder ``shard.old-<pid>``) may remain; the next
    writer of ``path`` removes those whose process is gone. Returns the removed paths.
    """
    path = Path(path)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    pattern = re.compile(re.escape(stem) + r"\.(?:tmp|old)-(\d+)" + re.escape(suffixes) + "$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for sibling in path.parent.iterdir():
        match = pattern.match(sibling.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                sibling.unlink()
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``x.tmp-1234.npy`` for ``x.npy``) so that
    libraries that choose a format by suffix (nibabel, numpy, PIL) still do.
    Works for files and directories alike: a finished folder replaces an existing one (moved
    aside first, so ``path`` holds either the old or the new complete folder, never a mix).
    Temporaries of killed earlier writers are removed first. On error the temporary is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = path.with_name(f"{stem}.tmp-{os.getpid()}{suffixes}")
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir() and any(path.iterdir()):
            old = path.with_name(f"{stem}.old-{os.getpid()}{suffixes}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
